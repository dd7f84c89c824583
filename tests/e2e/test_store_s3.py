"""The adapter store on a real S3 server (SeaweedFS started here), through real processes that
run with mutual TLS and a deployment token on every link: registry push/show/delete with an
admin token, a corrupted object, an object-store outage in the middle of a stream, and the store
itself killed and restarted on its address."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from adapter_store.s3_backend import S3Backend, S3Config
from clients.assets.pki import make_secrets
from clients.client import ChameleonClient as _PlainClient, ChameleonError
from clients.launcher import Cluster, ClusterSpec
from clients.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedFS, SeaweedUnavailable
from clients.store_client import StoreClient as _StoreClient, StoreError

pytestmark = pytest.mark.e2e
TOKEN = "admin-secret-for-tests"
FETCH_DEADLINE_S = 4.0


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    sw = SeaweedFS(tmp_path_factory.mktemp("weed") / "data")
    try:
        sw.start()
    except SeaweedUnavailable as e:
        print(f"SeaweedFS cannot start here, skipping the S3 tests: {e}", file=sys.stderr)
        pytest.skip(f"SeaweedFS cannot start: {e}")
    yield sw
    sw.stop()


PKI: dict = {}


def ChameleonClient(address: str) -> _PlainClient:
    """A client of the cluster's scheduler, with the deployment's client certificate (mTLS)."""
    return _PlainClient(address, tls_ca=PKI["ca"], tls_cert=PKI["cert"], tls_key=PKI["key"])


def StoreClient(address: str, admin_token: str | None = None, **kw) -> _StoreClient:
    """A client of the store: mTLS and the deployment token, plus the admin token if given."""
    return _StoreClient(address, admin_token=admin_token, auth_token=PKI["token"].read_text().strip(),
                        tls_ca=PKI["ca"], tls_cert=PKI["cert"], tls_key=PKI["key"], **kw)


@pytest.fixture(scope="module")
def cluster(tiny_assets, seaweed, tmp_path_factory):
    secrets = tmp_path_factory.mktemp("secrets")
    token = secrets / "admin-token"
    token.write_text(TOKEN + "\n")
    PKI.update(make_secrets(secrets / "pki", rogue=True))
    spec = ClusterSpec(
        common_args=["--auth-token-file", str(PKI["token"]), "--tls-cert", str(PKI["cert"]),
                     "--tls-key", str(PKI["key"]), "--tls-ca", str(PKI["ca"])],
        tls_ca=PKI["ca"], tls_cert=PKI["cert"], tls_key=PKI["key"],
        model=Path(tiny_assets["model"]), adapters=None,
        # small chunks at a few object-store requests per second: a 290 KB adapter streams for
        # several seconds, long enough to pull the object store out from under it
        store_args=[*seaweed.store_args(), "--admin-token-file", str(token), "--chunk-bytes",
                    str(8 << 10), "--backend-requests-per-s", "12", "--stat-ttl-s", "0.5"],
        # a long metadata TTL: a re-resolved or deleted name can only come from the store's watch
        scheduler_args=["--adapter-meta-ttl-s", "60"],
        worker_args=["--max-running", "4", "--block-size", "4",
                     "--adapter-fetch-deadline-s", str(FETCH_DEADLINE_S)],
        env={"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
    with Cluster(spec) as c:
        c.token_file = token
        yield c


def adapter_dir(tiny_assets, name: str) -> Path:
    return Path(tiny_assets["adapters"]) / name


async def push(cluster, folder: Path, name: str) -> str:
    async with StoreClient(cluster.store.address, admin_token=TOKEN) as s:
        return (await s.push(folder, name)).adapter_id


async def cached(c: ChameleonClient, want: set[str] = frozenset(), wait_s: float = 3.0) -> set[str]:
    """The adapters the workers hold, once `want` is among them or `wait_s` passed (the
    scheduler's view follows the workers' periodic state)."""
    deadline = time.monotonic() + wait_s
    while True:
        have = {a for w in (await c.status()).workers for a in w.cached_adapters}
        if want <= have or time.monotonic() > deadline:
            return have
        await asyncio.sleep(0.1)


async def test_registry_push_versions_and_delete(cluster, tiny_assets):
    store = cluster.store.address
    async with StoreClient(store) as anon:
        with pytest.raises(StoreError) as e:
            await anon.push(adapter_dir(tiny_assets, "tiny-r8-qv"), "qv")
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    async with StoreClient(store, admin_token="wrong") as wrong:
        with pytest.raises(StoreError) as e:
            await wrong.delete("qv")
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    # the CLI, as a process of its own
    out = subprocess.run([sys.executable, "-m", "clients.cli", "adapters", "push",
                          str(adapter_dir(tiny_assets, "tiny-r8-qv")), "--name", "qv", "--store", store,
                          "--admin-token-file", str(cluster.token_file), "--auth-token-file",
                          str(PKI["token"]), "--tls-ca", str(PKI["ca"]), "--tls-cert", str(PKI["cert"]),
                          "--tls-key", str(PKI["key"])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "pushed qv@1" in out.stdout, out.stderr
    async with ChameleonClient(cluster.address) as c:
        _, ids1, _ = await c.complete("Once upon a time,", adapter="qv", max_tokens=8)
        assert ids1 and "qv@1" in await cached(c, {"qv@1"})
    # a new version: the scheduler's cached answer for `qv` (TTL 5 s) is dropped by the watch
    assert await push(cluster, adapter_dir(tiny_assets, "tiny-r16-qkvo"), "qv") == "qv@2"
    await asyncio.sleep(0.2)
    async with StoreClient(store) as s:
        info = await s.show("qv")
        assert (info.adapter_id, info.version, list(info.versions)) == ("qv@2", 2, [1, 2])
        assert {a.adapter_id for a in await s.list()} >= {"qv@2"}
    async with StoreClient(store, admin_token=TOKEN) as s:
        with pytest.raises(StoreError) as e:
            await s.push(Path(tiny_assets["bad_adapters"]) / "misshaped-lora", "bad")
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "lora_" in e.value.details

    async with ChameleonClient(cluster.address) as c:
        _, ids2, _ = await c.complete("Once upon a time,", adapter="qv", max_tokens=8)
        assert ids2 and "qv@2" in await cached(c, {"qv@2"})  # `qv` resolves to qv@2 now
        # a request running on qv@2 finishes although qv is deleted under it
        stream = c.generate("Once upon a time,", adapter="qv", max_tokens=60, ignore_eos=True)
        first = await stream.__anext__()
        async with StoreClient(store, admin_token=TOKEN) as s:
            assert sorted(await s.delete("qv")) == ["qv@1", "qv@2"]
        rest = [ch async for ch in stream]
        assert len(first.token_ids) + sum(len(ch.token_ids) for ch in rest) == 60
        for ref in ("qv", "qv@1", "qv@2"):
            with pytest.raises(ChameleonError) as e:
                await c.complete("Hello", adapter=ref, max_tokens=4)
            assert e.value.code == grpc.StatusCode.NOT_FOUND


async def test_every_link_needs_the_client_certificate_and_the_token(cluster):
    no_cert = _StoreClient(cluster.store.address, auth_token=PKI["token"].read_text().strip(),
                           tls_ca=PKI["ca"])
    rogue = _StoreClient(cluster.store.address, auth_token=PKI["token"].read_text().strip(),
                         tls_ca=PKI["ca"], tls_cert=PKI["rogue_cert"], tls_key=PKI["rogue_key"])
    no_token = _StoreClient(cluster.store.address, tls_ca=PKI["ca"], tls_cert=PKI["cert"],
                            tls_key=PKI["key"])
    for client, codes in ((no_cert, {grpc.StatusCode.UNAVAILABLE}), (rogue, {grpc.StatusCode.UNAVAILABLE}),
                          (no_token, {grpc.StatusCode.UNAUTHENTICATED})):
        async with client as s:
            with pytest.raises(StoreError) as e:
                await s.list()
            assert e.value.code in codes, e.value
    async with StoreClient(cluster.store.address) as s:
        await s.list()


async def test_flipped_byte_in_the_object_is_data_loss_and_never_loaded(cluster, seaweed, tiny_assets):
    await push(cluster, adapter_dir(tiny_assets, "tiny-r4-mlp"), "flip")
    s3 = S3Backend(S3Config(bucket=seaweed.bucket, endpoint=seaweed.endpoint,
                            access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY))
    key = "flip/versions/1/adapter_model.safetensors"
    info = await s3.head(key)
    data = bytearray(await s3.read(key, 0, info.size))
    data[-10] ^= 0x01                       # one bit of one weight
    await s3.write(key, bytes(data))
    async with ChameleonClient(cluster.address) as c:
        with pytest.raises(ChameleonError) as e:
            await c.complete("Hello", adapter="flip", max_tokens=4, timeout=30)
        assert e.value.code == grpc.StatusCode.DATA_LOSS, e.value
        assert "flip@1" not in await cached(c)


async def test_object_store_outage_mid_stream(cluster, seaweed, tiny_assets):
    await push(cluster, adapter_dir(tiny_assets, "tiny-r12-kdown"), "warm")
    await push(cluster, adapter_dir(tiny_assets, "tiny-r32-all"), "big")
    async with ChameleonClient(cluster.address) as c:
        await c.complete("Hello", adapter="warm", max_tokens=4)
        assert "warm@1" in await cached(c, {"warm@1"})
        t0 = time.monotonic()
        big = asyncio.create_task(c.complete("Hello", adapter="big", max_tokens=4, timeout=60))
        await asyncio.sleep(1.5)   # the fetch is under way (it streams for ~3 s)
        seaweed.kill()
        try:
            # adapters already cached keep serving while the object store is away
            text, ids, finish = await c.complete("Water boils at", adapter="warm", max_tokens=6)
            assert ids and finish
            with pytest.raises(ChameleonError) as e:
                await big
            waited = time.monotonic() - t0
            assert e.value.code == grpc.StatusCode.UNAVAILABLE, e.value
            assert FETCH_DEADLINE_S - 0.5 < waited < FETCH_DEADLINE_S + 20, waited
            assert "big@1" not in await cached(c)
        finally:
            seaweed.start()
        _, ids, _ = await c.complete("Hello", adapter="big", max_tokens=4, timeout=60)
        assert ids and "big@1" in await cached(c, {"big@1"})
    # the outage hit the stream in the middle: the worker resumed from an offset, not from 0
    log = cluster.workers[0].log_path.read_text()
    assert re.search(r"fetch of big@1 interrupted .*resuming at \('adapter_model.safetensors', [1-9]", log), \
        log[-3000:]


async def test_one_fetch_serves_every_waiting_request(cluster, tiny_assets):
    await push(cluster, adapter_dir(tiny_assets, "tiny-r8-qkvo-rslora"), "shared")
    async with ChameleonClient(cluster.address) as c:
        outs = await asyncio.gather(*[c.complete(p, adapter="shared", max_tokens=4, timeout=60)
                                      for p in ("Hello", "Water boils at", "1, 2, 3,", "The sky")])
    assert all(ids for _, ids, _ in outs)
    async with ChameleonClient(cluster.address) as c:
        w = (await c.status()).workers[0]
    assert w.adapter_fetches >= 1 and w.fetch_bytes_per_s > 0 and w.fetch_ttfb_ms > 0
    log = cluster.workers[0].log_path.read_text()
    assert len(re.findall(r"fetched shared@1: \d+ bytes", log)) == 1, log[-2000:]


async def test_store_killed_and_restarted_on_its_address(cluster, tiny_assets):
    await push(cluster, adapter_dir(tiny_assets, "tiny-r16-qv-pattern"), "late")
    async with ChameleonClient(cluster.address) as c:
        cluster.kill_store()
        with pytest.raises(ChameleonError) as e:   # a clear answer, not a hang
            await c.complete("Hello", adapter="late", max_tokens=4, timeout=30)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        cluster.restart_store()
        deadline = time.monotonic() + 15
        while True:  # the scheduler's and worker's channels find the new process by themselves
            try:
                _, ids, _ = await c.complete("Hello", adapter="late", max_tokens=4, timeout=30)
                break
            except ChameleonError as err:
                assert err.code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, err
                await asyncio.sleep(0.3)
        assert ids and "late@1" in await cached(c, {"late@1"})
        assert cluster.scheduler.popen.poll() is None and cluster.workers[0].popen.poll() is None
