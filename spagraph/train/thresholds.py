"""Label-free threshold transfer by quantile matching of score distributions.

The F1-optimal threshold t* is chosen on validation slices (labels allowed there). Its
quantile q = F_val(t*) under the validation score distribution is carried to the target
slice, whose threshold is F_target^{-1}(q). Distributions are Beta fits (method of moments
then maximum likelihood); when a fit fails or is degenerate the empirical quantile is used,
and the method actually used is recorded.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

EPS = 1e-4


def _fit_beta(scores: np.ndarray):
    """Beta(a, b) fitted to scores in (0, 1); ``None`` when the fit is unusable."""
    s = np.clip(np.asarray(scores, dtype=float), EPS, 1 - EPS)
    if len(s) < 5 or np.ptp(s) < 1e-6:
        return None
    m, v = s.mean(), s.var()
    if v <= 0 or v >= m * (1 - m):
        return None
    common = m * (1 - m) / v - 1
    a0, b0 = m * common, (1 - m) * common
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a, b, _, _ = stats.beta.fit(s, a0, b0, floc=0, fscale=1)
    except Exception:
        return None
    if not (np.isfinite(a) and np.isfinite(b)) or a <= 0 or b <= 0:
        return None
    # a fit stuck at its starting point or at absurd shape values is not trusted
    if max(a, b) > 1e3 or (abs(a - a0) < 1e-9 and abs(b - b0) < 1e-9 and len(s) > 50):
        return None
    # goodness of fit: KS distance must be reasonable
    ks = stats.kstest(s, "beta", args=(a, b)).statistic
    if ks > 0.15:
        return None
    return stats.beta(a, b)


def quantile_matched_threshold(val_scores: np.ndarray, val_threshold: float, target_scores: np.ndarray,
                               method: str = "beta") -> tuple[float, str]:
    """Carry ``val_threshold``'s quantile from the validation to the target score distribution.

    Parameters
    ----------
    val_scores : (m,) validation scores in [0, 1]. val_threshold : chosen on validation.
    target_scores : (n,) unlabelled target scores. method : "beta" (with empirical fallback)
        or "empirical".

    Returns
    -------
    (threshold in [0, 1], method used: "beta" | "empirical" | "fallback_val_threshold").
    Monotone non-decreasing in ``val_threshold``.
    """
    v = np.asarray(val_scores, dtype=float)
    t = np.asarray(target_scores, dtype=float)
    if len(v) == 0 or len(t) == 0:
        return float(np.clip(val_threshold, 0, 1)), "fallback_val_threshold"
    if method == "beta":
        fv, ft = _fit_beta(v), _fit_beta(t)
        if fv is not None and ft is not None:
            q = float(fv.cdf(np.clip(val_threshold, EPS, 1 - EPS)))
            thr = float(ft.ppf(q))
            if np.isfinite(thr):
                return float(np.clip(thr, 0, 1)), "beta"
    elif method != "empirical":
        raise ValueError(f"unknown quantile-matching method {method!r}; expected 'beta' or 'empirical'")
    q = float(np.mean(v < val_threshold))
    thr = float(np.quantile(t, q, method="linear")) if q > 0 else float(t.min())
    return float(np.clip(thr, 0, 1)), "empirical"


def mixture_threshold(target_scores: np.ndarray, fallback: float) -> tuple[float, str]:
    """Label-free threshold from the target slice alone: a two-component Gaussian mixture on
    logit scores; the threshold is where the two components' posteriors are equal.

    Unlike quantile matching it does not assume the validation and target slices share
    a cancer proportion. Returns ``(fallback, "fallback_val_threshold")`` when the scores do
    not separate into two components (fewer than 10 spots, a component with < 2% weight,
    or no crossing between the means).
    """
    from sklearn.mixture import GaussianMixture
    s = np.clip(np.asarray(target_scores, dtype=float), 1e-6, 1 - 1e-6)
    if len(s) < 10 or np.ptp(s) < 1e-6:
        return float(np.clip(fallback, 0, 1)), "fallback_val_threshold"
    z = np.log(s / (1 - s))[:, None]
    gm = GaussianMixture(2, random_state=0, n_init=2).fit(z)
    if gm.weights_.min() < 0.02:
        return float(np.clip(fallback, 0, 1)), "fallback_val_threshold"
    lo, hi = np.sort(gm.means_.ravel())
    grid = np.linspace(lo, hi, 512)[:, None]
    post = gm.predict_proba(grid)[:, int(np.argmax(gm.means_.ravel()))]
    cross = np.flatnonzero(np.diff(np.sign(post - 0.5)) != 0)
    if len(cross) == 0:
        return float(np.clip(fallback, 0, 1)), "fallback_val_threshold"
    t = float(grid[cross[0], 0])
    return float(1 / (1 + np.exp(-t))), "mixture"


THRESHOLD_METHODS = ("quantile_beta", "quantile_empirical", "mixture", "val_f1", "val_youden", "fixed")


def threshold_rules(methods, val_scores: np.ndarray, val_threshold: float, youden_threshold: float,
                    target_scores: np.ndarray, fixed: float = 0.5) -> dict[str, tuple[float, str]]:
    """The target slice's threshold under each named rule (``threshold.method`` values), each
    computed once: ``{method: (threshold, method actually used)}``.

    ``val_threshold`` / ``youden_threshold``: the validation F1- and Youden-optimal thresholds
    (:func:`spagraph.train.metrics.validation_thresholds`); quantile rules carry the former's
    quantile onto ``target_scores``, the mixture rule falls back to it.
    """
    out = {}
    for m in dict.fromkeys(methods):
        if m in ("quantile_beta", "quantile_empirical"):
            thr, used = quantile_matched_threshold(val_scores, val_threshold, target_scores,
                                                   "beta" if m == "quantile_beta" else "empirical")
            out[m] = (thr, used if used.startswith("fallback") else f"quantile_{used}")
        elif m == "mixture":
            out[m] = mixture_threshold(target_scores, val_threshold)
        elif m == "val_f1":
            out[m] = (val_threshold, "val_f1")
        elif m == "val_youden":
            out[m] = (youden_threshold, "val_youden")
        elif m == "fixed":
            out[m] = (fixed, "fixed")
        else:
            raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got {m!r}")
    return out
