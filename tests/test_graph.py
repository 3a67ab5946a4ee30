import numpy as np
import pandas as pd
import pytest
import anndata as ad

from spagraph.graph import build_slice_graph, GraphSettings, direction_bins, multiscale_edges, spot_pitch


def grid(nx=5, ny=5, step=10.0):
    xx, yy = np.meshgrid(np.arange(nx), np.arange(ny))
    return np.c_[xx.ravel(), yy.ravel()].astype(float) * step


def test_pitch_of_square_grid():
    assert spot_pitch(grid(step=7.0)) == pytest.approx(7.0)


def test_direction_bins_cardinal_and_diagonal():
    off = np.array([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], float)
    assert direction_bins(off, 8).tolist() == list(range(8))
    # sector edges belong to the counter-clockwise sector: 45 deg -> bin 1, -45 deg -> bin 0
    assert direction_bins(off, 4).tolist() == [0, 1, 1, 2, 2, 3, 3, 0]


def test_square_grid_edges_at_scale_one_and_sqrt2():
    pos = grid()
    e1, e2 = multiscale_edges(pos, [1.0, 1.5], n_bins=8)
    # centre spot (index 12) has 4 neighbours at scale 1, 8 at scale 1.5
    assert (e1["edge_index"][1] == 12).sum() == 4
    assert (e2["edge_index"][1] == 12).sum() == 8
    # direction of each neighbour of the centre, seen from the centre
    m = e2["edge_index"][1] == 12
    src = e2["edge_index"][0][m]
    off = pos[src] - pos[12]
    expected = direction_bins(off, 8)
    assert sorted(e2["dir"][m].tolist()) == list(range(8))
    assert (e2["dir"][m] == expected).all()
    assert np.allclose(np.sort(e2["dist"][m]), [1, 1, 1, 1, np.sqrt(2)] + [np.sqrt(2)] * 3)


def test_edges_symmetric_no_self_loops():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 100, size=(300, 2))
    for e in multiscale_edges(pos, [1.0, 2.5], n_bins=8):
        s, d = e["edge_index"]
        assert not (s == d).any()
        fwd = set(zip(s.tolist(), d.tolist()))
        assert fwd == set(zip(d.tolist(), s.tolist()))


def test_shells_are_disjoint():
    pos = grid(9, 9)
    e = multiscale_edges(pos, [1.0, 2.0], shells=True)
    a = set(map(tuple, e[0]["edge_index"].T.tolist()))
    b = set(map(tuple, e[1]["edge_index"].T.tolist()))
    assert a and b and not (a & b)


def test_build_slice_graph_keys_and_labels():
    pos = grid(4, 4)
    a = ad.AnnData(np.zeros((16, 3), np.float32))
    a.obsm["spatial"] = pos
    a.obsm["gene_emb"] = np.ones((16, 5), np.float32)
    a.obs["cancer"] = pd.array([1, 0, None, 1] * 4, dtype="Int8")
    g = build_slice_graph(a, GraphSettings(scales=[1.0, 2.0]))
    assert g.x_gene.shape == (16, 5) and g.x_img.shape == (16, 0)
    assert g.has_gene.all() and not g.has_img.any()
    assert np.isnan(g.y[2].item()) and g.label_mask.sum() == 12
    assert g.num_scales == 2 and g.edge_index_1.shape[0] == 2
    assert g.pos.max() == pytest.approx(3.0)  # pitch units


def test_graph_rejects_nan_coordinates():
    a = ad.AnnData(np.zeros((3, 1), np.float32))
    a.obsm["spatial"] = np.array([[0, 0], [1, np.nan], [2, 0]], float)
    with pytest.raises(ValueError, match="NaN"):
        build_slice_graph(a)
