"""Property tests (hypothesis): graph builder, threshold transfer, metrics."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from spagraph.graph import direction_bins, multiscale_edges, spot_pitch
from spagraph.graph.neighbours import RADIUS_TOLERANCE
from spagraph.train.metrics import binary_metrics
from spagraph.train.thresholds import quantile_matched_threshold

coord = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False).map(lambda v: round(v, 3))
clouds = st.lists(st.tuples(coord, coord), min_size=2, max_size=60).map(lambda l: np.array(l, dtype=float))
scale_sets = st.lists(st.floats(0.5, 4.0), min_size=1, max_size=3, unique=True)


def edge_set(e):
    return set(map(tuple, e["edge_index"].T.tolist()))


@settings(max_examples=80, deadline=None)
@given(clouds, scale_sets, st.integers(1, 16), st.booleans())
def test_multiscale_edges_properties(pos, scales, n_bins, shells):
    assume(len(np.unique(pos, axis=0)) >= 2)
    pitch = spot_pitch(pos)
    edges = multiscale_edges(pos, scales, n_bins, pitch=pitch, shells=shells)
    assert len(edges) == len(scales)
    prev, prev_r = set(), 0.0
    for s, e in zip(sorted(scales), edges):
        src, dst = e["edge_index"]
        es = edge_set(e)
        assert len(es) == len(src), "duplicate edges"
        assert not (src == dst).any(), "self loop"
        assert all((b, a) in es for a, b in es), "edge without its reverse"
        assert e["dir"].dtype.kind == "i" and ((e["dir"] >= 0) & (e["dir"] < n_bins)).all()
        r = s * RADIUS_TOLERANCE
        true_d = np.linalg.norm(pos[src] - pos[dst], axis=1) / pitch
        assert (true_d <= r + 1e-9).all()
        assert np.allclose(e["dist"], true_d, rtol=1e-5, atol=1e-5)
        if shells:
            assert (true_d > prev_r - 1e-9).all() and not (es & prev)
        else:
            assert prev <= es, "a larger disc must contain the smaller one"
            # and it holds every pair within its radius
            d_all = np.linalg.norm(pos[:, None] - pos[None], axis=2) / pitch
            want = {(i, j) for i, j in zip(*np.nonzero(d_all <= r - 1e-9)) if i != j}
            assert want <= es
        prev, prev_r = es, r


@settings(max_examples=80, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(0, 50), st.just(2)),
              elements=st.floats(-1e6, 1e6, allow_nan=False)), st.integers(1, 64))
def test_direction_bins_in_range(offset, n_bins):
    b = direction_bins(offset, n_bins)
    assert b.shape == (len(offset),) and ((b >= 0) & (b < n_bins)).all()


def test_direction_bins_orientation():
    off = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], float)
    assert direction_bins(off, 4).tolist() == [0, 1, 2, 3]


def test_spot_pitch_rejects_degenerate_clouds():
    for pos in (np.zeros((1, 2)), np.zeros((5, 2)), np.array([[0, 0], [np.nan, 1]])):
        with pytest.raises(ValueError):
            spot_pitch(pos)


score_lists = st.lists(st.floats(0, 1, allow_nan=False), min_size=0, max_size=80)
degenerate = st.sampled_from([[], [0.0] * 7, [1.0] * 7, [0.42] * 30, [0.0, 1.0], [0.0] * 20 + [1.0] * 20])


@settings(max_examples=100, deadline=None)
@given(st.one_of(score_lists, degenerate), st.one_of(score_lists, degenerate),
       st.floats(0, 1), st.floats(0, 1), st.sampled_from(["beta", "empirical"]))
def test_threshold_transfer_monotone_bounded_defined(val, tgt, t1, t2, method):
    v, t = np.array(val, float), np.array(tgt, float)
    lo, hi = min(t1, t2), max(t1, t2)
    a, used_a = quantile_matched_threshold(v, lo, t, method)
    b, used_b = quantile_matched_threshold(v, hi, t, method)
    for x in (a, b):
        assert np.isfinite(x) and 0.0 <= x <= 1.0
    assert used_a in ("beta", "empirical", "fallback_val_threshold")
    if used_a == used_b:   # monotone within one method (beta vs empirical fits may differ)
        assert a <= b + 1e-9


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 60), st.integers(0, 1), st.floats(0, 1), st.data())
def test_binary_metrics_never_gives_auc_for_one_class(n, cls, thr, data):
    y = np.full(n, cls)
    s = np.array(data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)), float)
    r = binary_metrics(y, s, thr)
    assert r["auc"] is None and r["ap"] is None and r["undefined"]
    for k in ("f1", "accuracy", "sensitivity", "specificity"):
        assert r[k] is None or 0.0 <= r[k] <= 1.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=2, max_size=60), st.floats(0, 1))
def test_binary_metrics_two_classes(pairs, thr):
    y = np.array([p[0] for p in pairs]); s = np.array([p[1] for p in pairs])
    assume(len(set(y)) == 2)
    r = binary_metrics(y, s, thr)
    if np.ptp(s) == 0:
        assert r["auc"] is None and any("collapsed" in u for u in r["undefined"])
    else:
        assert 0.0 <= r["auc"] <= 1.0 and 0.0 <= r["ap"] <= 1.0 and not r["undefined"]
        assert r["auc"] == pytest.approx(1 - binary_metrics(y, -s, thr)["auc"])   # -s keeps ties, 1-s may not
