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


@pytest.fixture(scope="module")
def one_thread():
    """On a shared 2-core machine, 2 intra-op threads on tiny tensors run far slower than 1."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def synthetic_slice():
    from spagraph.io.synthetic import make_synthetic_slice
    return make_synthetic_slice(n_spots=300, seed=0)
