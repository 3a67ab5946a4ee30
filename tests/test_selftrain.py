"""Transductive self-training on the label-free test slice (spagraph/train/selftrain.py)."""
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from spagraph.graph import GraphSettings, build_slice_graph
from spagraph.nn import ModelSettings
from spagraph.train.adapt import strip_labels
from spagraph.train.fit import TrainSettings, fit, predict_scores
from spagraph.train.selftrain import consistency_loss, pseudo_labels, rank_map, self_train_scores

sys.path.insert(0, str(Path(__file__).parent))
from test_adapt import _shuffled_labels  # noqa: E402

MS = ModelSettings(hidden=8, heads=2, contrastive_weight=0.0, linear_path=True, linear_fit="prior", linear_C=0.01)
TS = TrainSettings(epochs=2, min_epochs=1, patience=5, lr=1e-3, self_train_rounds=2)   # self_train_* defaults
QUICK = TS.model_copy(update={"self_train_epochs": 10})   # for the properties that do not need a good fit


def _slice(seed: int, shortcut: bool, side: int = 20):
    """A hexagonal slice with two round tumour regions; gene feature 0 carries the label in every
    slice (+1 SD inside), feature 1 only where ``shortcut`` (a patient-specific marker, +1.5 SD);
    every feature has unit noise per spot, so the label is spatially coherent, the noise is not."""
    rng = np.random.default_rng(seed)
    n = side * side
    r, c = np.divmod(np.arange(n), side)
    pos = np.c_[c + 0.5 * (r % 2), r * np.sqrt(3) / 2] * 100.0
    centres = rng.uniform(0.3, 0.7, size=(2, 2)) * side * 100
    d = np.min(np.linalg.norm(pos[:, None, :] - centres[None], axis=2), axis=1)
    y = (d < side * 100 * 0.22).astype(int)
    emb = rng.normal(size=(n, 4)).astype(np.float32)
    emb[:, 0] += 1.0 * y
    if shortcut:
        emb[:, 1] += 1.5 * y
    a = ad.AnnData(np.zeros((n, 1), np.float32))
    a.obsm["spatial"] = pos
    a.obs["cancer"] = pd.array(y, dtype="Int8")
    a.obsm["gene_emb"] = emb
    return build_slice_graph(a, GraphSettings(scales=[1.0, 2.0], n_dir_bins=4), name=f"s{seed}")


@pytest.fixture(scope="module")
def cross_patient():
    """A model trained on slices whose marker (feature 1) does not carry over to the test slices."""
    return fit([_slice(0, True), _slice(1, True)], [_slice(2, True)], MS, TS, seed=0).model


def _auc(g, p):
    m = g.label_mask.numpy()
    return roc_auc_score(g.y.numpy()[m], p[m])


def test_rank_map_keeps_the_values_and_takes_the_order():
    v = np.array([0.1, 0.5, 0.9, 0.3])
    out = rank_map(np.array([3.0, 0.0, 1.0, 2.0]), v)
    assert np.array_equal(np.sort(out), np.sort(v)) and np.array_equal(out, [0.9, 0.1, 0.3, 0.5])


def test_pseudo_labels_name_both_classes_from_a_bimodal_slice_and_fall_back_on_a_flat_one():
    rng = np.random.default_rng(0)
    z = np.r_[rng.normal(-3, 0.5, 100), rng.normal(3, 0.5, 60)]
    empty = np.zeros((2, 0), dtype=int)
    lab, mask, how = pseudo_labels(z, empty, 0.9)
    assert how == "mixture" and mask.sum() > 140
    assert (lab[:100][mask[:100]] == 0).all() and (lab[100:][mask[100:]] == 1).all()
    lab, mask, how = pseudo_labels(np.r_[np.zeros(157), [5.0, 5.0, 5.0]], empty, 0.9)   # a 2 % component
    assert how == "quantile" and mask.sum() == 64 and lab[mask].sum() == 32


def test_consistency_loss_is_zero_on_agreeing_neighbours_only():
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    assert float(consistency_loss(torch.tensor([2.0, 2.0, 2.0]), ei)) == 0.0
    assert float(consistency_loss(torch.tensor([-5.0, 5.0, 5.0]), ei)) > 0.4
    assert float(consistency_loss(torch.tensor([-5.0, 5.0, 5.0]), ei, torch.tensor([False, True, True]))) == 0.0


def test_self_training_never_reads_the_slice_labels(cross_patient):
    t = _slice(5, False)
    with pytest.raises(ValueError, match="strip_labels"):
        self_train_scores(cross_patient, t, QUICK, seed=0)
    runs = [self_train_scores(cross_patient, strip_labels(g), QUICK, seed=0)
            for g in (t, _shuffled_labels(t, 1), _shuffled_labels(t, 2))]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])


def test_same_seed_same_scores_and_the_score_distribution_is_kept(cross_patient):
    t = strip_labels(_slice(5, False))
    a, b = self_train_scores(cross_patient, t, QUICK, seed=0), self_train_scores(cross_patient, t, QUICK, seed=0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, self_train_scores(cross_patient, t, QUICK, seed=1))
    p0 = predict_scores(cross_patient, t, QUICK)
    np.testing.assert_allclose(np.sort(a), np.sort(p0), rtol=1e-6)   # only the order moves (to 1 ulp)


def test_self_training_recovers_the_slice_structure_a_shifted_model_misses(cross_patient):
    """The cross-patient model leans on a marker that is noise in the test slices; on each test
    slice the label is spatially coherent, the marker's noise is not. Self-training from the
    model's confident spots (with the neighbour-agreement term) must raise the AUC on every slice
    and on average by > 0.05 (measured: 0.720 -> 0.855 and 0.736 -> 0.828; at 30 steps per round
    instead of 100 the gains are +0.03 / +0.01, without the consistency term 0.730 / 0.792); with
    blend 0 (the slice's own fit ignored) nothing changes."""
    gains = []
    for s in (5, 7):
        t = _slice(s, False)
        p0 = predict_scores(cross_patient, t, TS)
        p1 = self_train_scores(cross_patient, strip_labels(t), TS, seed=0)
        gains.append(_auc(t, p1) - _auc(t, p0))
        off = self_train_scores(cross_patient, strip_labels(t), QUICK.model_copy(update={"self_train_blend": 0.0}), seed=0)
        assert _auc(t, off) == pytest.approx(_auc(t, p0), abs=1e-12)
    assert min(gains) > 0.0 and np.mean(gains) > 0.05, gains


def test_runner_self_trains_the_test_slice_label_free_and_leaves_validation_alone():
    from spagraph.experiment.config import validate_config
    from spagraph.experiment.data import Fold
    from spagraph.experiment.runner import fit_predict
    base = {"data": {"sources": [{"reader": "synthetic"}]}, "embed": {"image_encoder": None},
            "model": {"hidden": 8, "heads": 2, "contrastive_weight": 0.0, "linear_path": True, "linear_fit": "prior"},
            "train": {"epochs": 2, "min_epochs": 1, "self_train_rounds": 1, "self_train_epochs": 20}}
    cfg = validate_config(base)
    with pytest.raises(ValueError, match="model_type 'spagraph'"):
        validate_config({**base, "model_type": "baseline", "baseline": {"kind": "logreg"}})
    off = validate_config({**base, "train": {"epochs": 2, "min_epochs": 1}})
    assert off.config_hash() == validate_config({**base, "train": {"epochs": 2, "min_epochs": 1,
                                                                  "self_train_epochs": 100}}).config_hash()
    fold = Fold("s3", ["s0", "s1"], ["s2"], ["s3"])
    graphs = {f"s{i}": _slice(i, i < 3) for i in range(4)}
    on, _ = fit_predict(cfg, graphs, fold, 0)
    plain, _ = fit_predict(off, graphs, fold, 0)
    assert np.array_equal(on["s2"], plain["s2"]) and not np.array_equal(on["s3"], plain["s3"])
    shuffled, _ = fit_predict(cfg, {**graphs, "s3": _shuffled_labels(graphs["s3"], 3)}, fold, 0)
    assert np.array_equal(on["s3"], shuffled["s3"])


def test_predict_on_a_new_slide_self_trains_without_its_labels(tmp_path, monkeypatch):
    """``spagraph predict`` (predict_slice) self-trains when the saved model's config enables it;
    the slice it hands over carries no labels, and only the order of the scores moves."""
    import spagraph.train.selftrain as stmod
    from test_predict import ToyGeneEncoder, toy_slice
    from spagraph.experiment.config import validate_config
    from spagraph.experiment.data import Fold
    from spagraph.experiment.runner import model_settings, train_settings
    from spagraph.experiment.tune import apply_params
    from spagraph.train.saved import load_models, predict_slice, save_model
    cfg = validate_config({"name": "toy", "data": {"sources": [{"reader": "synthetic", "n_slices": 3}]},
                           "embed": {"image_encoder": None, "gene_encoder": "pca"},
                           "graph": {"scales": [1.0, 2.0], "n_dir_bins": 4},
                           "model": {"hidden": 8, "heads": 2, "contrastive_weight": 0.0, "linear_path": True},
                           "train": {"epochs": 2, "min_epochs": 1, "seeds": [0]},
                           "threshold": {"method": "val_youden"}, "track": {"mode": "disabled"}})
    slices = {n: toy_slice(i) for i, n in enumerate(["A", "B", "C"])}
    enc = ToyGeneEncoder.fit([slices["A"]])
    graphs = {}
    for n, a in slices.items():
        a.obsm["gene_emb"] = enc.transform(a)
        graphs[n] = build_slice_graph(a, GraphSettings(scales=[1.0, 2.0], n_dir_bins=4), name=n)
    res = fit([graphs["A"]], [graphs["B"]], model_settings(cfg), train_settings(cfg), seed=0)
    save_model(res.model, cfg, graphs, Fold("C", ["A"], ["B"], ["C"]), tmp_path / "m", gene_encoder=enc, seed=0)
    plain = predict_slice(load_models(tmp_path / "m"), toy_slice(11), name="new", n_mc=0)["table"]["score"].to_numpy()
    (m,) = load_models(tmp_path / "m")
    m.cfg = apply_params(m.cfg, {"train.self_train_rounds": 1, "train.self_train_epochs": 5})
    seen, real = {}, stmod.self_train_scores

    def spy(model, data, s, seed=0, info=None):
        seen["labelled"] = bool(data.label_mask.any())
        return real(model, data, s, seed, info)
    monkeypatch.setattr(stmod, "self_train_scores", spy)
    st = predict_slice([m], toy_slice(11), name="new", n_mc=0)["table"]["score"].to_numpy()
    assert seen == {"labelled": False}
    assert not np.array_equal(st, plain)
    np.testing.assert_allclose(np.sort(st), np.sort(plain), rtol=1e-6)
