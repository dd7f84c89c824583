"""The scheduler's follower of the store's WatchAdapters stream, against a real in-process store."""
import asyncio

import grpc

from adapter_store.core.backends import MemoryBackend
from adapter_store.core.catalog import AdapterCatalog
from adapter_store.service import AdapterStoreService
from chameleon.v1 import store_pb2_grpc
from clients.store_client import StoreClient
from scheduler_svc.store_watch import StoreWatch
from tests.adapter_store.core.test_catalog import files, only_4x8_float


async def start_store(port=0):
    server = grpc.aio.server()
    store_pb2_grpc.add_AdapterStoreServicer_to_server(
        AdapterStoreService(AdapterCatalog(MemoryBackend(), only_4x8_float)), server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port


async def until(cond, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


async def test_changes_arrive_and_a_reconnect_resets(tmp_path):
    folder = tmp_path / "ad"
    folder.mkdir()
    for name, data in files().items():
        (folder / name).write_bytes(data)
    server, port = await start_store()
    changes, resets = [], []
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)])
    watch = StoreWatch(store_pb2_grpc.AdapterStoreStub(ch), lambda n, r: changes.append((n, r)),
                       lambda: resets.append(1), initial_backoff_s=0.05, max_backoff_s=0.2)
    watch.start()
    try:
        await asyncio.wait_for(watch.connected.wait(), 10)
        assert resets == [1]
        async with StoreClient(f"127.0.0.1:{port}") as c:
            await c.push(folder, "ad")
            await c.delete("ad")
        await until(lambda: len(changes) == 2)
        assert changes == [("ad", ["ad@1"]), ("ad", ["ad@1"])]
        await server.stop(None)           # the store goes away and comes back on its port
        await until(lambda: not watch.connected.is_set())
        server, _ = await start_store(port)
        await until(lambda: len(resets) == 2)
    finally:
        await watch.stop()
        await ch.close()
        await server.stop(None)
