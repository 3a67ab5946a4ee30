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
    s1 = tune(cfg, 2, storage, out, max_folds=1, progress=False, nested=False)
    assert s1["n_complete"] + s1["n_pruned"] == 2
    # simulate a killed process: a trial left RUNNING in the storage
    study = optuna.load_study(study_name="tune_tiny", storage=storage)
    study.ask()
    s2 = tune(cfg, 3, storage, out, max_folds=1, progress=False, nested=False)
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
    assert not (tmp_path / "o").exists()   # a refused config leaves no empty output folder behind


NESTED_YAML = YAML.replace("n_slices: 3", "n_slices: 4").replace("epochs: 3", "epochs: 2")


def _tune_nested(tmp_path, tag, shuffle=None):
    """Nested tune for outer test slice syn0 (2 trials, 1 inner fold), optionally with one
    slice's labels permuted; returns that study's trial values."""
    import numpy as np
    import spagraph.experiment.data as data_mod
    real = data_mod.load_slices

    def load(data, base=None):
        slices, groups = real(data, base)
        if shuffle is not None:
            a = slices[shuffle]
            a.obs["cancer"] = a.obs["cancer"].to_numpy()[np.random.default_rng(1).permutation(a.n_obs)]
        return slices, groups
    cfg = tmp_path / f"{tag}.yaml"
    cfg.write_text(NESTED_YAML)
    data_mod.load_slices = load
    try:
        s = tune(cfg, 2, f"sqlite:///{tmp_path}/{tag}.db", tmp_path / tag, max_folds=1, progress=False, outer=["syn0"])
    finally:
        data_mod.load_slices = real
    return s


def test_nested_tune_never_reads_the_outer_test_labels(tmp_path):
    base = _tune_nested(tmp_path, "base")
    study = base["outer"]["syn0"]
    assert base["nested"] and "syn0" not in study["slices"] and len(study["slices"]) == 3
    assert (tmp_path / "base" / "best_syn0.yaml").exists()
    # the outer test slice's labels shuffled: every trial value identical
    same = _tune_nested(tmp_path, "shuffled_outer", shuffle="syn0")
    assert same["outer"]["syn0"]["trial_values"] == study["trial_values"]
    # an inner slice's labels shuffled: the values move (so the check above can fail)
    moved = _tune_nested(tmp_path, "shuffled_inner", shuffle=study["slices"][1])
    assert moved["outer"]["syn0"]["trial_values"] != study["trial_values"]
