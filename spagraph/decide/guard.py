"""Guard against degenerate calls.

A slice's calls are *degenerate* when the scores are clearly bimodal (two well separated
components in a two-component Gaussian mixture on the logit probabilities: Ashman's D >= 2 and
the smaller component holds >= 5 % of spots) but the rule calls almost nothing or almost
everything cancer (predicted cancer fraction < 2 % or > 98 %), or puts the threshold at an
extreme quantile of the slice's own scores (below its 1st or above its 99th percentile).
On a slice whose scores are *not* bimodal an extreme fraction may be real (a slice that is all
tumour); it is then only noted (``extreme_unimodal``), not overridden.
"""
from __future__ import annotations

import numpy as np

from spagraph.decide.calibration import logit

MIN_FRACTION, MAX_FRACTION = 0.02, 0.98
LOW_Q, HIGH_Q = 0.01, 0.99
ASHMAN_D = 2.0
MIN_WEIGHT = 0.05


def bimodality(prob=None, z=None) -> dict:
    """``{"bimodal", "ashman_d", "min_weight"}`` of a 2-component GMM on log-odds (``z``, or the
    logit of ``prob``)."""
    from sklearn.mixture import GaussianMixture
    z = logit(prob) if z is None else np.asarray(z, dtype=float)
    if len(z) < 20 or np.ptp(z) < 1e-9:
        return {"bimodal": False, "ashman_d": None, "min_weight": None}
    gm = GaussianMixture(2, random_state=0, n_init=2).fit(z[:, None])
    mu = gm.means_.ravel()
    var = gm.covariances_.ravel()
    d = float(np.sqrt(2) * abs(mu[0] - mu[1]) / np.sqrt(var.sum()))
    w = float(gm.weights_.min())
    return {"bimodal": bool(d >= ASHMAN_D and w >= MIN_WEIGHT), "ashman_d": d, "min_weight": w}


def check_calls(prob, pred, threshold: float | None, bimodal: dict) -> list[str]:
    """Flags of one slice's calls (empty: nothing suspicious). ``degenerate`` is among them when
    the calls should be replaced by a fallback (module docstring)."""
    p = np.asarray(prob, dtype=float)
    pr = np.asarray(pred, dtype=float)
    if len(p) == 0:
        return []
    flags = []
    frac = float(pr.mean())
    if frac < MIN_FRACTION:
        flags.append(f"predicted cancer fraction {frac:.3f} < {MIN_FRACTION}")
    elif frac > MAX_FRACTION:
        flags.append(f"predicted cancer fraction {frac:.3f} > {MAX_FRACTION}")
    if threshold is not None and len(p) >= 20:
        lo, hi = np.quantile(p, [LOW_Q, HIGH_Q])
        if threshold < lo:
            flags.append(f"threshold {threshold:.4f} below the slice's {LOW_Q:.0%} score quantile {lo:.4f}")
        elif threshold > hi:
            flags.append(f"threshold {threshold:.4f} above the slice's {HIGH_Q:.0%} score quantile {hi:.4f}")
    if flags:
        flags.append("degenerate" if bimodal.get("bimodal") else "extreme_unimodal")
    return flags
