"""stream_adapter: from the backend and from the hot cache, whole or from an offset."""
from adapter_store.core.backends import MemoryBackend
from adapter_store.core.catalog import AdapterCatalog
from adapter_store.core.hot_cache import HotCache
from adapter_store.core.streaming import stream_adapter
from tests.adapter_store.core.test_catalog import files


async def _collect(catalog, hot, rec, start_file: str = "", start_offset: int = 0) -> dict[str, bytes]:
    out: dict[str, bytearray] = {}
    async for c in stream_adapter(catalog, hot, rec, chunk_bytes=16, start_file=start_file,
                                  start_offset=start_offset):
        buf = out.setdefault(c.file.name, bytearray())
        assert c.offset == (start_offset if c.file.name == start_file else 0) + len(buf)
        buf += c.data
    return {k: bytes(v) for k, v in out.items()}


async def test_cached_and_uncached_streams_carry_the_same_bytes_from_any_offset():
    catalog = AdapterCatalog(MemoryBackend(), lambda c, t: [], chunk_bytes=16, stat_ttl_s=0)
    fs = files(shape=(4, 8))
    rec = await catalog.push("ad", fs)
    hot = HotCache(1 << 20)
    assert await _collect(catalog, hot, rec) == fs        # from the backend, fills the cache
    assert len(hot) == 2
    hits = hot.hits
    assert await _collect(catalog, hot, rec) == fs        # from memory
    assert hot.hits == hits + 2
    w = "adapter_model.safetensors"
    for start in (0, 1, 40, len(fs[w]) - 1, len(fs[w])):
        got = await _collect(catalog, hot, rec, start_file=w, start_offset=start)
        assert got == {w: fs[w][start:]}
