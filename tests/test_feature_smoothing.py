"""Expression-neighbour edges and score smoothing over them (graph.feature_knn, model.feature_smoothing)."""
import numpy as np
import pandas as pd
import pytest
import torch
import anndata as ad

from spagraph.experiment.config import ConfigError, validate_config
from spagraph.graph import GraphSettings, build_slice_graph, feature_knn_edges
from spagraph.nn import ModelSettings, SpaGraphNet
from spagraph.nn.feature_smoothing import FeatureGraphSmoothing
from spagraph.train.fit import TrainSettings, predict_scores


def _slice(n=12, seed=0, d=5):
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(n), np.arange(n))
    a = ad.AnnData(np.zeros((n * n, 1), np.float32))
    a.obsm["spatial"] = np.c_[xx.ravel(), yy.ravel()].astype(float) * 100
    a.obsm["gene_emb"] = rng.normal(size=(n * n, d)).astype(np.float32)
    a.obs["cancer"] = pd.array((xx.ravel() > n / 2).astype(int), dtype="Int8")
    return a


def test_knn_edges_on_a_line():
    x = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
    e = feature_knn_edges(x, 2)
    assert e.shape == (2, 10) and e.dtype == np.int64
    nb = {int(d): sorted(e[0, e[1] == d].tolist()) for d in range(5)}
    assert nb == {0: [1, 2], 1: [0, 2], 2: [0, 1], 3: [1, 2], 4: [2, 3]}
    assert not (e[0] == e[1]).any()


def test_knn_edges_match_brute_force_low_and_high_dimension():
    rng = np.random.default_rng(0)
    for d in (3, 40):                                   # KD-tree and blockwise paths
        x = rng.normal(size=(60, d))
        e = feature_knn_edges(x, 5, chunk=7)             # blocks that do not divide n
        dist = np.linalg.norm(x[:, None] - x[None], axis=2)
        np.fill_diagonal(dist, np.inf)
        want = np.sort(np.argsort(dist, axis=1)[:, :5], axis=1)
        got = np.sort(e[0].reshape(60, 5), axis=1)
        assert np.array_equal(got, want) and np.array_equal(e[1], np.repeat(np.arange(60), 5))


def test_knn_edges_duplicates_small_slices_and_bad_input():
    for d in (2, 12):                                   # all identical: self must still be dropped
        e = feature_knn_edges(np.zeros((4, d)), 3)
        assert e.shape == (2, 12) and not (e[0] == e[1]).any()
    assert feature_knn_edges(np.ones((3, 2)) * np.arange(3)[:, None], 10).shape == (2, 6)   # k capped at n - 1
    assert feature_knn_edges(np.ones((1, 2)), 5).shape == (2, 0)
    with pytest.raises(ValueError, match="NaN"):
        feature_knn_edges(np.array([[0.0], [np.nan]]), 1)
    with pytest.raises(ValueError, match="at least 1"):
        feature_knn_edges(np.ones((3, 2)), 0)


def test_graph_gets_feature_edges_only_when_asked():
    a = _slice()
    assert "edge_index_feat" not in build_slice_graph(a, GraphSettings(scales=[1.0, 2.0], n_dir_bins=8))
    g = build_slice_graph(a, GraphSettings(scales=[1.0, 2.0], n_dir_bins=8, feature_knn=6))
    assert np.array_equal(g.edge_index_feat.numpy(), feature_knn_edges(a.obsm["gene_emb"], 6))
    del a.obsm["gene_emb"]
    a.obsm["img_emb"] = np.random.default_rng(1).normal(size=(a.n_obs, 3)).astype(np.float32)
    g = build_slice_graph(a, GraphSettings(scales=[1.0], n_dir_bins=8, feature_knn=4))   # no genes: image neighbours
    assert np.array_equal(g.edge_index_feat.numpy(), feature_knn_edges(a.obsm["img_emb"], 4))


def _slow_smoothing(z, edge_index, alpha, steps):
    n = len(z)
    nbrs = [edge_index[0][edge_index[1] == i] for i in range(n)]
    out = z.copy()
    for _ in range(steps):
        new = z.copy()
        for i in range(n):
            if len(nbrs[i]):
                new[i] = (1 - alpha) * z[i] + alpha * out[nbrs[i]].mean()
        out = new
    return out


@pytest.mark.parametrize("alpha,steps", [(0.5, 1), (0.3, 4), (0.9, 2)])
def test_smoothing_matches_slow_reference(alpha, steps):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 3))
    e = feature_knn_edges(x, 4)
    e = e[:, e[1] != 7]                                 # spot 7 has no neighbours: keeps its score
    z = rng.normal(size=30)
    got = FeatureGraphSmoothing(alpha, steps)(torch.tensor(z), torch.from_numpy(e)).numpy()
    np.testing.assert_allclose(got, _slow_smoothing(z, e, alpha, steps), atol=1e-12)
    assert got[7] == z[7]


def test_smoothing_limits():
    e = torch.from_numpy(feature_knn_edges(np.random.default_rng(3).normal(size=(20, 2)), 3))
    z = torch.randn(20, dtype=torch.float64)
    assert torch.equal(FeatureGraphSmoothing(0.0)(z, e), z)
    const = torch.full((20,), 1.7, dtype=torch.float64)
    torch.testing.assert_close(FeatureGraphSmoothing(0.8, 5)(const, e), const)
    # many steps reach the fixed point z* = (1 - a) z + a P z
    a = 0.6
    P = torch.zeros(20, 20, dtype=torch.float64)
    P[e[1], e[0]] = 1.0 / 3
    fixed = torch.linalg.solve(torch.eye(20, dtype=torch.float64) - a * P, (1 - a) * z)
    torch.testing.assert_close(FeatureGraphSmoothing(a, 200)(z, e), fixed)
    with pytest.raises(ValueError):
        FeatureGraphSmoothing(1.0)


def test_model_scores_are_smoothed_and_tiles_equal_full():
    g = build_slice_graph(_slice(n=20), GraphSettings(scales=[1.0, 2.0], n_dir_bins=8, feature_knn=5))
    torch.manual_seed(0)
    plain = SpaGraphNet(0, 5, 2, 8, ModelSettings(hidden=8, heads=2, linear_path=True)).eval()
    smooth = SpaGraphNet(0, 5, 2, 8, ModelSettings(hidden=8, heads=2, linear_path=True, feature_smoothing=0.5)).eval()
    smooth.load_state_dict(plain.state_dict())          # no parameters of its own: same weights
    torch.nn.init.normal_(plain.head[-1].weight); smooth.head[-1].weight.data.copy_(plain.head[-1].weight)
    with torch.no_grad():
        logit = plain(g)["logit"]
    want = torch.sigmoid(FeatureGraphSmoothing(0.5)(logit, g.edge_index_feat)).numpy()
    full = predict_scores(smooth, g, TrainSettings(batch_mode="full"))
    tiled = predict_scores(smooth, g, TrainSettings(batch_mode="tiles", tile_size=5.0))
    np.testing.assert_allclose(full, want, atol=1e-6)
    np.testing.assert_allclose(tiled, full, atol=1e-5)
    assert not np.allclose(full, predict_scores(plain, g, TrainSettings(batch_mode="full")), atol=1e-3)


def test_missing_feature_edges_are_a_clear_error():
    g = build_slice_graph(_slice(), GraphSettings(scales=[1.0], n_dir_bins=8), name="S1")
    m = SpaGraphNet(0, 5, 1, 8, ModelSettings(hidden=8, heads=2, feature_smoothing=0.5)).eval()
    with pytest.raises(ValueError, match="S1.*edge_index_feat"):
        predict_scores(m, g)


def test_config_requires_feature_edges_for_smoothing():
    base = {"data": {"sources": [{"reader": "synthetic"}]}, "model": {"feature_smoothing": 0.5}}
    with pytest.raises((ConfigError, ValueError), match="graph.feature_knn"):
        validate_config(base)
    cfg = validate_config(base | {"graph": {"feature_knn": 10}})
    assert cfg.graph.feature_knn == 10 and cfg.model.feature_smoothing == 0.5
