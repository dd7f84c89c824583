"""The worker's fetcher against a real in-process store service over gRPC."""
import asyncio
import hashlib

import grpc
import pytest

from adapter_store.core.backends import BackendUnavailable, MemoryBackend
from adapter_store.core.catalog import AdapterCatalog
from adapter_store.core.hot_cache import HotCache
from chameleon_common.adapters import adapter_digest
from adapter_store.service import AdapterStoreService
from gpu_worker.adapter_fetcher import AdapterFetcher, AdapterFetchError, RetryPolicy
from tests.adapter_store.core.test_catalog import files


class FlakyBackend(MemoryBackend):
    """Reads of the weights fail after `break_after` successful ones, `failures` times."""

    def __init__(self, break_after: int, failures: int):
        super().__init__()
        self.break_after, self.failures, self.ok = break_after, failures, 0
        self.log: list = []  # weight-file read offsets, "X" where a read failed

    async def read(self, key, offset, length):
        if key.endswith(".safetensors") and self.failures and self.ok >= self.break_after:
            self.failures -= 1
            self.ok = 0
            self.log.append("X")
            raise BackendUnavailable("object store went away")
        if key.endswith(".safetensors"):
            self.ok += 1
            self.log.append(offset)
        return await super().read(key, offset, length)


async def serve(backend, hot=0):
    catalog = AdapterCatalog(backend, lambda c, t: [], chunk_bytes=16, stat_ttl_s=0)
    service = AdapterStoreService(catalog, HotCache(hot), readahead=1)
    server = grpc.aio.server()
    service.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}", catalog, service


async def test_broken_stream_resumes_from_last_good_offset_and_verifies():
    be = FlakyBackend(break_after=3, failures=2)
    server, addr, catalog, service = await serve(be)
    fs = files(shape=(4, 8))
    rec = await catalog.push("ad", fs)
    be.log.clear()
    f = AdapterFetcher(addr, retry=RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, deadline_s=10))
    try:
        got = await f.fetch("ad@1")
    finally:
        await f.close()
        await server.stop(None)
    assert {k: bytes(v) for k, v in got.files.items()} == fs
    assert got.digest == rec.sha256 == adapter_digest({k: hashlib.sha256(v).hexdigest() for k, v in fs.items()})
    assert got.stats.attempts == 3 and got.stats.nbytes == sum(map(len, fs.values()))
    # the second and third attempts started where the previous ones broke, not at 0
    cuts = [i for i, x in enumerate(be.log) if x == "X"]
    assert len(cuts) == 2 and be.log[0] == 0
    assert all(be.log[i + 1] > 0 and be.log[i + 1] >= be.log[i - 1] for i in cuts)
    assert got.stats.ttfb_s > 0 and got.stats.bytes_per_s > 0


async def test_corrupt_object_is_data_loss_without_retry():
    be = MemoryBackend()
    server, addr, catalog, _ = await serve(be)
    await catalog.push("ad", files())
    be.corrupt("ad/versions/1/adapter_model.safetensors", 200)
    f = AdapterFetcher(addr, retry=RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, deadline_s=10))
    try:
        with pytest.raises(AdapterFetchError) as e:
            await f.fetch("ad")
    finally:
        await f.close()
        await server.stop(None)
    assert e.value.code == grpc.StatusCode.DATA_LOSS


async def test_store_away_fails_unavailable_at_the_deadline():
    be = MemoryBackend()
    server, addr, catalog, _ = await serve(be)
    await catalog.push("ad", files())
    await catalog.stat("ad")
    be.fail = True  # listing stays known (stale if error), every read fails
    f = AdapterFetcher(addr, retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.1, deadline_s=0.6))
    t0 = asyncio.get_running_loop().time()
    try:
        with pytest.raises(AdapterFetchError) as e:
            await f.fetch("ad")
    finally:
        await f.close()
        await server.stop(None)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and "attempts" in e.value.message
    assert 0.5 < asyncio.get_running_loop().time() - t0 < 5


async def test_unknown_adapter_is_not_found_at_once():
    server, addr, _, _ = await serve(MemoryBackend())
    f = AdapterFetcher(addr)
    try:
        with pytest.raises(AdapterFetchError) as e:
            await f.fetch("nope")
    finally:
        await f.close()
        await server.stop(None)
    assert e.value.code == grpc.StatusCode.NOT_FOUND


async def test_second_fetch_comes_from_the_hot_cache_byte_for_byte():
    be = FlakyBackend(break_after=0, failures=0)   # never fails; logs every weights read
    server, addr, catalog, service = await serve(be, hot=1 << 20)
    fs = files(shape=(4, 8))
    await catalog.push("ad", fs)
    f = AdapterFetcher(addr)
    try:
        cold = await f.fetch("ad@1")
        reads = len(be.log)
        warm = await f.fetch("ad@1")
    finally:
        await f.close()
        await server.stop(None)
    assert reads > 0 and len(be.log) == reads          # the second fetch read nothing from the backend
    assert service.hot.hits >= 2                        # both files, from memory
    assert {k: bytes(v) for k, v in warm.files.items()} == {k: bytes(v) for k, v in cold.files.items()} == fs
