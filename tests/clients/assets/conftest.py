"""Shared fixtures for the asset tests: the converted SmolLM2 folder (cached on disk) and a
small transformers Llama to load adapters onto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.assets.gguf_to_hf import convert_gguf_to_hf, find_smollm2_gguf
from clients.assets.hf_folder import CONFIG_FILE, WEIGHTS_FILE

REPO_ROOT = Path(__file__).resolve().parents[3]
# the same folder tests/conftest.py's smollm2_assets fixture converts into: one conversion per run
SMOLLM2_CACHE = REPO_ROOT / ".assets" / "test" / "smollm2-135m"


def _is_converted(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2 folder. Conversion takes ~10 s, so it is kept in <repo>/.assets
    (git-ignored) and reused by later sessions; a stale or broken cache fails the comparisons
    against transformers' own GGUF loader in test_gguf_to_hf.py."""
    if _is_converted(SMOLLM2_CACHE):
        return SMOLLM2_CACHE
    return convert_gguf_to_hf(find_smollm2_gguf(), SMOLLM2_CACHE)


@pytest.fixture(scope="session")
def smollm2_config(smollm2_dir: Path) -> dict:
    return json.loads((smollm2_dir / CONFIG_FILE).read_text())
