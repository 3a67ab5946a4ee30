"""Label-free adaptation to the test slice (spagraph/train/adapt.py): never reads a test label."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from spagraph.graph import GraphSettings, build_slice_graph
from spagraph.nn import ModelSettings, SpaGraphNet
from spagraph.train.adapt import coral_loss, strip_labels
from spagraph.train.fit import TrainSettings, fit, predict_scores


def _graph(seed=0, n=150, shift=0.0):
    rng = np.random.default_rng(seed)
    r, c = np.divmod(np.arange(n), 15)
    pos = np.c_[c + 0.5 * (r % 2), r * np.sqrt(3) / 2] * 100.0
    a = ad.AnnData(np.zeros((n, 1), np.float32))
    a.obsm["spatial"] = pos
    emb = rng.normal(size=(n, 4)).astype(np.float32)
    a.obs["cancer"] = pd.array((emb[:, 0] + rng.normal(0, 0.5, n) > 0).astype(int), dtype="Int8")
    a.obsm["gene_emb"] = emb + np.float32(shift)
    return build_slice_graph(a, GraphSettings(scales=[1.0, 2.0], n_dir_bins=4), name=f"s{seed}")


def _shuffled_labels(g, seed):
    out = g.clone()
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(g.num_nodes))
    out.y, out.label_mask = g.y[perm], g.label_mask[perm]
    return out


def test_strip_labels_hides_every_label_and_leaves_the_slice_alone():
    g = _graph()
    s = strip_labels(g)
    assert torch.isnan(s.y).all() and not s.label_mask.any()
    assert s.x_gene is g.x_gene and g.label_mask.any() and not torch.isnan(g.y[g.label_mask]).any()


def test_coral_loss_is_zero_for_equal_covariances_and_grows_with_their_gap():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(400, 5, generator=gen)
    assert float(coral_loss(a, a + 3.0)) == pytest.approx(0.0, abs=1e-10)   # a mean shift alone: no CORAL term
    b = a * torch.tensor([1.0, 1.0, 1.0, 1.0, 4.0])
    src = a.clone().requires_grad_(True)
    loss = coral_loss(src, b)
    assert float(loss.detach()) > 0.1
    loss.backward()
    assert src.grad is not None and src.grad.abs().sum() > 0
    assert float(coral_loss(a[:1], b)) == 0.0


@pytest.mark.parametrize("adapt", [dict(coral_weight=1.0), dict(coral_weight=1.0, hidden_norm="slice")])
def test_adaptation_never_reads_test_labels_yet_changes_the_model(adapt):
    train, val, test = [_graph(0), _graph(1)], [_graph(2)], _graph(3, shift=0.7)
    ms = ModelSettings(hidden=8, heads=2, contrastive_weight=0.0, hidden_norm=adapt.get("hidden_norm", "layer"))
    ts = dict(epochs=3, min_epochs=3, patience=5, lr=1e-2)
    scores = []
    for t in (test, _shuffled_labels(test, 1), _shuffled_labels(test, 2)):
        res = fit(train, val, ms, TrainSettings(coral_weight=adapt["coral_weight"], **ts), seed=0,
                  target=[strip_labels(t)])
        scores.append(predict_scores(res.model, t))
    assert np.array_equal(scores[0], scores[1]) and np.array_equal(scores[0], scores[2])
    plain = fit(train, val, ms, TrainSettings(**ts), seed=0)
    assert not np.allclose(predict_scores(plain.model, test), scores[0])   # the term did act
    with pytest.raises(ValueError, match="strip_labels"):
        fit(train, val, ms, TrainSettings(coral_weight=1.0, **ts), seed=0, target=[test])


def test_slice_norm_removes_a_slice_wide_feature_shift_layer_norm_does_not():
    g = _graph(0)
    shifted = g.clone()
    shifted.x_gene = g.x_gene + torch.tensor([0.5, -1.0, 2.0, 0.3])
    for norm, same in (("slice", True), ("layer", False)):
        torch.manual_seed(0)
        model = SpaGraphNet(0, 4, 2, 4, ModelSettings(hidden=8, heads=2, contrastive_weight=0.0, hidden_norm=norm)).eval()
        with torch.no_grad():
            a, b = model(g)["logit"], model(shifted)["logit"]
        assert torch.allclose(a, b, atol=1e-5) == same


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_runner_hands_fit_only_the_label_free_test_slice(monkeypatch, weight):
    import spagraph.train.fit as fitmod
    from spagraph.experiment.config import validate_config
    from spagraph.experiment.data import Fold
    from spagraph.experiment.runner import fit_predict
    seen = {}
    real_fit = fitmod.fit

    def spy(*a, target=None, **k):
        seen["target"] = target
        return real_fit(*a, target=target, **k)
    monkeypatch.setattr(fitmod, "fit", spy)
    cfg = validate_config({"data": {"sources": [{"reader": "synthetic"}]}, "embed": {"image_encoder": None},
                           "model": {"hidden": 8, "heads": 2, "contrastive_weight": 0.0},
                           "train": {"epochs": 2, "min_epochs": 1, "coral_weight": weight}})
    graphs = {f"s{i}": _graph(i) for i in range(4)}
    fit_predict(cfg, graphs, Fold("s3", ["s0", "s1"], ["s2"], ["s3"]), 0)
    if weight == 0:
        assert seen["target"] is None
    else:
        (t,) = seen["target"]
        assert t.x_gene is graphs["s3"].x_gene and not t.label_mask.any() and torch.isnan(t.y).all()
        assert graphs["s3"].label_mask.any()   # the slice itself keeps its labels for scoring
