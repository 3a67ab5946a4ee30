import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from spagraph.train.metrics import best_f1_threshold, binary_metrics
from spagraph.train.thresholds import quantile_matched_threshold


def test_best_f1_threshold_separable():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    t = best_f1_threshold(y, s)
    assert 0.3 < t <= 0.8
    assert binary_metrics(y, s, t)["f1"] == 1.0


def test_quantile_matching_moves_with_shift():
    rng = np.random.default_rng(0)
    val = rng.beta(2, 5, 2000)
    tgt = np.clip(val + 0.2, 0, 1)  # same distribution shifted upward
    thr, method = quantile_matched_threshold(val, 0.4, tgt, "empirical")
    assert method == "empirical"
    assert thr == pytest.approx(0.6, abs=0.03)
    thr_b, method_b = quantile_matched_threshold(val, 0.4, rng.beta(2, 5, 2000), "beta")
    assert method_b == "beta"
    assert thr_b == pytest.approx(0.4, abs=0.05)


def test_beta_fit_falls_back_on_degenerate_scores():
    thr, method = quantile_matched_threshold(np.full(50, 0.3), 0.3, np.full(40, 0.7), "beta")
    assert method == "empirical" and 0 <= thr <= 1


def test_metrics_undefined_cases_are_reported_not_averaged():
    r = binary_metrics(np.ones(10, int), np.linspace(0, 1, 10), 0.5)
    assert r["auc"] is None and any("one class" in u for u in r["undefined"])
    r = binary_metrics(np.array([0, 1, 0, 1]), np.full(4, 0.5), 0.5)
    assert any("collapsed" in u for u in r["undefined"]) and r["auc"] is None and r["ap"] is None


scores = st.lists(st.floats(0, 1, allow_nan=False), min_size=0, max_size=60)


@settings(max_examples=60, deadline=None)
@given(scores, scores, st.floats(0, 1), st.floats(0, 1), st.sampled_from(["beta", "empirical"]))
def test_quantile_matching_monotone_and_bounded(val, tgt, t1, t2, method):
    v, t = np.array(val), np.array(tgt)
    a, _ = quantile_matched_threshold(v, min(t1, t2), t, method)
    b, _ = quantile_matched_threshold(v, max(t1, t2), t, method)
    assert 0 <= a <= 1 and 0 <= b <= 1
    assert a <= b + 1e-9


def test_mixture_threshold_separates_two_populations_at_any_prevalence():
    from spagraph.train.thresholds import mixture_threshold
    rng = np.random.default_rng(0)
    for frac in (0.2, 0.8):
        n = 600
        pos = rng.random(n) < frac
        s = np.where(pos, rng.beta(8, 2, n), rng.beta(2, 8, n))
        thr, method = mixture_threshold(s, fallback=0.9)
        assert method == "mixture" and 0.3 < thr < 0.7
        f1 = binary_metrics(pos.astype(int), s, thr)["f1"]
        assert f1 > 0.9


def test_mixture_threshold_falls_back_on_one_population():
    from spagraph.train.thresholds import mixture_threshold
    thr, method = mixture_threshold(np.full(50, 0.4), fallback=0.33)
    assert (thr, method) == (0.33, "fallback_val_threshold")


def test_threshold_rules_name_every_method_once():
    from spagraph.train.thresholds import (THRESHOLD_METHODS, mixture_threshold, quantile_matched_threshold,
                                           threshold_rules)
    rng = np.random.default_rng(0)
    val = np.clip(np.r_[rng.beta(2, 5, 300), rng.beta(5, 2, 200)], 0, 1)
    target = np.clip(np.r_[rng.beta(2, 5, 100), rng.beta(5, 2, 400)], 0, 1)
    rules = threshold_rules(THRESHOLD_METHODS, val, 0.42, 0.37, target, fixed=0.6)
    assert set(rules) == set(THRESHOLD_METHODS)
    assert rules["val_f1"] == (0.42, "val_f1") and rules["val_youden"] == (0.37, "val_youden")
    assert rules["fixed"] == (0.6, "fixed")
    assert rules["mixture"] == mixture_threshold(target, 0.42)
    for m, kind in (("quantile_beta", "beta"), ("quantile_empirical", "empirical")):
        thr, used = quantile_matched_threshold(val, 0.42, target, kind)
        assert rules[m][0] == thr and rules[m][1].endswith(used)
    with pytest.raises(ValueError, match="threshold method"):
        threshold_rules(["median"], val, 0.42, 0.37, target)
