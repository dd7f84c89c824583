"""`chameleon bench store --quick` on the local folder: real store process, real gRPC."""
import json
import subprocess
import sys
from pathlib import Path

from clients.bench.store import adapter_files, bytes_per_rank


def test_adapter_sizes_follow_the_rank():
    rank, config, weights = adapter_files(64 << 20)
    assert json.loads(config)["r"] == rank
    assert abs(len(weights) - 64 * 2**20) <= bytes_per_rank()


def test_quick_store_bench_writes_the_json(tmp_path: Path):
    out = tmp_path / "store.json"
    r = subprocess.run([sys.executable, "-m", "clients.cli", "bench", "store", "--quick", "--reps", "1",
                        "--backends", "local", "--json", str(out)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    assert data["label"] == "live on CPU"
    (size, row), = data["sizes"].items()
    assert int(size) > 4 << 20
    assert row["grpc_MBps"] > 0 and row["direct_MBps"] > 0
    assert abs(row["ratio"] - row["grpc_MBps"] / row["direct_MBps"]) < 0.01
