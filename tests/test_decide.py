"""Decisions: calibration, label-free prevalence, threshold rules, guard, inner-fold rule choice."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from spagraph.decide import decide, decide_rules, em_prior, fit_calibration, fit_state, reliability
from spagraph.decide.calibration import sigmoid
from spagraph.decide.prevalence import adjust_posteriors, adjusted_cut, mixture_prevalence
from spagraph.decide.rules import RULES, expected_f1_cut


def two_class(n, pi, rng, sep=3.0):
    """Scores whose logit is N(+-sep/2, 1) by class; returns (y, score)."""
    y = (rng.random(n) < pi).astype(int)
    z = np.where(y == 1, sep / 2, -sep / 2) + rng.standard_normal(n)
    return y, sigmoid(z)


def test_platt_map_is_monotone_and_recovers_a_known_distortion():
    rng = np.random.default_rng(0)
    y, s = two_class(4000, 0.4, rng)
    raw = sigmoid(0.5 * np.log(s / (1 - s)) - 1.0)          # a squashed, shifted score
    cal = fit_calibration(y, raw, slices=["v"])
    assert cal.kind == "platt" and cal.a > 0 and cal.fitted_on == ["v"]
    assert cal.a == pytest.approx(6.0, rel=0.1)            # true posterior logit = 6 * raw logit + 5.6
    grid = np.linspace(0.001, 0.999, 500)
    c = cal(grid)
    inner = (c[:-1] > 1e-9) & (c[1:] < 1 - 1e-9)             # strictly increasing until float saturation
    assert np.all(np.diff(c) >= 0) and np.all(np.diff(c)[inner] > 0) and inner.sum() > 100
    # calibrated: reliability close to the diagonal, much closer than the raw scores
    assert reliability(y, cal(raw))["ece"] < 0.03 < reliability(y, raw)["ece"]
    iso = fit_calibration(y, raw, kind="isotonic")
    assert np.all(np.diff(iso(grid)) >= 0)
    # a decreasing relation gives the identity map, never an inverted one
    inv = fit_calibration(1 - y, raw)
    assert inv.kind == "identity" and "not increasing" in inv.note


def test_calibration_depends_on_validation_labels_only():
    rng = np.random.default_rng(1)
    vy, vs = two_class(800, 0.3, rng)
    st = fit_state(vy, vs, slices=["val"])
    st2 = fit_state(vy, vs, slices=["val"])
    assert st.to_dict() == st2.to_dict()
    # other validation labels -> another map (the test can fail)
    st3 = fit_state(rng.permutation(vy), vs, slices=["val"])
    assert st3.to_dict()["calibration"] != st.to_dict()["calibration"]


@pytest.mark.parametrize("pi", [0.15, 0.5, 0.85])
def test_em_recovers_a_known_prior(pi):
    """Posteriors calibrated under a training prior of 0.4 on a target slice whose prior is pi."""
    rng = np.random.default_rng(2)
    pi0 = 0.4
    y = (rng.random(6000) < pi).astype(int)
    z = np.where(y == 1, 1.5, -1.5) + rng.standard_normal(6000)
    post = sigmoid(np.log(pi0 / (1 - pi0)) + 3.0 * z)        # exact posterior under prior pi0 (LLR = 3z)
    est = em_prior(post, pi0)
    assert est["converged"] and est["prevalence"] == pytest.approx(y.mean(), abs=0.02)
    assert mixture_prevalence(post) == pytest.approx(y.mean(), abs=0.1)     # the comparison estimate: looser


def test_adjusted_cut_matches_adjusted_posteriors():
    p = np.linspace(0.01, 0.99, 99)
    for pi0, pi in ((0.3, 0.7), (0.6, 0.1), (0.5, 0.5)):
        t = adjusted_cut(pi0, pi)
        q = adjust_posteriors(p, pi0, pi)
        assert np.array_equal(q >= 0.5 - 1e-12, p >= t - 1e-12)
    assert adjusted_cut(0.5, 0.5) == pytest.approx(0.5)


def test_expected_f1_cut_is_best_on_perfect_posteriors():
    p = np.r_[np.full(30, 0.95), np.full(70, 0.05)]
    assert expected_f1_cut(p, p) == pytest.approx(0.95)


def test_every_rule_runs_and_prior_aware_rules_follow_the_prevalence():
    rng = np.random.default_rng(3)
    vy, vs = two_class(1000, 0.5, rng)
    st = fit_state(vy, vs, slices=["v"])
    for pi in (0.2, 0.8):
        ty, ts = two_class(1500, pi, rng)
        sd = decide_rules(ts, st, RULES)
        assert set(sd.rules) == set(RULES)
        assert sd.prevalence == pytest.approx(ty.mean(), abs=0.05)
        for r in ("prior_adjusted", "expected_f1", "prevalence_quantile"):
            f1 = 2 * (sd.rules[r].pred & ty).sum() / (sd.rules[r].pred.sum() + ty.sum())
            assert f1 > 0.8, (r, pi, f1)
    with pytest.raises(ValueError, match="threshold rule must be one of"):
        decide(ts, st, "nonsense")


def test_degenerate_flag_fires_and_falls_back():
    """Clearly bimodal slice, but the cut (fixed 1.0) sits above every score: nothing called."""
    rng = np.random.default_rng(4)
    vy, vs = two_class(500, 0.5, rng)
    st = fit_state(vy, vs)
    st.fixed = 1.0
    _, ts = two_class(800, 0.4, rng, sep=4.0)
    assert st.calibration(ts).max() < 1.0
    d, sd = decide(ts, st, "fixed")
    assert sd.bimodal["bimodal"]
    assert d.degenerate and any("predicted cancer fraction" in f for f in d.flags)
    assert d.fallback == "mixture" and d.used == "fallback:mixture"
    assert 0.2 < d.pred.mean() < 0.6
    # the same rule on a unimodal slice: extreme but not overridden
    flat = sigmoid(rng.normal(-2, 0.3, 800))
    d2, sd2 = decide(flat, st, "fixed")
    assert not sd2.bimodal["bimodal"] and not d2.degenerate and "extreme_unimodal" in d2.flags
    assert d2.fallback is None and d2.pred.sum() == 0
    # a sensible cut: no flag
    d3, _ = decide(ts, st, "mixture")
    assert d3.flags == []


def test_spatial_rule_smooths_isolated_calls():
    rng = np.random.default_rng(5)
    vy, vs = two_class(500, 0.5, rng)
    st = fit_state(vy, vs)
    n = 100
    x, y = np.divmod(np.arange(n), 10)
    z = np.where(x < 5, 2.5, -2.5)
    z[(x == 8) & (y == 8)] = 2.5                       # one isolated cancer-like spot
    edges = [(i, j) for i in range(n) for j in range(n) if abs(x[i] - x[j]) + abs(y[i] - y[j]) == 1]
    ei = np.array(edges).T
    sd = decide_rules(sigmoid(z), st, ["prior_adjusted", "spatial"], edge_index=ei)
    assert sd.rules["prior_adjusted"].pred[88] == 1 and sd.rules["spatial"].pred[88] == 0
    assert (sd.rules["spatial"].pred[x < 4] == 1).all()


# ---------------------------------------------------------------- the runner's decision step


def _graph(name, n, y, rng):
    side = int(np.ceil(np.sqrt(n)))
    xy = np.c_[np.arange(n) // side, np.arange(n) % side]
    d = np.abs(xy[:, None, :] - xy[None, :, :]).sum(-1)
    ei = torch.tensor(np.array(np.nonzero(d == 1)), dtype=torch.long)
    x = torch.tensor(rng.standard_normal((n, 4)) + 1.2 * np.nan_to_num(y)[:, None], dtype=torch.float32)
    return SimpleNamespace(name=name, y=torch.tensor(y, dtype=torch.float32), spot_ids=[f"{name}_{i}" for i in range(n)],
                           edge_index_0=ei, num_nodes=n, x=x)


def _cfg(method):
    return SimpleNamespace(threshold=SimpleNamespace(method=method, fixed=0.5, calibration="platt", prevalence="em"),
                           config_hash=lambda: "h", model=SimpleNamespace(linear_C=1.0, feature_smoothing=0.0))


@pytest.mark.parametrize("method", ["prior_adjusted", "expected_f1", "spatial", "mixture", "quantile_beta"])
def test_shuffling_test_labels_leaves_every_call_unchanged(method):
    from spagraph.decide.evaluate import score_fold
    from spagraph.experiment.data import Fold
    rng = np.random.default_rng(6)
    graphs, scores = {}, {}
    for name, pi in (("tr", 0.5), ("va", 0.3), ("te", 0.7)):
        y = (rng.random(144) < pi).astype(float)
        y[:5] = np.nan
        graphs[name] = _graph(name, 144, y, rng)
        scores[name] = sigmoid(np.where(np.nan_to_num(y) == 1, 1.2, -1.2) + rng.standard_normal(144))
    fold = Fold("f", ["tr"], ["va"], ["te"])
    rows1, p1 = score_fold(_cfg(method), graphs, fold, 0, scores)
    yt = graphs["te"].y.numpy()
    lab = ~np.isnan(yt)
    shuffled = yt.copy()
    shuffled[lab] = rng.permutation(yt[lab])
    graphs["te"].y = torch.tensor(shuffled)
    rows2, p2 = score_fold(_cfg(method), graphs, fold, 0, scores)
    assert np.array_equal(p1["pred"].to_numpy(), p2["pred"].to_numpy())
    assert np.array_equal(p1["score"].to_numpy(), p2["score"].to_numpy())
    r1, r2 = rows1[0], rows2[0]
    for k in ("threshold", "threshold_method", "flags", "prevalence_em", "prevalence_mixture", "calibration", "rule"):
        assert r1[k] == r2[k], k
    for rule in RULES:
        assert r1["rules"][rule]["threshold"] == r2["rules"][rule]["threshold"]
        assert r1["rules"][rule]["pred_fraction"] == r2["rules"][rule]["pred_fraction"]
    # but the metrics do see the labels (the test can fail)
    assert r1["true_fraction"] == r2["true_fraction"] and r1["f1"] != r2["f1"]
    # changing the validation labels changes the calibration
    graphs["va"].y = torch.tensor(1 - np.nan_to_num(graphs["va"].y.numpy()))
    rows3, _ = score_fold(_cfg(method), graphs, fold, 0, scores)
    assert rows3[0]["calibration"] != r1["calibration"]


# ---------------------------------------------------------------- slice-relative calibration


def test_relative_calibration_ignores_a_shift_of_the_slice_scores():
    """The relative map sees each slice through its own mixture crossing and spread: an increasing
    affine map of one slice's log-odds (a batch effect) leaves its calibrated probabilities as they
    were, where the plain Platt map moves them."""
    from spagraph.decide.calibration import fit_relative, logit
    rng = np.random.default_rng(7)
    groups = [two_class(600, pi, rng) for pi in (0.3, 0.5, 0.7)]
    cal = fit_relative(groups, ["a", "b", "c"])
    platt = fit_calibration(*groups[0])
    assert cal.kind == "relative" and cal.a > 0 and cal.fitted_on == ["a", "b", "c"]
    assert cal.prior == pytest.approx(np.mean(np.concatenate([g[0] for g in groups])))
    ty, ts = two_class(800, 0.4, rng)
    shifted = sigmoid(1.7 * logit(ts) + 2.0)
    assert np.allclose(cal(ts), cal(shifted), atol=1e-6)
    assert not np.allclose(platt(ts), platt(shifted), atol=1e-2)
    # increasing within a slice, and calibrated on a slice like the fitting ones
    o = np.argsort(ts)
    assert np.all(np.diff(cal(ts)[o]) >= -1e-12)
    assert reliability(ty, cal(shifted))["ece"] < 0.06 < reliability(ty, platt(shifted))["ece"]
    # rows of a 2-D array are slices of their own (dropout passes)
    both = cal(np.stack([ts, shifted]))
    assert both.shape == (2, len(ts)) and np.allclose(both[0], both[1], atol=1e-6)
    with pytest.raises(ValueError, match="labels but"):
        fit_relative([(ty[:5], ts)])


def test_relative_within_spread_keeps_confident_negatives_low():
    """On a slice whose two components are far apart, the total spread pulls every spot's relative
    log-odds towards the crossing point (no spot confidently healthy); the within-component spread
    does not. Both stay shift/scale invariant and increasing."""
    from spagraph.decide.calibration import Calibration, fit_relative, logit, relative_logit
    rng = np.random.default_rng(5)
    groups = [two_class(600, pi, rng, sep=6.0) for pi in (0.3, 0.5, 0.7)]
    tot = fit_relative(groups, ["a", "b", "c"])
    win = fit_relative(groups, ["a", "b", "c"], spread="within")
    assert (tot.spread, win.spread) == ("total", "within")
    y, s = two_class(800, 0.3, rng, sep=6.0)
    neg = y == 0
    assert np.median(win(s)[neg]) < np.median(tot(s)[neg])
    assert reliability(y, win(s))["ece"] <= reliability(y, tot(s))["ece"] + 0.01
    shifted = sigmoid(2.0 * logit(s) - 1.0)
    np.testing.assert_allclose(win(shifted), win(s), atol=1e-6)
    o = np.argsort(s)
    assert np.all(np.diff(win(s)[o]) >= -1e-12)
    assert Calibration.from_dict(win.to_dict()) == win
    assert Calibration.from_dict({k: v for k, v in tot.to_dict().items() if k != "spread"}).spread == "total"
    with pytest.raises(ValueError, match="spread"):
        relative_logit(s, "median")


def _stand_in(cfg, train, seed=0):
    """A fast inner scorer for tests: logistic regression on the toy graphs' features."""
    from sklearn.linear_model import LogisticRegression
    X = np.concatenate([g.x.numpy()[~np.isnan(g.y.numpy())] for g in train])
    y = np.concatenate([g.y.numpy()[~np.isnan(g.y.numpy())] for g in train]).astype(int)
    clf = LogisticRegression().fit(X, y)
    return lambda g: clf.predict_proba(g.x.numpy())[:, 1]


def test_relative_calibration_uses_cross_fitted_training_slices_never_the_test_slice(monkeypatch):
    import spagraph.decide.choose as choose
    from spagraph.decide.choose import _CACHE, inner_scores
    from spagraph.decide.evaluate import score_fold
    from spagraph.experiment.data import Fold
    rng = np.random.default_rng(8)
    graphs, scores = {}, {}
    names = {"t1": 0.3, "t2": 0.6, "t3": 0.5, "t4": 0.4, "va": 0.5, "te": 0.7}
    for name, pi in names.items():
        y = (rng.random(144) < pi).astype(float)
        y[:4] = np.nan
        graphs[name] = _graph(name, 144, y, rng)
        scores[name] = sigmoid(np.where(np.nan_to_num(y) == 1, 1.0, -1.0) + rng.standard_normal(144)
                               + (1.5 if name == "te" else 0.0))
    monkeypatch.setattr(choose, "_inner_scorer", _stand_in)
    fold = Fold("f", ["t1", "t2", "t3", "t4"], ["va"], ["te"])
    cfg = _cfg("auto")
    cfg.threshold.calibration = "relative"
    _CACHE.clear()
    inner = inner_scores(cfg, graphs, fold)
    assert set(inner) == {"t1", "t2", "t3", "t4", "va"}             # never the test slice
    rows1, p1 = score_fold(cfg, graphs, fold, 0, scores)
    cal = rows1[0]["calibration"]
    assert cal["kind"] == "relative" and cal["fitted_on"][0] == "va"
    assert {f"{n} (cross-fitted)" for n in ("t1", "t2", "t3", "t4")} <= set(cal["fitted_on"])
    assert "te" not in {n.split()[0] for n in cal["fitted_on"]}
    # shuffling the test slice's labels changes no call
    yt = graphs["te"].y.numpy().copy()
    lab = ~np.isnan(yt)
    yt[lab] = rng.permutation(yt[lab])
    graphs["te"].y = torch.tensor(yt)
    _CACHE.clear()
    rows2, p2 = score_fold(cfg, graphs, fold, 0, scores)
    assert np.array_equal(p1["pred"].to_numpy(), p2["pred"].to_numpy())
    assert rows2[0]["calibration"] == cal and rows2[0]["rule"] == rows1[0]["rule"]
    # but a training slice's labels do enter the calibration (through its cross-fitted scores)
    graphs["t2"].y = torch.tensor(1 - np.nan_to_num(graphs["t2"].y.numpy()))
    _CACHE.clear()
    rows3, _ = score_fold(cfg, graphs, fold, 0, scores)
    assert rows3[0]["calibration"] != cal
