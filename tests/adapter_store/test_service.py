"""The store servicer over real in-process gRPC: admin token, pushes, deletes and the watch stream."""
import asyncio

import grpc
import pytest

from adapter_store.core.backends import MemoryBackend
from adapter_store.core.catalog import AdapterCatalog
from adapter_store.core.hot_cache import HotCache
from adapter_store.service import AdapterStoreService
from chameleon.v1 import store_pb2, store_pb2_grpc
from clients.store_client import StoreClient, StoreError
from tests.adapter_store.core.test_catalog import files, only_4x8_float


@pytest.fixture
async def store(tmp_path):
    catalog = AdapterCatalog(MemoryBackend(), only_4x8_float, stat_ttl_s=0)
    server = grpc.aio.server()
    AdapterStoreService(catalog, HotCache(1 << 20), admin_token="s3cret").add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    folder = tmp_path / "ad"
    folder.mkdir()
    for name, data in files().items():
        (folder / name).write_bytes(data)
    yield f"127.0.0.1:{port}", folder, tmp_path
    await server.stop(None)


async def test_push_and_delete_need_the_admin_token(store):
    addr, folder, _ = store
    for token in (None, "s3cre", "s3cret-and-more"):
        async with StoreClient(addr, admin_token=token) as c:
            with pytest.raises(StoreError) as e:
                await c.push(folder, "ad")
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(StoreError) as e:
                await c.delete("ad")
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    async with StoreClient(addr, admin_token="s3cret") as c:
        assert (await c.push(folder, "ad")).adapter_id == "ad@1"
        assert await c.delete("ad@1") == ["ad@1"]
        with pytest.raises(StoreError) as e:
            await c.show("ad")
        assert e.value.code == grpc.StatusCode.NOT_FOUND


async def test_push_refusals_say_why(store):
    addr, folder, tmp = store
    (folder / "adapter_model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    async with StoreClient(addr, admin_token="s3cret") as c:
        with pytest.raises(StoreError) as e:
            await c.push(folder, "ad")
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "larger than the file" in e.value.details
        with pytest.raises(StoreError) as e:
            await c.push(folder, "ad@3")
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(FileNotFoundError):
            await c.push(tmp / "nothing-here", "ad")


async def test_watch_stream_reports_pushes_and_deletes(store):
    addr, folder, _ = store
    async with grpc.aio.insecure_channel(addr) as ch:
        call = store_pb2_grpc.AdapterStoreStub(ch).WatchAdapters(store_pb2.WatchAdaptersRequest())
        await asyncio.sleep(0.1)
        async with StoreClient(addr, admin_token="s3cret") as c:
            await c.push(folder, "ad")
            await c.push(folder, "ad")
            await c.delete("ad")
        got = [await asyncio.wait_for(call.read(), 5) for _ in range(3)]
        call.cancel()
    assert [(g.kind, g.name, sorted(g.refs)) for g in got] == [
        (store_pb2.ADAPTER_CHANGE_KIND_PUSHED, "ad", ["ad@1"]),
        (store_pb2.ADAPTER_CHANGE_KIND_PUSHED, "ad", ["ad@2"]),
        (store_pb2.ADAPTER_CHANGE_KIND_DELETED, "ad", ["ad@1", "ad@2"])]
