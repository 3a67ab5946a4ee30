"""Baselines (spagraph.train.baselines) on small hand-made slice graphs: seconds in all."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spagraph.experiment.config import validate_config
from spagraph.graph import GraphSettings, build_slice_graph
from spagraph.train.baselines import KINDS, direction_bin_means, fit_baseline, neighbour_means

D_GENE, D_IMG = 12, 6


def make_graph(seed: int, n_side: int = 18, with_img: bool = True, signal: float = 1.5, name: str = "s"):
    """Square grid slice; a disc of cancer; gene dim 0 and image dim 0 carry a noisy signal."""
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(n_side), np.arange(n_side))
    pos = np.c_[xx.ravel(), yy.ravel()].astype(float) * 100.0
    n = len(pos)
    centre = pos[rng.integers(n)] * 0.5 + pos.mean(0) * 0.5
    y = (np.linalg.norm(pos - centre, axis=1) < 0.3 * n_side * 100).astype(int)
    gene = rng.normal(size=(n, D_GENE)).astype(np.float32)
    gene[:, 0] += signal * y
    a = ad.AnnData(X=np.zeros((n, 1), np.float32), obs=pd.DataFrame(index=[f"{name}_{i}" for i in range(n)]))
    a.obsm["spatial"] = pos
    a.obsm["gene_emb"] = gene
    if with_img:
        img = rng.normal(size=(n, D_IMG)).astype(np.float32)
        img[:, 0] += signal * y
        a.obsm["img_emb"] = img
    lab = pd.array(y, dtype="Int8")
    lab[rng.random(n) < 0.05] = pd.NA
    a.obs["cancer"] = lab
    return build_slice_graph(a, GraphSettings(scales=[1.0, 2.0], n_dir_bins=8), name=name)


def cfg_for(baseline: dict, epochs: int = 1):
    return validate_config({"model_type": "baseline", "baseline": baseline,
                            "data": {"sources": [{"reader": "synthetic"}]},
                            "train": {"epochs": epochs, "patience": 5, "min_epochs": 1, "seeds": [0]},
                            "track": {"mode": "disabled"}})


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def graphs():
    return [make_graph(i, name=f"s{i}") for i in range(4)]


def auc_of(g, s):
    from sklearn.metrics import roc_auc_score
    m = g.label_mask.numpy()
    return roc_auc_score(g.y.numpy()[m], s[m])


@pytest.mark.parametrize("kind", KINDS)
def test_each_baseline_one_epoch(kind, graphs):
    pred, info = fit_baseline(cfg_for({"kind": kind, "features": "both", "hidden": 16}), graphs[:2], graphs[2:3], 0)
    s = pred(graphs[3])
    assert s.shape == (graphs[3].num_nodes,) and s.dtype == np.float64
    assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all() and np.ptp(s) > 0
    assert info["kind"] == kind and info["modalities"] == ["gene", "img"]
    if kind != "logreg":
        assert len(info["history"]) == 1 and info["best_epoch"] == 0


@pytest.mark.parametrize("kind", ["logreg", "mlp", "gat", "spacancer_like"])
def test_deterministic_given_seed(kind, graphs):
    c = cfg_for({"kind": kind, "hidden": 16}, epochs=2)
    a = fit_baseline(c, graphs[:2], graphs[2:3], 7)[0](graphs[3])
    b = fit_baseline(c, graphs[:2], graphs[2:3], 7)[0](graphs[3])
    np.testing.assert_array_equal(a, b)
    if kind != "logreg":   # a different seed gives a different model
        other = fit_baseline(c, graphs[:2], graphs[2:3], 8)[0](graphs[3])
        assert not np.array_equal(a, other)


def test_baselines_learn_the_signal(graphs):
    """On a slice they never saw, each modality's logreg and spacancer_like rank cancer well."""
    for b, epochs in (({"kind": "logreg", "features": "gene"}, 1), ({"kind": "logreg", "features": "img"}, 1),
                      ({"kind": "logreg", "features": "both", "smooth": True}, 1),
                      ({"kind": "spacancer_like", "hidden": 16}, 15)):
        pred, _ = fit_baseline(cfg_for(b, epochs), graphs[:2], graphs[2:3], 0)
        assert auc_of(graphs[3], pred(graphs[3])) > 0.75, b
    # smoothing over the neighbourhood helps on a spatially coherent signal with weak per-spot signal
    weak = [make_graph(10 + i, signal=0.6, name=f"w{i}") for i in range(4)]
    plain = fit_baseline(cfg_for({"kind": "logreg", "features": "gene"}), weak[:3], [], 0)[0]
    smooth = fit_baseline(cfg_for({"kind": "logreg", "features": "gene", "smooth": True}), weak[:3], [], 0)[0]
    assert auc_of(weak[3], smooth(weak[3])) > auc_of(weak[3], plain(weak[3])) + 0.03


def test_genes_only_and_feature_checks():
    g = [make_graph(i, with_img=False, name=f"g{i}") for i in range(3)]
    pred, info = fit_baseline(cfg_for({"kind": "spacancer_like", "hidden": 16}), g[:2], g[2:], 0)
    assert info["modalities"] == ["gene"] and pred(g[2]).shape == (g[2].num_nodes,)
    with pytest.raises(ValueError, match="no img embedding"):
        fit_baseline(cfg_for({"kind": "logreg", "features": "img"}), g[:2], g[2:], 0)
    with pytest.raises(ValueError, match="baseline.kind"):
        fit_baseline(cfg_for({"kind": "svm"}), g[:2], g[2:], 0)
    with pytest.raises(ValueError, match="unknown key"):
        fit_baseline(cfg_for({"kind": "mlp", "hiden": 3}), g[:2], g[2:], 0)


def test_test_slice_never_changes_the_model(graphs):
    """The fitted predictor (incl. its standardisation) depends on train/val slices only."""
    c = cfg_for({"kind": "mlp", "hidden": 16}, epochs=2)
    pred_a = fit_baseline(c, graphs[:2], graphs[2:3], 0)[0]
    pred_b = fit_baseline(c, graphs[:2], graphs[2:3], 0)[0]
    shifted = graphs[3].clone()
    shifted.x_gene = shifted.x_gene * 100 + 5
    pred_b(shifted)          # scoring another slice first must not alter the predictor
    np.testing.assert_array_equal(pred_a(graphs[0]), pred_b(graphs[0]))


def test_neighbour_aggregates_match_loops(graphs):
    g = graphs[0]
    x = g.x_gene
    ei, ed = g.edge_index_0, g.edge_dir_0
    m = neighbour_means(x, ei, g.num_nodes)
    b = direction_bin_means(x, ei, ed, g.num_nodes, 8).view(g.num_nodes, 8, -1)
    for i in (0, 5, 100):
        nb = ei[0][ei[1] == i]
        np.testing.assert_allclose(m[i].numpy(), x[nb].mean(0).numpy(), rtol=1e-5, atol=1e-6)
        for k in range(8):
            sel = ei[0][(ei[1] == i) & (ed == k)]
            want = x[sel].mean(0).numpy() if len(sel) else np.zeros(x.shape[1])
            np.testing.assert_allclose(b[i, k].numpy(), want, rtol=1e-5, atol=1e-6)


def test_logreg_feature_smoothing_smooths_its_logits(graphs):
    """feature_smoothing: a = the plain logreg's logits smoothed over edge_index_feat; needs the edges."""
    import torch
    from spagraph.graph.neighbours import feature_knn_edges
    from spagraph.nn.feature_smoothing import FeatureGraphSmoothing
    gs = [g.clone() for g in graphs]
    for g in gs:
        g.edge_index_feat = torch.from_numpy(feature_knn_edges(g.x_gene.numpy(), 5))
    b = {"kind": "logreg", "features": "gene", "smooth": "disc", "standardise": False, "C": 0.1}
    plain = fit_baseline(cfg_for(b), gs[:2], gs[2:3], 0)[0]
    smooth = fit_baseline(cfg_for(b | {"feature_smoothing": 0.5}), gs[:2], gs[2:3], 0)[0]
    p = np.clip(plain(gs[3]), 1e-12, 1 - 1e-12)
    want = torch.sigmoid(FeatureGraphSmoothing(0.5)(torch.from_numpy(np.log(p / (1 - p))), gs[3].edge_index_feat))
    np.testing.assert_allclose(smooth(gs[3]), want.numpy(), atol=1e-8)
    assert not np.allclose(smooth(gs[3]), plain(gs[3]), atol=1e-3)
    with pytest.raises(ValueError, match="graph.feature_knn"):
        fit_baseline(cfg_for(b | {"feature_smoothing": 0.5}), graphs[:2], graphs[2:3], 0)
    with pytest.raises(ValueError, match="logreg' only"):
        fit_baseline(cfg_for({"kind": "mlp", "feature_smoothing": 0.5}), gs[:2], gs[2:3], 0)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        fit_baseline(cfg_for(b | {"feature_smoothing": 1.5}), gs[:2], gs[2:3], 0)
