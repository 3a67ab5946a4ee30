"""Regions, boundary evaluation and risk on hand-made grids with known answers."""
import numpy as np
import pandas as pd
import pytest

from spagraph.regions import (REGIONS, assign_regions, boundary_mask, boundary_scores, distance_to_other_class,
                              risk_table)


def grid(nx=10, ny=10, pitch=100.0):
    xx, yy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    return np.c_[xx.ravel(), yy.ravel()].astype(float) * pitch, xx.ravel(), yy.ravel()


def test_boundary_band_on_straight_interface():
    pos, x, _ = grid()
    cls = (x < 5).astype(float)                     # cancer on the left half
    b = boundary_mask(pos, cls, distance_pitches=1)
    assert set(np.unique(x[b])) == {4, 5} and b.sum() == 20
    b2 = boundary_mask(pos, cls, distance_pitches=2)
    assert set(np.unique(x[b2])) == {3, 4, 5, 6}
    # hops on the scale-1 graph give the same band on a square grid
    assert np.array_equal(boundary_mask(pos, cls, k_hops=1), b)
    assert np.array_equal(boundary_mask(pos, cls, k_hops=2), b2)


def test_assign_regions_categories_and_unknown_spots():
    pos, x, y = grid()
    pred = (x < 5).astype(float)
    pred[(x == 0) & (y == 0)] = np.nan
    r = assign_regions(pos, pred=pred)
    assert list(r.categories) == list(REGIONS)
    assert (np.asarray(r)[(x <= 3)][1:] == "tumour").all()
    assert (np.asarray(r)[x >= 6] == "healthy").all()
    assert (np.asarray(r)[(x == 4) | (x == 5)] == "boundary").all()
    assert pd.isna(r[0])                           # unknown spot: no region
    # from score + threshold, identical
    s = np.where(x < 5, 0.9, 0.1)
    r2 = assign_regions(pos, score=s, threshold=0.5)
    assert (np.asarray(r2)[1:] == np.asarray(r)[1:]).all()
    hr = np.zeros(len(x), bool); hr[-1] = True
    assert assign_regions(pos, pred=(x < 5), high_risk=hr)[-1] == "high_risk"


def test_assign_regions_on_graph_and_anndata():
    import anndata as ad
    from spagraph.graph import GraphSettings, build_slice_graph
    pos, x, _ = grid(8, 6, pitch=37.0)
    a = ad.AnnData(np.zeros((len(x), 3), np.float32))
    a.obsm["spatial"] = pos
    a.obsm["gene_emb"] = np.random.default_rng(0).normal(size=(len(x), 4)).astype(np.float32)
    g = build_slice_graph(a, GraphSettings(scales=[1.0, 2.0]))
    pred = (x < 3).astype(int)
    ra, rg = assign_regions(a, pred=pred), assign_regions(g, pred=pred, k_hops=1)
    assert (np.asarray(ra) == np.asarray(rg)).all()
    assert set(np.unique(x[np.asarray(ra) == "boundary"])) == {2, 3}


def test_single_class_has_no_boundary_and_bad_input_errors():
    pos, x, _ = grid(4, 4)
    assert not boundary_mask(pos, np.ones(16)).any()
    assert np.isinf(distance_to_other_class(pos, np.ones(16))).all()
    with pytest.raises(ValueError, match="0, 1 or NA"):
        assign_regions(pos, pred=np.full(16, 2.0))
    with pytest.raises(ValueError, match="shape"):
        assign_regions(pos, pred=np.ones(5))
    with pytest.raises(ValueError, match="needs pred"):
        assign_regions(pos)


def test_boundary_scores_known_shifts():
    pos, x, _ = grid()
    lab = (x < 5).astype(float)
    perfect = boundary_scores(pos, lab, lab)
    assert perfect["dice"] == 1.0 and perfect["f1_tol"] == 1.0 and perfect["n_ref"] == 20
    one = boundary_scores(pos, lab, (x < 6).astype(float))     # bands {4,5} vs {5,6}
    assert one["dice"] == pytest.approx(0.5) and one["f1_tol"] == pytest.approx(1.0)
    far = boundary_scores(pos, lab, (x < 8).astype(float))     # bands {4,5} vs {7,8}
    assert far["dice"] == 0.0 and far["f1_tol"] == 0.0
    none = boundary_scores(pos, lab, np.zeros(100))           # predicts no boundary at all
    assert none["dice"] == 0.0 and none["recall"] == 0.0 and none["precision"] is None
    # unlabelled spots are not scored
    lab2 = lab.copy(); lab2[x == 9] = np.nan
    p = lab.copy()
    assert boundary_scores(pos, lab2, p)["n"] == 90
    assert not np.isnan(p).any()                     # inputs are not modified


def test_risk_table_flags_confident_cancer_like_non_cancer_spots():
    pos, x, y = grid()
    lab = (x < 5).astype(float)
    runs = np.tile(np.where(x < 5, 0.9, 0.1), (5, 1))
    hot = (x == 8) & (y == 8)
    noisy = (x == 8) & (y == 2)
    runs[:, hot] = 0.8                               # cancer-like, certain
    runs[:, noisy] = np.array([0.1, 0.95, 0.2, 0.99, 0.9])[:, None]   # mean 0.628, but uncertain
    t = risk_table(pos, runs, threshold=0.5, label=lab, spot_ids=[f"s{i}" for i in range(100)], slice_name="G")
    assert list(t.columns[:4]) == ["slice", "spot", "score", "spread"]
    assert t["high_risk"].sum() == 1 and t.loc[hot, "high_risk"].all()
    assert not t.loc[noisy, "high_risk"].any()
    assert t.loc[hot, "nearest_tumour_distance"].iloc[0] == pytest.approx(4.0)   # x=8 -> x=4
    assert t.loc[lab == 1, "risk"].isna().all() and t.loc[hot, "risk"].iloc[0] == pytest.approx(0.8)
    # no labels: the prediction is the reference, so nothing can be high-risk at the same threshold
    t2 = risk_table(pos, runs, threshold=0.5)
    assert t2["reference"].iloc[0] == "prediction" and not t2["high_risk"].any()
    with pytest.raises(ValueError, match="scores must have shape"):
        risk_table(pos, np.zeros((2, 7)), 0.5)
