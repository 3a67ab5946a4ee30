"""Threshold rules on calibrated probabilities of one target slice, all label-free for that slice.

Rules (``threshold.method``):

``prior_adjusted``   posteriors re-weighted to the slice's EM-estimated prior; call cancer when the
                     adjusted posterior >= 0.5 (a cut on the calibrated probability).
``expected_f1``      the cut that maximises the expected F1 under the adjusted posteriors q:
                     calling the top k spots, E[F1] ~ 2 sum_{top k} q / (k + sum q).
``spatial``          prior-adjusted posteriors averaged over each spot and its scale-1 graph
                     neighbours; call cancer when that mean >= 0.5 (label-free smoothing of the
                     decisions; without a graph it equals ``prior_adjusted``).
``mixture_spatial``  the two-component mixture's posteriors (of the slice's own logit scores)
                     averaged over each spot and its scale-1 neighbours, called at >= 0.5.
``prevalence_quantile`` call the top ``pi_mix`` share of the slice's spots cancer, ``pi_mix`` the
                     two-component mixture's estimate of the slice's cancer fraction (rank-based:
                     immune to a shift of the slice's whole score distribution).
``quantile_beta`` / ``quantile_empirical``, ``mixture``, ``val_f1``, ``val_youden``, ``fixed``
                     the rules of :mod:`spagraph.train.thresholds`, applied to calibrated
                     validation and target probabilities.
"""
from __future__ import annotations

import numpy as np

from spagraph.decide.prevalence import adjusted_cut

NEW_RULES = ("prior_adjusted", "expected_f1", "spatial", "mixture_spatial", "prevalence_quantile")
OLD_RULES = ("quantile_beta", "quantile_empirical", "mixture", "val_f1", "val_youden", "fixed")
RULES = NEW_RULES + OLD_RULES


def expected_f1_cut(prob, q) -> float:
    """Calibrated-probability cut maximising expected F1 (ties: the lowest cut). ``q`` are the
    prior-adjusted posteriors of the spots whose calibrated probabilities are ``prob``."""
    p = np.asarray(prob, dtype=float)
    q = np.asarray(q, dtype=float)
    if len(p) == 0:
        return 0.5
    order = np.argsort(-p, kind="stable")
    ps, qs = p[order], q[order]
    k = np.arange(1, len(p) + 1)
    ef1 = 2 * np.cumsum(qs) / (k + qs.sum())
    ef1 = np.where(np.r_[ps[1:] != ps[:-1], True], ef1, -np.inf)   # cut only between distinct values
    return float(ps[int(np.argmax(ef1))])


def neighbourhood_mean(values, edge_index, n: int) -> np.ndarray:
    """Mean of ``values`` over each spot and its neighbours (edge_index (2, E), both directions)."""
    v = np.asarray(values, dtype=float)
    ei = np.asarray(edge_index)
    tot = v.copy()
    cnt = np.ones(n)
    if ei.size:
        np.add.at(tot, ei[1], v[ei[0]])
        np.add.at(cnt, ei[1], 1.0)
    return tot / cnt


def mixture_cut(z, fallback_p: float) -> tuple[float, str]:
    """The log-odds where a 2-component Gaussian mixture's posteriors cross (as
    :func:`spagraph.train.thresholds.mixture_threshold`, on unsaturated log-odds ``z``); returned as
    a probability. Falls back to ``fallback_p`` when the scores do not split into two components."""
    from spagraph.decide.prevalence import fit_logit_mixture
    return mixture_crossing(fit_logit_mixture(z), fallback_p)


def mixture_crossing(gm, fallback_p: float) -> tuple[float, str]:
    """:func:`mixture_cut` for a mixture already fitted on the log-odds (``None``: not fitted)."""
    if gm is None or gm.weights_.min() < 0.02:
        return float(fallback_p), "fallback_val_threshold"
    lo, hi = np.sort(gm.means_.ravel())
    grid = np.linspace(lo, hi, 512)[:, None]
    post = gm.predict_proba(grid)[:, int(np.argmax(gm.means_.ravel()))]
    cross = np.flatnonzero(np.diff(np.sign(post - 0.5)) != 0)
    if len(cross) == 0:
        return float(fallback_p), "fallback_val_threshold"
    return float(grid[cross[0], 0]), "mixture"


def rule_calls(rule: str, prob, q, pi0: float, pi: float, val_prob, val_f1: float, val_youden: float,
               fixed: float, edge_index=None, pi_mix: float | None = None,
               r_mix=None, z=None) -> tuple[float, np.ndarray, str]:
    """``(threshold on the calibrated scale, 0/1 calls, method actually used)`` of one rule."""
    from spagraph.train.thresholds import threshold_rules
    p = np.asarray(prob, dtype=float)
    if rule == "prior_adjusted":
        t = adjusted_cut(pi0, pi)
        return t, (p >= t).astype(int), rule
    if rule == "expected_f1":
        t = expected_f1_cut(p, q)
        return t, (p >= t).astype(int), rule
    if rule == "spatial":
        t = adjusted_cut(pi0, pi)
        if edge_index is None:
            return t, (p >= t).astype(int), "prior_adjusted (no graph)"
        return t, (neighbourhood_mean(q, edge_index, len(p)) >= 0.5).astype(int), rule
    if rule in ("mixture", "mixture_spatial") and (rule == "mixture" or r_mix is None):
        from spagraph.decide.calibration import logit, sigmoid
        zz = logit(p, 1e-12) if z is None else np.asarray(z, dtype=float)
        tz, used = mixture_cut(zz, float(logit(val_f1, 1e-12)))
        return float(sigmoid(tz)), (zz >= tz).astype(int), used if rule == "mixture" else f"{used} (no mixture posteriors)"
    if rule == "mixture_spatial":
        r = np.asarray(r_mix, dtype=float)
        if edge_index is not None:
            r = neighbourhood_mean(r, edge_index, len(p))
        pred = (r >= 0.5).astype(int)
        t = float(p[pred == 1].min()) if pred.any() else 1.0        # nominal: the lowest called probability
        return t, pred, rule if edge_index is not None else "mixture_posterior (no graph)"
    if rule == "prevalence_quantile":
        if pi_mix is None or len(p) == 0:
            t = adjusted_cut(pi0, pi)
            return t, (p >= t).astype(int), "prior_adjusted (no mixture estimate)"
        from spagraph.decide.calibration import logit, sigmoid
        zz = logit(p, 1e-12) if z is None else np.asarray(z, dtype=float)
        tz = float(np.quantile(zz, 1 - pi_mix, method="higher")) if pi_mix < 1 else float(zz.min())
        return float(sigmoid(tz)), (zz >= tz).astype(int), rule
    if rule in OLD_RULES:
        t, used = threshold_rules([rule], val_prob, val_f1, val_youden, p, fixed)[rule]
        return float(t), (p >= t).astype(int), used
    raise ValueError(f"threshold rule must be one of {RULES} (or 'auto'), got {rule!r}")
