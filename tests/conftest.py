"""Shared fixtures. Tests run on 2 CPU cores: tiny models, tiny data, few epochs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data of ../shared/data (FSDD + MNIST); skips where it is absent."""
    if not (SHARED_DATA / "fsdd" / "recordings").is_dir() or not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (fsdd/recordings and mnist/); "
                    "it is provided beside the project checkout as ../shared/data")
    return SHARED_DATA
