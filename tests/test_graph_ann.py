"""Approximate feature kNN above a size threshold: recall against exact search, determinism, no self."""
import numpy as np
import pytest

from spagraph.graph.neighbours import approx_knn, feature_knn_edges


def pca_like(n, d=20, seed=0):
    rng = np.random.default_rng(seed)
    lam = 1.0 / np.arange(1, d + 1)
    c = rng.normal(size=(15, d)) * np.sqrt(lam) * 2
    return c[rng.integers(0, 15, n)] + rng.normal(size=(n, d)) * np.sqrt(lam)


def test_ivf_recall_against_exact_and_determinism(one_thread):
    x = pca_like(6000)
    exact = feature_knn_edges(x, 10, method="exact")[0].reshape(-1, 10)
    approx = feature_knn_edges(x, 10, method="ivf")
    got = approx[0].reshape(-1, 10)
    assert approx.shape == (2, 60000) and (approx[1] == np.repeat(np.arange(6000), 10)).all()
    assert not (got == np.arange(6000)[:, None]).any(), "a spot is never its own neighbour"
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got)])
    assert recall >= 0.95, recall
    assert np.array_equal(approx, feature_knn_edges(x, 10, method="ivf"))
    # neighbours come back nearest first, like exact search
    d = ((x[got] - x[:, None]) ** 2).sum(2)
    assert (np.diff(d, axis=1) >= 0).all()


def test_auto_switches_to_approximate_above_threshold(one_thread):
    x = pca_like(3000, seed=1)
    assert np.array_equal(feature_knn_edges(x, 5, ann_threshold=10_000), feature_knn_edges(x, 5, method="exact"))
    assert np.array_equal(feature_knn_edges(x, 5, ann_threshold=1000), feature_knn_edges(x, 5, method="ivf"))


def test_tiny_input_and_bad_method():
    x = pca_like(12)
    got = approx_knn(x, 3)
    assert got.shape == (12, 3) and not (got == np.arange(12)[:, None]).any()
    with pytest.raises(ValueError, match="method"):
        feature_knn_edges(x, 3, method="annoy")


def test_probes_grow_with_cells_and_buy_recall(one_thread):
    """Many small cells (the regime of a 10^6-spot slice, here at 20k rows with 24-row cells):
    the default probe count is above the 8 of a few hundred cells, and each extra probe adds
    recall; per-row probing (the cells nearest the row, not its cell's centroid) at 64-row
    cells, ~300 of them, stays above 0.95."""
    from spagraph.graph.neighbours import default_probes, n_cells
    assert default_probes(n_cells(250_000)) == 8 and default_probes(n_cells(1_000_000)) == 16
    x = pca_like(20000, seed=2)
    exact = feature_knn_edges(x, 10, method="exact")[0].reshape(-1, 10)

    def recall(**kw):
        got = approx_knn(x, 10, **kw)
        assert not (got == np.arange(len(x))[:, None]).any()
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got)])

    assert recall(cell_size=64) >= 0.95
    few, more = recall(cell_size=24, n_probe=4), recall(cell_size=24)
    assert default_probes(n_cells(20000, 24)) > 8 and more > few + 0.05, (few, more)
