import json
import os
import struct

import pytest

from adapter_store.core.backends import LocalFolderBackend, MemoryBackend
from adapter_store.core.catalog import (AdapterCatalog, AdapterInvalid, AdapterNotFound,
                                        InvalidAdapterId, PushLimits)
from adapter_store.core.hot_cache import HotCache
from adapter_store.core.refs import parse_ref
from chameleon_common.adapters import adapter_digest
from adapter_store.core.streaming import AdapterCorrupt, stream_adapter

KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def st_bytes(tensors: dict[str, tuple[str, tuple[int, ...]]], *, fill: int = 1) -> bytes:
    """A safetensors file written by hand (no torch): {name: (dtype, shape)}."""
    size = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4}
    header, data, off = {}, b"", 0
    for name, (dtype, shape) in tensors.items():
        n = size[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        data += bytes([fill]) * n
        off += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def files(shape=(4, 8), dtype="F32", r=4) -> dict[str, bytes]:
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 8, "target_modules": ["q_proj"]}
    return {"adapter_config.json": json.dumps(cfg).encode(),
            "adapter_model.safetensors": st_bytes({KEY: (dtype, shape)})}


def only_4x8_float(config, tensors):
    out = [f"{k}: expected (4, 8), got {t.shape}" for k, t in tensors.items() if t.shape != (4, 8)]
    return out + [f"{k}: dtype {t.dtype}" for k, t in tensors.items() if t.dtype not in ("F32", "F16")]


async def put_plain(backend, name, fs):
    for fname, data in fs.items():
        await backend.write(f"{name}/{fname}", data)


def test_refs():
    assert str(parse_ref("a")) == "a" and parse_ref("a@3").version == 3
    for bad in ("", "../x", "a@0", "a@x", "a@", ".a", "a/b", "a@1@2", "x" * 129, "a\n"):
        with pytest.raises(InvalidAdapterId):
            parse_ref(bad)


async def test_plain_adapters_list_validate_and_stream():
    be = MemoryBackend()
    await put_plain(be, "good", files())
    await put_plain(be, "bad", files(shape=(4, 9)))
    cat = AdapterCatalog(be, only_4x8_float, chunk_bytes=16, stat_ttl_s=0)
    recs = {r.adapter_id: r for r in await cat.list()}
    assert recs["good"].valid and recs["good"].rank == 4 and recs["good"].version is None
    assert recs["good"].sha256 == adapter_digest({f.name: f.sha256 for f in recs["good"].files})
    assert not recs["bad"].valid and "(4, 9)" in recs["bad"].invalid_reason
    out: dict[str, bytes] = {}
    async for c in stream_adapter(cat, HotCache(0), recs["good"], chunk_bytes=16):
        assert c.offset == len(out.get(c.file.name, b""))
        out[c.file.name] = out.get(c.file.name, b"") + c.data
    assert out == files()
    with pytest.raises(AdapterInvalid, match="q_proj"):
        await cat.require_valid("bad")


async def test_header_is_read_with_ranged_reads_only():
    be = MemoryBackend()
    big = files()
    # a large data section: the header needs only the first ranged read, not the whole file
    big["adapter_model.safetensors"] = st_bytes({KEY: ("F32", (4, 8)), "pad": ("F32", (1 << 18,))})
    await put_plain(be, "a", big)
    reads = []
    orig = be.read

    async def spy(key, offset, length):
        reads.append((key, offset, length))
        return await orig(key, offset, length)
    be.read = spy
    cat = AdapterCatalog(be, lambda c, t: [], chunk_bytes=1 << 20)
    await cat.stat("a")
    header_reads = [r for r in reads if r[0].endswith(".safetensors") and r[2] < (1 << 20)]
    assert header_reads and all(r[2] <= 64 * 1024 for r in header_reads)


async def test_unknown_and_malformed_ids():
    cat = AdapterCatalog(MemoryBackend(), only_4x8_float)
    with pytest.raises(AdapterNotFound):
        await cat.stat("nope")
    with pytest.raises(InvalidAdapterId):
        await cat.stat("../etc")


async def test_change_detection_by_etag_and_ttl():
    be = MemoryBackend()
    await put_plain(be, "a", files())
    now = [0.0]
    cat = AdapterCatalog(be, only_4x8_float, stat_ttl_s=5, clock=lambda: now[0])
    first = (await cat.stat("a")).sha256
    await be.write("a/adapter_model.safetensors", files()["adapter_model.safetensors"][:-4] + b"\2\2\2\2")
    assert (await cat.stat("a")).sha256 == first       # within the TTL: no round trip
    now[0] = 6
    assert (await cat.stat("a")).sha256 != first       # the etag changed: re-hashed


async def test_stale_record_served_while_backend_is_down():
    be = MemoryBackend()
    await put_plain(be, "a", files())
    cat = AdapterCatalog(be, only_4x8_float, stat_ttl_s=0)
    rec = await cat.stat("a")
    be.fail = True
    assert (await cat.stat("a")).sha256 == rec.sha256


async def test_push_versions_latest_and_delete():
    be = MemoryBackend()
    cat = AdapterCatalog(be, only_4x8_float, stat_ttl_s=0)
    v1 = await cat.push("ad", files())
    v2 = await cat.push("ad", files(r=8))
    assert (v1.adapter_id, v2.adapter_id) == ("ad@1", "ad@2") and v1.sha256 != v2.sha256
    latest = await cat.stat("ad")
    assert latest.adapter_id == "ad@2" and latest.versions == [1, 2] and latest.rank == 8
    assert (await cat.stat("ad@1")).sha256 == v1.sha256
    assert await cat.delete("ad@2") == ["ad@2"]
    assert (await cat.stat("ad")).adapter_id == "ad@1"
    with pytest.raises(AdapterNotFound):
        await cat.stat("ad@2")
    assert await cat.delete("ad") == ["ad@1"]
    with pytest.raises(AdapterNotFound):
        await cat.stat("ad")
    assert await be.list("") == []


@pytest.mark.parametrize("mutate,reason", [
    (lambda f: f.update({"adapter_model.safetensors": struct.pack("<Q", 10 ** 6) + b"{}"}),
     "larger than the file"),
    (lambda f: f.update({"adapter_model.safetensors": _raw_header(
        {KEY: {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]},
         "b": {"dtype": "F32", "shape": [4, 8], "data_offsets": [64, 192]}}, 192)}), "overlap"),
    (lambda f: f.update({"adapter_model.safetensors": _raw_header(
        {KEY: {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]}}, 64)}), "out of range"),
    (lambda f: f.update({"adapter_model.safetensors": _raw_header(
        {KEY: {"dtype": "Q4", "shape": [4, 8], "data_offsets": [0, 128]}}, 128)}), "unknown dtype"),
    (lambda f: f.update({"adapter_model.safetensors": st_bytes({KEY: ("I32", (4, 8))})}), "dtype I32"),
    (lambda f: f.update({"adapter_model.safetensors": st_bytes({KEY: ("F32", (4, 9))})}), "(4, 9)"),
    (lambda f: f.update({"adapter_config.json": b"{not json"}), "not valid JSON"),
    (lambda f: f.pop("adapter_config.json"), "exactly"),
    (lambda f: f.update({"adapter_model.safetensors": st_bytes({KEY: ("F32", (4, 8))}) + b"x" * 300}),
     "limit"),
])
async def test_push_rejects_with_the_reason(mutate, reason):
    fs = files()
    mutate(fs)
    cat = AdapterCatalog(MemoryBackend(), only_4x8_float, limits=PushLimits(max_weights_bytes=400))
    with pytest.raises(AdapterInvalid, match=reason):
        await cat.push("x", fs)
    assert await cat.backend.list("") == []


def _raw_header(header: dict, data_len: int) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * data_len


async def test_flipped_byte_in_a_version_is_data_loss_and_never_cached():
    be = MemoryBackend()
    cat = AdapterCatalog(be, only_4x8_float)
    rec = await cat.push("ad", files())
    be.corrupt("ad/versions/1/adapter_model.safetensors", -3)
    hot = HotCache(1 << 20)
    with pytest.raises(AdapterCorrupt):
        async for _ in stream_adapter(cat, hot, rec, chunk_bytes=32):
            pass
    assert hot.get(rec.sha256, "adapter_model.safetensors") is None


async def test_resume_from_an_offset_and_hot_cache_avoids_the_backend():
    be = MemoryBackend()
    cat = AdapterCatalog(be, only_4x8_float)
    rec = await cat.push("ad", files())
    hot = HotCache(1 << 20)
    whole = b"".join([c.data async for c in stream_adapter(cat, hot, rec, chunk_bytes=10)
                      if c.file.name == "adapter_model.safetensors"])
    before = be.reads
    tail = [c async for c in stream_adapter(cat, hot, rec, chunk_bytes=10,
                                            start_file="adapter_model.safetensors", start_offset=50)]
    assert be.reads == before  # served from host memory
    assert tail[0].offset == 50 and b"".join(c.data for c in tail) == whole[50:] and tail[-1].last


def test_hot_cache_is_bounded_in_bytes():
    h = HotCache(100)
    assert h.put("d1", "f", b"x" * 60) and h.put("d2", "f", b"y" * 60)
    assert h.used_bytes == 60 and h.get("d1", "f") is None and h.evictions == 1
    assert not h.put("d3", "f", b"z" * 101)


async def test_local_folder_backend_refuses_symlinks_out_of_the_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "adapter_config.json").write_text("{}")
    os.symlink(outside, root / "evil")
    (root / "a").mkdir()
    os.symlink(outside / "adapter_config.json", root / "a" / "adapter_config.json")
    be = LocalFolderBackend(root)
    assert await be.head("evil/adapter_config.json") is None
    assert await be.head("a/adapter_config.json") is None
    assert await be.list("") == []
    cat = AdapterCatalog(be, only_4x8_float)
    rec = await cat.push("b", files())
    assert (root / "b" / "versions" / "1" / "manifest.json").exists()
    assert (await cat.stat("b")).sha256 == rec.sha256


async def test_list_costs_one_backend_listing():
    be = MemoryBackend()
    for n in ("a", "b", "c"):
        await put_plain(be, n, files())
    calls = []
    orig = be.list

    async def spy(prefix=""):
        calls.append(prefix)
        return await orig(prefix)
    be.list = spy
    cat = AdapterCatalog(be, only_4x8_float, stat_ttl_s=60)
    assert [r.adapter_id for r in await cat.list()] == ["a", "b", "c"]
    assert calls == [""]
