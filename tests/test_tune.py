"""Optuna search: runs, is resumable, writes a best.yaml that `run` accepts."""
import json
from pathlib import Path

import optuna
import pytest

from spagraph.experiment.config import load_config
from spagraph.experiment.tune import tune

YAML = """\
name: tune_tiny
data:
  sources:
    - {reader: synthetic, n_slices: 3, n_spots: 200, seed: 5, with_image: false}
embed: {image_encoder: null, gene_encoder: pca, settings: {n_pcs: 10, n_hvg: 100}}
graph: {scales: [1.0, 2.0]}
model: {hidden: 16, heads: 2}
train: {epochs: 3, patience: 10, seeds: [0]}
track: {mode: disabled}
search:
  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  model.dropout: {type: float, low: 0.0, high: 0.5}
"""


def test_tune_resumes_and_writes_runnable_best(tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(YAML)
    out = tmp_path / "tune"
    storage = f"sqlite:///{tmp_path}/study.db"
    s1 = tune(cfg, 2, storage, out, max_folds=1, progress=False)
    assert s1["n_complete"] + s1["n_pruned"] == 2
    # simulate a killed process: a trial left RUNNING in the storage
    study = optuna.load_study(study_name="tune_tiny", storage=storage)
    study.ask()
    s2 = tune(cfg, 3, storage, out, max_folds=1, progress=False)
    study = optuna.load_study(study_name="tune_tiny", storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1            # the interrupted trial
    assert sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states) == 3
    best = load_config(out / "best.yaml")
    assert best.train.lr == pytest.approx(s2["best_params"]["train.lr"])
    assert Path(best.data.sources[0].reader) and (out / "study.png").stat().st_size > 1000
    assert json.loads((out / "study.json").read_text())["objective"].startswith("mean best-epoch validation AUC")


def test_tune_without_search_block_fails(tmp_path):
    from spagraph.experiment.config import ConfigError
    cfg = tmp_path / "t.yaml"
    cfg.write_text(YAML.split("search:")[0])
    with pytest.raises(ConfigError, match="search"):
        tune(cfg, 1, f"sqlite:///{tmp_path}/s.db", tmp_path / "o", progress=False)
