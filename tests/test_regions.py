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


def test_high_risk_on_an_unannotated_slice_with_a_risky_area():
    """No labels at all: the calls are the reference. Left half called tumour; on the right, a
    constructed risky patch (P = 0.35, below the cut 0.5 but above the risk level 0.25) and an
    uncertain spot (P = 0.15 whose upper bound 0.15 + 2 * 0.08 passes) are high-risk; the rest
    (P = 0.05, no spread) is not. Ranked by distance to the nearest predicted tumour."""
    pos, x, y = grid()
    prob = np.where(x < 4, 0.9, 0.05)
    patch = (x >= 5) & (x <= 6) & (y >= 4) & (y <= 5)
    far = (x == 9) & (y == 9)
    prob[patch] = 0.35
    prob[far] = 0.15
    spread = np.zeros(100)
    spread[far] = 0.08
    t = risk_table(pos, prob, threshold=0.5, spread=spread, risk_level=0.25, slice_name="new")
    assert list(t.columns[:4]) == ["slice", "spot", "score", "spread"]
    assert (t["reference"] == "prediction").all()
    hr = t["high_risk"].to_numpy()
    assert hr.sum() == 5 and hr[patch].all() and hr[far]
    assert not hr[(prob == 0.05)].any() and not hr[x < 4].any()
    # ranked by distance to the nearest predicted tumour (x = 3): the patch's x = 5 spots first
    ranks = t["risk_rank"].to_numpy(dtype=float, na_value=np.nan)
    assert set(ranks[patch & (x == 5)]) == {1, 2} and set(ranks[patch & (x == 6)]) == {3, 4} and ranks[far] == 5
    assert t.loc[far, "nearest_tumour_distance"].iloc[0] == pytest.approx(6.0)
    assert t.loc[x < 4, "risk"].isna().all() and t.loc[far, "risk"].iloc[0] == pytest.approx(0.31)
    # the same slice with the spread ignored beyond max_spread: the uncertain spot drops out
    t2 = risk_table(pos, prob, threshold=0.5, spread=spread, risk_level=0.25, max_spread=0.05)
    assert t2["high_risk"].sum() == 4
    # a higher risk level: nothing
    assert not risk_table(pos, prob, threshold=0.5, risk_level=0.5)["high_risk"].any()
    # labels, when given, are reported but never flag: the result is the same
    lab = (x < 4).astype(float)
    t3 = risk_table(pos, prob, threshold=0.5, spread=spread, risk_level=0.25, label=lab)
    assert np.array_equal(t3["high_risk"].to_numpy(), hr)
    with pytest.raises(ValueError, match="scores must have shape"):
        risk_table(pos, np.zeros((2, 7)), 0.5)


def test_tumour_regions_match_a_hand_made_grid():
    """Three tumour blobs on a 10 x 10 grid (4-neighbour graph): sizes, ids by size, mean
    probability and boundary length (edges leaving the region) counted by hand."""
    from spagraph.regions import tumour_regions
    pos, x, y = grid()
    pred = np.zeros(100)
    a = (x <= 2) & (y <= 2)                 # 3 x 3 square: 9 spots
    b = (x == 7) & (y >= 3) & (y <= 7)      # vertical bar: 5 spots
    c = (x == 9) & (y == 0)                 # corner spot: 1 spot
    d = (x == 4) & (y == 9)                 # single spot on the top edge
    pred[a | b | c | d] = 1
    prob = np.where(pred == 1, 0.8, 0.1)
    prob[b] = 0.6
    rid, tab = tumour_regions(pos, pred, prob)
    assert list(tab["size"]) == [9, 5, 1, 1]
    assert (rid[a] == 1).all() and (rid[b] == 2).all() and (rid[pred == 0] == 0).all()
    assert rid[c][0] != rid[d][0] and {rid[c][0], rid[d][0]} == {3, 4}
    assert tab.loc[0, "mean_probability"] == pytest.approx(0.8) and tab.loc[1, "mean_probability"] == pytest.approx(0.6)
    # square at the corner: 3 edges out on the right + 3 on top; bar: 5 * 2 sides + 2 ends
    assert list(tab["boundary_length"][:2]) == [6, 12]
    assert list(tab["boundary_spots"][:2]) == [5, 5]
    # corner spot: 2 neighbours; top-edge spot: 3
    assert sorted(tab["boundary_length"][2:]) == [2, 3]
    # joining the two single spots into the bar's column changes the components
    pred2 = pred.copy()
    pred2[(x == 7) & (y == 8)] = 1
    _, tab2 = tumour_regions(pos, pred2, prob)
    assert list(tab2["size"]) == [9, 6, 1, 1]
    none_id, none_tab = tumour_regions(pos, np.zeros(100))
    assert (none_id == 0).all() and none_tab.empty
