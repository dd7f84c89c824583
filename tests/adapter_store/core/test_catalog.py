import json

import pytest
import torch
from safetensors.torch import save_file

from adapter_store.core.catalog import (AdapterCatalog, AdapterInvalid, AdapterNotFound,
                                        InvalidAdapterId, LocalFolderBackend)
from adapter_store.core.safetensors_header import read_tensor_shapes


def write_adapter(root, name, shape=(4, 8), r=4):
    d = root / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 8,
                                                       "target_modules": ["q_proj"]}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(shape)},
              str(d / "adapter_model.safetensors"))
    return d


def only_shape_4x8(config, shapes):
    return [f"{k}: expected (4, 8), got {v}" for k, v in shapes.items() if v != (4, 8)]


def test_header_reader_sees_shapes_without_loading(tmp_path):
    d = write_adapter(tmp_path, "a", shape=(3, 5))
    assert list(read_tensor_shapes(d / "adapter_model.safetensors").values()) == [(3, 5)]


def test_catalog_lists_validates_and_streams(tmp_path):
    write_adapter(tmp_path, "good")
    write_adapter(tmp_path, "bad", shape=(4, 9))
    cat = AdapterCatalog(LocalFolderBackend(tmp_path), only_shape_4x8, chunk_bytes=16)
    recs = {r.adapter_id: r for r in cat.list()}
    assert recs["good"].valid and recs["good"].rank == 4 and len(recs["good"].sha256) == 64
    assert not recs["bad"].valid and "(4, 9)" in recs["bad"].invalid_reason
    chunks = list(cat.iter_chunks("good"))
    files = {}
    for f, off, data, last in chunks:
        assert off == len(files.get(f.name, b""))
        files[f.name] = files.get(f.name, b"") + data
    assert files["adapter_model.safetensors"] == (tmp_path / "good" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(AdapterInvalid, match="q_proj"):
        list(cat.iter_chunks("bad"))


def test_unknown_and_malformed_ids(tmp_path):
    cat = AdapterCatalog(LocalFolderBackend(tmp_path), only_shape_4x8)
    with pytest.raises(AdapterNotFound):
        cat.stat("nope")
    with pytest.raises(InvalidAdapterId):
        cat.stat("../etc")


def test_catalog_notices_a_changed_adapter(tmp_path):
    d = write_adapter(tmp_path, "a")
    cat = AdapterCatalog(LocalFolderBackend(tmp_path), only_shape_4x8)
    first = cat.stat("a").sha256
    import os, time
    save_file({"x": torch.zeros(4, 8)}, str(d / "adapter_model.safetensors"))
    os.utime(d / "adapter_model.safetensors", (time.time() + 5, time.time() + 5))
    assert cat.stat("a").sha256 != first


def test_corrupt_weights_file_is_reported_not_raised(tmp_path):
    d = write_adapter(tmp_path, "a")
    (d / "adapter_model.safetensors").write_bytes(b"\x01\x00")
    rec = AdapterCatalog(LocalFolderBackend(tmp_path), only_shape_4x8).stat("a")
    assert not rec.valid and "too short" in rec.invalid_reason
