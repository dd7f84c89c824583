"""Adapter streaming, store -> worker over loopback gRPC vs straight from the backend (`chameleon bench store`).

For each backend (the local folder, and SeaweedFS started here) and each adapter size,
interleaved in the same run: (1) `direct`: the adapter's bytes read from the backend by this
process with the store's own ranged reads (same chunk size and read-ahead, no hashing), the
baseline the goal is stated against; (2) `direct + sha256`: the same reads, each file also
sha256-verified on a helper thread, what a worker reading the backend itself would pay to
verify; (3) `grpc`: the same adapter fetched by the worker's AdapterFetcher from an adapter
store process over loopback gRPC (the store reads the backend and sends; with its hot cache
off, as here, it does not hash; the fetcher stages every chunk and verifies each file's sha256
on its helper thread). Also measured once per run: sha256 over in-memory bytes on one core,
the ceiling of any path that verifies. The adapters are PEFT LoRA for a Llama-7B shape (hidden
4096, 32 layers, all seven projections), fp16, their rank chosen to come close to the sizes
asked for. Label: live on CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import struct
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from clients.bench._io import write_json

SIZES_MB = (64, 512)
QUICK_SIZES_MB = (4,)
HIDDEN, LAYERS, INTER, HEADS = 4096, 32, 11008, 32
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHUNK_BYTES = 1 << 20
READAHEAD = 4


def _dims(module: str) -> tuple[int, int]:
    if module in ("gate_proj", "up_proj"):
        return HIDDEN, INTER
    if module == "down_proj":
        return INTER, HIDDEN
    return HIDDEN, HIDDEN


def bytes_per_rank() -> int:
    return LAYERS * sum(2 * (i + o) for i, o in map(_dims, MODULES))  # fp16 A [r, in] + B [out, r]


def write_base_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 32000, "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}))
    return folder


def adapter_files(target_bytes: int) -> tuple[int, bytes, bytes]:
    """(rank, adapter_config.json, adapter_model.safetensors) of about target_bytes."""
    rank = max(1, min(256, round(target_bytes / bytes_per_rank())))
    header, off = {}, 0
    for layer in range(LAYERS):
        for m in MODULES:
            parent = "mlp" if m in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            i, o = _dims(m)
            for half, shape in (("A", [rank, i]), ("B", [o, rank])):
                n = shape[0] * shape[1] * 2
                header[f"base_model.model.model.layers.{layer}.{parent}.{m}.lora_{half}.weight"] = {
                    "dtype": "F16", "shape": shape, "data_offsets": [off, off + n]}
                off += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    import numpy as np

    # finite fp16 weights (the store refuses NaN/Inf), 1 MiB of them repeated
    block = (np.random.default_rng(0).standard_normal(1 << 19) * 0.02).astype(np.float16).tobytes()
    data = (block * (off // len(block) + 1))[:off]
    config = json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
                         "target_modules": list(MODULES)}).encode()
    return rank, config, struct.pack("<Q", len(raw)) + raw + data


async def direct_read(backend, keys: list[tuple[str, int, str]], chunk: int,
                      helper: ThreadPoolExecutor | None = None) -> float:
    """Seconds to read every byte of the objects with ranged reads, READAHEAD in flight.

    With `helper`, each object is also sha256-verified as it arrives, on that one thread (hashlib
    drops the GIL), as a worker reading the backend itself would have to: the `direct + sha256`
    baseline. Without it nothing but the reads is timed (the `direct` baseline)."""
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    for key, size, sha in keys:
        pending: deque = deque()
        offsets = iter(range(0, size, chunk))
        h = hashlib.sha256() if helper is not None else None
        hashing: deque = deque()
        for o in offsets:
            pending.append(asyncio.ensure_future(backend.read(key, o, min(chunk, size - o))))
            if len(pending) >= READAHEAD:
                break
        got = 0
        while pending:
            data = await pending.popleft()
            got += len(data)
            for o in offsets:
                pending.append(asyncio.ensure_future(backend.read(key, o, min(chunk, size - o))))
                break
            if h is not None:   # in order: one update after the other on the single helper thread
                hashing.append(loop.run_in_executor(helper, h.update, data))
                if len(hashing) > READAHEAD:
                    await hashing.popleft()
        for f in hashing:
            await f
        assert got == size, (key, got, size)
        if h is not None and h.hexdigest() != sha:
            raise RuntimeError(f"{key}: sha256 mismatch on the direct read")
    return time.perf_counter() - t0


def sha256_one_core(nbytes: int = 256 << 20) -> float:
    """MB/s of hashlib.sha256 on one core, fed 1 MiB views of 64 MiB of random bytes: more than
    the CPU caches hold, as a streamed adapter is (one block hashed again and again would sit in
    cache and read faster). The ceiling of hashing alone for a fetcher that verifies."""
    data = memoryview(os.urandom(64 << 20))
    h = hashlib.sha256()
    t0 = time.perf_counter()
    for i in range(nbytes >> 20):
        o = (i << 20) % len(data)
        h.update(data[o:o + (1 << 20)])
    return nbytes / (time.perf_counter() - t0) / 1e6


async def grpc_fetch(fetcher, adapter_id: str) -> tuple[float, int]:
    """Seconds for the worker's fetcher to receive, stage and verify the adapter."""
    t0 = time.perf_counter()
    got = await fetcher.fetch(adapter_id)
    return time.perf_counter() - t0, got.stats.nbytes


def _start_store(args: list[str], work: Path, env: dict, chunk: int) -> tuple:
    import subprocess

    port_file = work / "store.port"
    port_file.unlink(missing_ok=True)
    log = open(work / "store.log", "ab")
    p = subprocess.Popen([sys.executable, "-m", "adapter_store.main", "--port", "0", "--port-file",
                          str(port_file), "--hot-cache-bytes", "0", "--chunk-bytes", str(chunk),
                          "--backend-requests-per-s", "10000", *args],
                         stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **env))
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise RuntimeError(f"adapter store did not start: {(work / 'store.log').read_text()[-1500:]}")
        time.sleep(0.05)
    return p, f"127.0.0.1:{int(port_file.read_text())}"


async def _bench_backend(kind: str, backend, store_args: list[str], env: dict, sizes: list[int],
                         work: Path, reps: int, chunk: int) -> dict:
    from clients.store_client import StoreClient
    from gpu_worker.adapter_fetcher import AdapterFetcher, RetryPolicy

    out = {}
    names = {}
    for size in sizes:
        rank, config, weights = adapter_files(size)
        name = f"bench-{size >> 20}mb"
        await backend.write(f"{name}/adapter_config.json", config)
        await backend.write(f"{name}/adapter_model.safetensors", weights)
        names[size] = (name, rank, len(config) + len(weights),
                       [(f"{name}/adapter_config.json", len(config), hashlib.sha256(config).hexdigest()),
                        (f"{name}/adapter_model.safetensors", len(weights),
                         hashlib.sha256(weights).hexdigest())])
        del weights
    proc, address = _start_store(store_args, work, env, chunk)
    # one channel for the run, as a worker keeps one to its store
    fetcher = AdapterFetcher(address, retry=RetryPolicy(deadline_s=600), chunk_bytes=chunk)
    helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-sha")
    try:
        async with StoreClient(address) as s:
            for size, (name, *_rest) in names.items():
                info = await s.show(name)   # hashes the files once, before any timing
                if not info.valid:
                    raise RuntimeError(f"bench adapter {name} invalid: {info.invalid_reason}")
        for size, (name, rank, total, keys) in names.items():
            runs: dict[str, list[float]] = {"grpc": [], "direct": [], "direct_sha256": []}
            for _ in range(reps):  # interleaved, so all three see the same page cache and load
                runs["direct"].append(total / await direct_read(backend, keys, chunk) / 1e6)
                runs["direct_sha256"].append(total / await direct_read(backend, keys, chunk, helper) / 1e6)
                secs, nbytes = await grpc_fetch(fetcher, name)
                assert nbytes == total
                runs["grpc"].append(total / secs / 1e6)
            g, d, dh = (max(runs[k]) for k in ("grpc", "direct", "direct_sha256"))
            out[str(total)] = {"grpc_MBps": round(g, 1), "direct_MBps": round(d, 1),
                               "ratio": round(g / d, 3), "direct_sha256_MBps": round(dh, 1),
                               "ratio_vs_direct_sha256": round(g / dh, 3), "rank": rank,
                               "runs_MBps": {k: [round(x, 1) for x in v] for k, v in runs.items()}}
            print(f"  {kind:<6} {total / 2**20:7.1f} MiB  grpc {g:8.1f} MB/s  direct {d:8.1f} MB/s  "
                  f"ratio {g / d:.2f}   direct+sha256 {dh:8.1f} MB/s  ratio {g / dh:.2f}", flush=True)
    finally:
        helper.shutdown()
        await fetcher.close()
        proc.terminate()
        proc.wait(20)
    return out


async def run_store_bench(sizes_mb: list[int], backends: list[str], reps: int,
                          chunk: int = CHUNK_BYTES) -> dict:
    from adapter_store.core.backends import LocalFolderBackend
    from adapter_store.s3_backend import S3Backend, S3Config
    from clients.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedFS, SeaweedUnavailable

    sizes = [mb << 20 for mb in sizes_mb]
    result: dict = {"label": "live on CPU", "chunk_bytes": chunk, "readahead": READAHEAD,
                    "reps": reps, "loadavg_start": os.getloadavg()[0],
                    "sha256_one_core_MBps": round(sha256_one_core(), 1), "backends": {}, "sizes": {}}
    print(f"  sha256 on one core (in memory): {result['sha256_one_core_MBps']:.0f} MB/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="chameleon-bench-store-") as tmp:
        work = Path(tmp)
        base = write_base_model(work / "base")
        if "local" in backends:
            folder = work / "adapters"
            folder.mkdir()
            result["backends"]["local"] = await _bench_backend(
                "local", LocalFolderBackend(folder), ["--adapters", str(folder), "--base-model", str(base)],
                {}, sizes, work, reps, chunk)
        if "s3" in backends:
            sw = SeaweedFS(work / "weed")
            try:
                sw.start()
            except SeaweedUnavailable as e:
                print(f"SeaweedFS cannot start, no S3 figures: {e}", file=sys.stderr)
                result["backends"]["s3"] = {"skipped": str(e)}
            else:
                try:
                    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
                    be = S3Backend(S3Config(bucket=sw.bucket, endpoint=sw.endpoint,
                                            access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY))
                    result["backends"]["s3"] = await _bench_backend(
                        "s3", be, [*sw.store_args(), "--base-model", str(base)], env, sizes, work,
                        reps, chunk)
                finally:
                    sw.stop()
    # the top-level `sizes` table is the local folder's (the default backend), else S3's
    first = next((b for b in result["backends"].values() if "skipped" not in b), {})
    result["sizes"] = {k: {m: v[m] for m in ("grpc_MBps", "direct_MBps", "ratio")}
                       for k, v in first.items()}
    result["loadavg_end"] = os.getloadavg()[0]
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="one 4 MB adapter (for tests)")
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=None,
                        help=f"adapter sizes in MB (default {' '.join(map(str, SIZES_MB))})")
    parser.add_argument("--backends", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    parser.add_argument("--reps", type=int, default=2, help="best of this many interleaved runs per size (every run is in the JSON)")
    parser.add_argument("--chunk-bytes", type=int, default=CHUNK_BYTES,
                        help=f"chunk size of the stream and of the direct reads (default {CHUNK_BYTES})")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")


def run(args: argparse.Namespace) -> int:
    sizes = args.sizes_mb or (list(QUICK_SIZES_MB) if args.quick else list(SIZES_MB))
    print("adapter streaming, store -> worker (live on CPU)")
    result = asyncio.run(run_store_bench(sizes, args.backends, max(1, args.reps), args.chunk_bytes))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
