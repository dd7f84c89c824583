"""A deployment with a shared token and mutual TLS on every link (real processes):
requests through the scheduler work, and the worker and store refuse callers that lack
the token (UNAUTHENTICATED) or a certificate from the deployment's CA."""
from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from chameleon.v1 import common_pb2, store_pb2, store_pb2_grpc, worker_pb2, worker_pb2_grpc
from clients.client import ChameleonClient
from clients.launcher import Cluster, ClusterSpec
from clients.assets.pki import make_secrets

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def secure(tiny_assets, tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    pki = make_secrets(d, rogue=True)
    token = pki["token"]
    spec = ClusterSpec(model=Path(tiny_assets["model"]), adapters=Path(tiny_assets["adapters"]),
                       worker_args=["--block-size", "4", "--max-running", "4"],
                       common_args=["--auth-token-file", str(token), "--tls-cert", str(pki["cert"]),
                                    "--tls-key", str(pki["key"]), "--tls-ca", str(pki["ca"])],
                       tls_ca=pki["ca"], tls_cert=pki["cert"], tls_key=pki["key"])
    with Cluster(spec) as c:
        yield c, pki, token.read_text().strip()


def creds(pki, cert="cert", key="key"):
    return grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki[key].read_bytes() if key else None,
        certificate_chain=pki[cert].read_bytes() if cert else None)


async def test_requests_through_the_scheduler_use_token_and_mtls_on_every_link(secure, tiny_assets):
    cluster, pki, _ = secure
    adapter = sorted(p.name for p in Path(tiny_assets["adapters"]).iterdir() if p.is_dir())[0]
    async with ChameleonClient(cluster.address, tls_ca=pki["ca"], tls_cert=pki["cert"],
                               tls_key=pki["key"]) as c:
        text, ids, finish = await c.complete("Once upon a time", adapter=adapter, max_tokens=4)
        assert ids and finish in ("length", "eos")   # the worker fetched the adapter from the store


async def test_worker_refuses_a_caller_without_the_token(secure):
    cluster, pki, token = secure
    admit = worker_pb2.WorkerCommand(admit=worker_pb2.Admit(
        request_id="intruder", prompt_token_ids=[1, 2, 3], params=common_pb2.SamplingParams(max_tokens=2)))
    async with grpc.aio.secure_channel(cluster.workers[0].address, creds(pki)) as ch:
        stub = worker_pb2_grpc.WorkerStub(ch)

        async def connect(md):
            """Send the admission after the worker's first event (its hello), as the scheduler does."""
            q: asyncio.Queue = asyncio.Queue()

            async def commands():
                while True:
                    yield await q.get()
            call = stub.Connect(commands(), metadata=md)
            kinds = []
            async with asyncio.timeout(30):
                async for ev in call:
                    kind = ev.WhichOneof("kind")
                    if kind == "batch" and ev.batch.completions:   # steps' output goes up batched
                        kind = "completion"
                    kinds.append(kind)
                    if kinds == ["hello"]:
                        await q.put(admit)
                    if kind == "completion":
                        break
            call.cancel()
            return kinds
        for md in (None, (("authorization", "Bearer wrong"),), (("authorization", token),)):
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await connect(md)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # with the token the same call is served: the check is the token, not something else
        kinds = await connect((("authorization", f"Bearer {token}"),))
        assert kinds[0] == "hello" and kinds[-1] == "completion"


async def test_store_refuses_without_token_and_tls_needs_a_client_certificate(secure, tiny_assets):
    cluster, pki, token = secure
    adapter = sorted(p.name for p in Path(tiny_assets["adapters"]).iterdir() if p.is_dir())[0]
    req = store_pb2.StatAdapterRequest(adapter_id=adapter)
    async with grpc.aio.secure_channel(cluster.store.address, creds(pki)) as ch:
        stub = store_pb2_grpc.AdapterStoreStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.StatAdapter(req, timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = await stub.StatAdapter(req, timeout=10, metadata=(("authorization", f"Bearer {token}"),))
        assert info.valid
    # no client certificate, or one from another CA: the TLS handshake fails
    for cert, key in ((None, None), ("rogue_cert", "rogue_key")):
        async with grpc.aio.secure_channel(cluster.store.address, creds(pki, cert, key)) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await store_pb2_grpc.AdapterStoreStub(ch).StatAdapter(
                    req, timeout=5, metadata=(("authorization", f"Bearer {token}"),))
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    # plaintext to a TLS port fails too
    async with grpc.aio.insecure_channel(cluster.store.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await store_pb2_grpc.AdapterStoreStub(ch).StatAdapter(req, timeout=5)


async def test_worker_get_info_describes_the_worker_the_scheduler_connected_to(secure):
    """GetInfo is what the scheduler's link reads before it opens the stream: with the token it
    answers the worker's geometry and tokenizer, and the scheduler's status figures are built
    from that answer; without the token it is refused like Connect."""
    cluster, pki, token = secure
    async with grpc.aio.secure_channel(cluster.workers[0].address, creds(pki)) as ch:
        stub = worker_pb2_grpc.WorkerStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.GetInfo(worker_pb2.GetInfoRequest(), timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = await stub.GetInfo(worker_pb2.GetInfoRequest(), timeout=10,
                                  metadata=(("authorization", f"Bearer {token}"),))
    assert info.worker_id and info.model_name and info.tokenizer_json
    assert info.block_size > 0 and info.total_pages > 0 and info.max_running > 0
    async with ChameleonClient(cluster.address, tls_ca=pki["ca"], tls_cert=pki["cert"],
                               tls_key=pki["key"]) as c:
        st = await c.status()
    (w,) = [w for w in st.workers if w.address == cluster.workers[0].address]
    assert w.connected and w.worker_id == info.worker_id
    assert w.total_tokens == info.total_pages * info.block_size
