"""Label-free estimate of a target slice's cancer fraction from its own calibrated scores.

``em_prior`` — Saerens, Latinne & Decaestecker (2002): posteriors calibrated under a known
training prior ``pi0`` are re-weighted to a new prior ``pi``; ``pi`` is re-estimated as the mean
re-weighted posterior, until it settles (EM on the mixing weight, class-conditional score
densities held fixed). Written here because no maintained library offers it for a single
binary slice (it is ten lines of arithmetic).

``mixture_prevalence`` — for comparison: the weight of the higher component of a two-
component Gaussian mixture on the logit scores (sklearn).
"""
from __future__ import annotations

import numpy as np

from spagraph.decide.calibration import logit

PRIOR_CLIP = (1e-3, 1 - 1e-3)


def adjust_posteriors(prob, pi0: float, pi: float) -> np.ndarray:
    """Posteriors under prior ``pi`` from posteriors ``prob`` calibrated under prior ``pi0``."""
    p = np.clip(np.asarray(prob, dtype=float), 1e-9, 1 - 1e-9)
    pi0 = float(np.clip(pi0, *PRIOR_CLIP)); pi = float(np.clip(pi, *PRIOR_CLIP))
    r1, r0 = pi / pi0, (1 - pi) / (1 - pi0)
    return r1 * p / (r1 * p + r0 * (1 - p))


def adjusted_cut(pi0: float, pi: float, level: float = 0.5) -> float:
    """The calibrated probability at which the prior-adjusted posterior equals ``level``."""
    pi0 = float(np.clip(pi0, *PRIOR_CLIP)); pi = float(np.clip(pi, *PRIOR_CLIP))
    r1, r0 = pi / pi0, (1 - pi) / (1 - pi0)
    odds = level / (1 - level)
    return float(odds * r0 / (r1 + odds * r0))


def em_prior(prob, pi0: float, tol: float = 1e-6, max_iter: int = 500) -> dict:
    """EM estimate of the target prior. Returns ``{"prevalence", "posteriors", "n_iter", "converged"}``."""
    p = np.asarray(prob, dtype=float)
    if len(p) == 0:
        return {"prevalence": None, "posteriors": p, "n_iter": 0, "converged": False}
    pi = float(np.clip(p.mean(), *PRIOR_CLIP))
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        q = adjust_posteriors(p, pi0, pi)
        new = float(np.clip(q.mean(), *PRIOR_CLIP))
        if abs(new - pi) < tol:
            pi, converged = new, True
            break
        pi = new
    return {"prevalence": pi, "posteriors": adjust_posteriors(p, pi0, pi), "n_iter": it, "converged": converged}


def fit_logit_mixture(z):
    """2-component Gaussian mixture (sklearn) on log-odds ``z``; None with < 10 spots or constant z."""
    from sklearn.mixture import GaussianMixture
    z = np.asarray(z, dtype=float)
    if len(z) < 10 or np.ptp(z) < 1e-9:
        return None
    return GaussianMixture(2, random_state=0, n_init=2).fit(z[:, None])


def mixture_fit(prob=None, z=None) -> tuple[float, np.ndarray] | None:
    """2-component GMM on log-odds (``z``, or the logit of ``prob``): (weight of the higher-mean
    component, each spot's posterior of belonging to it); None with < 10 spots or constant scores."""
    z = logit(prob) if z is None else np.asarray(z, dtype=float)
    gm = fit_logit_mixture(z)
    if gm is None:
        return None
    hi = int(np.argmax(gm.means_.ravel()))
    return float(gm.weights_[hi]), gm.predict_proba(z[:, None])[:, hi]


def mixture_prevalence(prob) -> float | None:
    """Weight of the higher-mean component of a 2-component GMM on logit scores (None: < 10 spots
    or constant scores)."""
    fit = mixture_fit(prob)
    return None if fit is None else fit[0]

