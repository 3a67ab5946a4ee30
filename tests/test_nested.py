"""Nested leave-one-slice-out: the outer test slice's labels never move a choice or a score."""
import json

import numpy as np
import pandas as pd
import pytest

from spagraph.experiment.config import ConfigError, load_config
from spagraph.experiment.nested import grid_points
from spagraph.experiment.runner import run_experiment

NESTED = """\
name: nested_tiny
data:
  sources:
    - {reader: synthetic, n_slices: 4, n_spots: 200, seed: 4, with_image: false}
embed: {image_encoder: null, gene_encoder: pca, settings: {n_pcs: 8, n_hvg: 100}}
graph: {scales: [1.0, 2.0], n_dir_bins: 4, feature_knn: 6}
model: {hidden: 8, heads: 2, linear_path: true, linear_C: 0.01, feature_smoothing: 0.3, contrastive_weight: 0}
train: {epochs: 2, patience: 5, seeds: [0]}
protocol: {kind: loso}
track: {mode: disabled}
nested:
  grid: {model.linear_C: [0.001, 1.0], embed.settings.n_pcs: [4, 8]}
  choose_deep: true
"""


def _run(tmp_path, tag, shuffle=None):
    import spagraph.experiment.data as data_mod
    real = data_mod.load_slices

    def load(data, base=None):
        slices, groups = real(data, base)
        if shuffle is not None:
            a = slices[shuffle]
            a.obs["cancer"] = pd.array(np.random.default_rng(2).permutation(a.obs["cancer"].to_numpy()), dtype="Int8")
        return slices, groups
    p = tmp_path / "n.yaml"
    p.write_text(NESTED)
    data_mod.load_slices = load
    try:
        m = run_experiment(load_config(p), tmp_path / tag, progress=False, write_maps=False)
    finally:
        data_mod.load_slices = real
    pred = pd.read_csv(tmp_path / tag / "predictions.csv", dtype={"spot": str})
    choices = {f.stem: json.loads(f.read_text()) for f in (tmp_path / tag / "nested").glob("*.json")}
    return m, pred, choices


def test_outer_test_labels_never_move_its_choices_or_scores(tmp_path):
    m, pred, choices = _run(tmp_path, "a")
    names = sorted(choices)
    assert len(names) == 4 and m["protocol"] == "loso (nested)"
    x = names[0]
    c = choices[x]
    assert x not in c["grid"][0]["inner_auc"] and len(c["grid"]) == 4 and "deep_inner_mean" in c
    assert all(r["nested_params"] == choices[r["slice"]]["params"] for r in m["per_slice"])
    # shuffle the labels of test slice x: its choices and its scores stay the same ...
    m2, pred2, choices2 = _run(tmp_path, "b", shuffle=x)
    for k in ("params", "grid", "deep", "prior_inner_mean", "deep_inner_mean"):
        assert choices2[x][k] == c[k], k
    sx = lambda p: p[p["slice"] == x].sort_values("spot")["score"].to_numpy()
    assert np.array_equal(sx(pred), sx(pred2))
    # ... while a fold that trains on x sees the change (so this test can fail)
    other = names[1]
    assert choices2[other]["grid"][0]["inner_auc"][x] != choices[other]["grid"][0]["inner_auc"][x]


def test_grid_points_and_bad_grid_key(tmp_path):
    assert grid_points({"a": [1, 2], "b": [3]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]
    assert grid_points({}) == [{}]
    p = tmp_path / "n.yaml"
    p.write_text(NESTED.replace("model.linear_C:", "model.no_such_key:"))
    with pytest.raises(ConfigError, match="no_such_key"):
        run_experiment(load_config(p), tmp_path / "bad", progress=False, write_maps=False)
