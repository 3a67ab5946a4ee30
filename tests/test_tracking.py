import os
import time
from pathlib import Path

import pytest

from spagraph.experiment.config import TrackConfig
from spagraph.experiment.tracking import NullTracker, WandbTracker, make_tracker


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_offline_run_writes_logged_keys(wandb_env, tmp_path):
    out = tmp_path / "run"
    tr = make_tracker(TrackConfig(mode="offline", project="t"), {"lr": 0.01, "name": "x"}, out, name="x")
    assert isinstance(tr, WandbTracker)
    tr.log({"fold/val_auc": 0.8, "fold/loss": 0.5}, step=0)
    tr.log_table("per_slice_metrics", [{"slice": "A1", "auc": 0.9}])
    f = tmp_path / "pred.csv"; f.write_text("slice,spot\nA1,1x1\n")
    tr.log_artifact(f, "preds")
    tr.summary({"mean_auc": 0.9})
    tr.finish()
    # W&B's service process may still be flushing the offline run file after finish()
    keys = (b"fold/val_auc", b"per_slice_metrics", b"mean_auc", b"lr")
    blob = b""
    for _ in range(120):
        runs = list((out / "wandb").rglob("run-*.wandb"))
        blob = b"".join(p.read_bytes() for p in runs)
        if all(k in blob for k in keys):
            break
        time.sleep(0.5)
    assert runs, "no offline run file written"
    for key in keys:
        assert key in blob, key


def test_disabled_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "run"
    tr = make_tracker(TrackConfig(mode="disabled"), {}, out)
    assert type(tr) is NullTracker
    tr.log({"a": 1}); tr.finish()
    assert not out.exists()
