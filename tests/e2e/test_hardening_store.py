"""The adapter store against a careless operator and a hostile disk (issue 9, defects 5, 6, 10):
content pinned at registration, NaN/Inf weights refused, nothing outside the root served,
chunk sizes clamped. Real store, worker and scheduler processes."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file, save_file

from chameleon.v1 import store_pb2, store_pb2_grpc
from clients.client import ChameleonClient, ChameleonError
from clients.launcher import Cluster, ClusterSpec

pytestmark = pytest.mark.e2e
WEIGHTS = "adapter_model.safetensors"
MAX_CHUNK = 65536


@pytest.fixture(scope="module")
def store_cluster(tiny_assets, tmp_path_factory):
    src = Path(tiny_assets["adapters"])
    names = sorted(p.name for p in src.iterdir() if p.is_dir())
    root = tmp_path_factory.mktemp("adapters")
    for n in names:
        shutil.copytree(src / n, root / n)
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(src / names[0], outside / "elsewhere")
    os.symlink(outside / "elsewhere", root / "outside-link")          # a folder out of the root
    shutil.copytree(src / names[0], root / "passwd-link")
    (root / "passwd-link" / WEIGHTS).unlink()
    os.symlink("/etc/passwd", root / "passwd-link" / WEIGHTS)          # a file out of the root
    shutil.copytree(src / names[0], root / "nan-weights")
    tensors = load_file(str(root / "nan-weights" / WEIGHTS))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].clone()
    tensors[first].view(-1)[3] = float("nan")
    save_file(tensors, str(root / "nan-weights" / WEIGHTS))
    spec = ClusterSpec(model=Path(tiny_assets["model"]), adapters=root,
                       worker_args=["--block-size", "4", "--max-running", "4"],
                       store_args=["--chunk-bytes", str(MAX_CHUNK // 4)])  # clamp: 4 x chunk_bytes
    with Cluster(spec) as c:
        c.root, c.names = root, names
        yield c
        assert all(p.popen.poll() is None for p in c.procs), "a service exited"


async def listed(c) -> dict:
    async with ChameleonClient(c.address) as cl:
        return {a.adapter_id: a for a in await cl.list_adapters()}


async def code_of(c, adapter: str) -> grpc.StatusCode:
    async with ChameleonClient(c.address) as cl:
        try:
            text, ids, _ = await cl.complete("Once upon a time", adapter=adapter, max_tokens=4)
        except ChameleonError as e:
            return e.code
    return grpc.StatusCode.OK


def corrupt_tail(path: Path, keep_mtime: bool) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size - 4096)
        f.write(b"\xff" * 4096)
    assert path.stat().st_size == st.st_size
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


async def test_corrupted_files_are_refused_with_data_loss_and_flagged(store_cluster):
    c = store_cluster
    a, b = c.names[2], c.names[3]
    assert (await listed(c))[a].valid
    corrupt_tail(c.root / a / WEIGHTS, keep_mtime=False)     # the store sees a new mtime
    corrupt_tail(c.root / b / WEIGHTS, keep_mtime=True)      # the store sees nothing change
    for name in (a, b):
        assert await code_of(c, name) == grpc.StatusCode.DATA_LOSS, name
        assert await code_of(c, name) == grpc.StatusCode.DATA_LOSS, name   # and stays refused
    info = await listed(c)
    for name in (a, b):
        assert info[name].content_mismatch and not info[name].valid, info[name]
        assert "sha256" in info[name].invalid_reason or "digest" in info[name].invalid_reason
    assert await code_of(c, c.names[4]) == grpc.StatusCode.OK  # the others still serve


async def test_nan_weights_are_refused_at_registration(store_cluster):
    info = (await listed(store_cluster))["nan-weights"]
    assert not info.valid and "NaN" in info.invalid_reason
    assert await code_of(store_cluster, "nan-weights") == grpc.StatusCode.FAILED_PRECONDITION


async def test_nothing_outside_the_root_is_listed_stated_or_streamed(store_cluster):
    c = store_cluster
    info = await listed(c)
    assert "outside-link" not in info
    assert await code_of(c, "outside-link") == grpc.StatusCode.NOT_FOUND
    passwd = Path("/etc/passwd").read_bytes()
    digest = hashlib.sha256(passwd).hexdigest()
    async with grpc.aio.insecure_channel(c.store.address) as ch:
        stub = store_pb2_grpc.AdapterStoreStub(ch)
        rec = await stub.StatAdapter(store_pb2.StatAdapterRequest(adapter_id="passwd-link"), timeout=10)
        assert not rec.valid and rec.size_bytes == 0   # the link is not followed: "missing"
        assert all(f.sha256 != digest and f.size_bytes != len(passwd) for f in rec.files), rec
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            async for _ in stub.FetchAdapter(store_pb2.FetchAdapterRequest(adapter_id="outside-link")):
                pass
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND


async def test_chunk_bytes_is_clamped(store_cluster):
    c = store_cluster
    big = max(c.names, key=lambda n: (c.root / n / WEIGHTS).stat().st_size)
    size = (c.root / big / WEIGHTS).stat().st_size
    assert size > 2 * MAX_CHUNK
    async with grpc.aio.insecure_channel(c.store.address) as ch:
        stub = store_pb2_grpc.AdapterStoreStub(ch)
        data = b""
        n = 0
        async for chunk in stub.FetchAdapter(store_pb2.FetchAdapterRequest(adapter_id=big,
                                                                          chunk_bytes=2**31 - 1)):
            assert len(chunk.data) <= MAX_CHUNK
            if chunk.file_name == WEIGHTS:
                data += chunk.data
                n += 1
    assert n >= size // MAX_CHUNK and hashlib.sha256(data).hexdigest() == hashlib.sha256(
        (c.root / big / WEIGHTS).read_bytes()).hexdigest()
