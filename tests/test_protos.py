import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_stubs_are_fresh():
    r = subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_check_detects_a_stale_stub(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", ROOT / "proto" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fake = tmp_path / "chameleon" / "v1"
    fake.mkdir(parents=True)
    for p in (ROOT / "proto" / "chameleon" / "v1").iterdir():
        fake.joinpath(p.name).write_bytes(p.read_bytes())
    monkeypatch.setattr(gen, "PROTO_ROOT", tmp_path)
    monkeypatch.setattr(gen, "PROTO_DIR", fake)
    assert gen.main(["--check"]) == 0
    stub = fake / "worker_pb2.py"
    stub.write_text(stub.read_text() + "\n# edited by hand\n")
    assert gen.main(["--check"]) == 1
