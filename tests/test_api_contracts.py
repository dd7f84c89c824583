"""The repository's contracts: import direction (import-linter) and the API's
conventions and compatibility (buf lint, buf breaking against the tagged API)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "api" / "chameleon-v1.binpb"
API_TAG = "api-v1"
ROOT_PACKAGES = ["clients", "scheduler_svc", "scheduler_svc/core", "gpu_worker", "gpu_worker/core",
                 "gpu_worker/core/memory", "adapter_store", "adapter_store/core", "chameleon_common",
                 "chameleon", "chameleon/v1", "sim"]


def lint_imports(cwd: Path, config: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--config", str(config), "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, env={"PYTHONPATH": str(pythonpath),
                                                               "PATH": "/usr/bin:/bin"})


def test_import_contracts_hold():
    # proto/ is the stubs' package root (see pyproject's packages.find)
    r = lint_imports(ROOT, ROOT / "pyproject.toml", ROOT / "proto")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def stand_in_tree(root: Path) -> Path:
    for pkg in ROOT_PACKAGES:
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").write_text("")
    config = root / "pyproject.toml"
    shutil.copyfile(ROOT / "pyproject.toml", config)
    return config


def test_stand_in_tree_keeps_the_contracts(tmp_path):
    assert lint_imports(tmp_path, stand_in_tree(tmp_path), tmp_path).returncode == 0


@pytest.mark.parametrize("path,line,contract", [
    ("adapter_store/core/bad.py", "import gpu_worker.core", "never imports the worker"),
    ("chameleon_common/bad.py", "import scheduler_svc", "services -> chameleon_common"),
    ("chameleon/v1/bad.py", "import chameleon_common", "services -> chameleon_common"),
    ("gpu_worker/core/bad.py", "import grpc", "core/ packages are pure"),
    ("scheduler_svc/core/bad.py", "import torch", "without torch"),
])
def test_import_contracts_catch_a_violation(tmp_path, path, line, contract):
    """The same contracts over a stand-in tree of empty packages: one bad import breaks it."""
    config = stand_in_tree(tmp_path)
    (tmp_path / path).write_text(line + "\n")
    r = lint_imports(tmp_path, config, tmp_path)
    assert r.returncode != 0
    assert contract in r.stdout and "BROKEN" in r.stdout


def buf_binary() -> str:
    local = ROOT / ".venv" / "tools" / "node_modules" / ".bin" / "buf"
    found = str(local) if local.exists() else shutil.which("buf")
    if found is None:
        pytest.skip("buf is not installed: `make test` installs npm @bufbuild/buf into .venv/tools "
                    "when npm is available")
    return found


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([buf_binary(), *args], cwd=cwd, capture_output=True, text=True)


def test_buf_lint():
    r = buf("lint")
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_breaking_change_against_the_tagged_api():
    r = buf("breaking", "--against", str(BASELINE))
    assert r.returncode == 0, r.stdout + r.stderr


def test_buf_breaking_catches_a_renamed_field(tmp_path):
    shutil.copytree(ROOT / "proto", tmp_path / "proto",
                    ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    shutil.copyfile(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    f = tmp_path / "proto" / "chameleon" / "v1" / "common.proto"
    f.write_text(f.read_text().replace("int32 max_tokens = 1;", "int32 max_new_tokens = 1;"))
    r = buf("breaking", "--against", str(BASELINE), cwd=tmp_path)
    assert r.returncode != 0 and "max_new_tokens" in r.stdout


def test_baseline_is_the_tagged_api(tmp_path):
    """api/ holds the descriptor image of the commit tagged api-v1 (the image is the baseline
    because tags do not travel with every clone; where the tag is present, the two must agree)."""
    r = subprocess.run(["git", "rev-parse", "-q", "--verify", f"refs/tags/{API_TAG}"], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"tag {API_TAG} is not in this clone")
    out = tmp_path / "tagged.binpb"
    r = buf("build", f".git#tag={API_TAG}", "--exclude-source-info", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == BASELINE.read_bytes()
