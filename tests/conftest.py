"""Shared fixtures. Test assets are built once into <repo>/.assets/test (gitignored)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / ".assets"


@pytest.fixture(scope="session")
def tiny_assets() -> dict:
    from clients.assets.demo import prepare_tiny

    return prepare_tiny(ASSETS / "test")
