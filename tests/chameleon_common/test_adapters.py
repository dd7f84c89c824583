import hashlib
from pathlib import Path

import pytest

from adapter_store.core.backends import LocalFolderBackend
from adapter_store.core.catalog import AdapterCatalog
from chameleon_common.adapters import AdapterRef, adapter_digest

H1, H2 = hashlib.sha256(b"config").hexdigest(), hashlib.sha256(b"weights").hexdigest()


def test_digest_is_the_stores_published_formula():
    # the store's formula before the two were unified: sha256 over the file digests,
    # adapter_config.json then adapter_model.safetensors
    legacy = hashlib.sha256((H1 + H2).encode()).hexdigest()
    assert adapter_digest({"adapter_config.json": H1, "adapter_model.safetensors": H2}) == legacy
    # order-independent input, name-ordered hashing
    assert adapter_digest({"adapter_model.safetensors": H2, "adapter_config.json": H1}) == legacy
    assert adapter_digest({"adapter_config.json": H2, "adapter_model.safetensors": H1}) != legacy


@pytest.mark.parametrize("bad", [{}, {"a": "xyz"}, {"a": H1.upper()}])
def test_digest_rejects_malformed_input(bad):
    with pytest.raises(ValueError):
        adapter_digest(bad)


def test_ref_matching_and_validation():
    a = AdapterRef.of_files("a", {"f": H1})
    assert a.matches(AdapterRef("a")) and AdapterRef("a").matches(a)
    assert not a.matches(AdapterRef("a", adapter_digest({"f": H2})))
    assert not a.matches(AdapterRef("b", a.digest))
    assert str(a).startswith("a@") and str(AdapterRef("a")) == "a"
    with pytest.raises(ValueError):
        AdapterRef("")


async def test_store_and_worker_compute_one_digest(tmp_path: Path):
    """The catalog's AdapterInfo.sha256 equals the digest the fetcher computes from the
    per-file sha256 the store streams."""
    d = tmp_path / "x"
    d.mkdir()
    (d / "adapter_config.json").write_bytes(b'{"r": 4}')
    (d / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    rec = await AdapterCatalog(LocalFolderBackend(tmp_path), lambda c, s: []).stat("x")
    per_file = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}
    assert rec.sha256 == adapter_digest(per_file) == AdapterRef.of_files("x", per_file).digest
