"""Shared fixtures: the real her2st data (skipped when absent) and a small synthetic slice."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def her2st_root() -> Path:
    root = DATA / "her2st"
    if not (root / "counts").is_dir():
        pytest.skip(f"real her2st data not found at {root}")
    return root


@pytest.fixture(scope="session")
def her2st_unlabelled_root() -> Path:
    root = DATA / "her2st_unlabelled"
    if not (root / "counts").is_dir():
        pytest.skip(f"real her2st_unlabelled data not found at {root}")
    return root


@pytest.fixture
def synthetic_slice():
    from spagraph.io.synthetic import make_synthetic_slice
    return make_synthetic_slice(n_spots=300, seed=0)
