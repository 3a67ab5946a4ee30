"""Calibration of cancer scores into probabilities, fitted on validation slices only.

Platt scaling on the logit of the score: ``P(cancer) = sigmoid(a * logit(s) + b)`` with ``a > 0``
(strictly increasing, so every ranking metric is unchanged). It is fitted by an (almost)
unpenalised logistic regression of the validation slices' labels on their logit scores. The
resulting probabilities carry the validation slices' cancer fraction as their prior; that prior is
stored (``prior``) so a target slice's posteriors can be re-weighted to the target's own,
estimated, prior (:mod:`spagraph.decide.prevalence`). Isotonic regression is offered as an
alternative (``kind="isotonic"``, monotone non-decreasing; knots stored as plain lists).

``kind="relative"`` (slice-relative Platt): the map acts on each slice's *relative* log-odds
``v = (logit(s) - c) / sd``, ``c`` the crossing point of a two-component Gaussian mixture on the
slice's own log-odds and ``sd`` their standard deviation (both label-free statistics of the slice
being scored), ``P = sigmoid(a * v + b)``. ``v`` is unchanged by any increasing affine map of a
slice's log-odds, so a per-slice shift or rescaling of the scores (a batch effect, per-slice
normalisation of expression moving a slice's score level with its cancer fraction) does not move
the calibrated probabilities; and because ``v`` is scale-free the map can be fitted on several
slices scored by different models (``spagraph.decide.choose.inner_scores``: every inner training
slice scored by a stand-in model not trained on it, plus the validation slices). Applied to one
slice at a time (a 2-D array: each row is a slice, e.g. dropout passes). Each dropout pass is read
in its own frame on purpose: the calibrated output does not move when a whole slice's scores
shift, so a pass that only shifts the slice is not a different answer, and the MC spread
(``spagraph_mc_std``) is the spread of what the pipeline would report under each pass.

Only validation labels enter; a fit that would be decreasing (``a <= 0``), or a validation set
with a single class, gives the identity map (``kind="identity"``) and says so.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

EPS = 1e-6


def logit(s, eps: float = EPS) -> np.ndarray:
    s = np.clip(np.asarray(s, dtype=float), eps, 1 - eps)
    return np.log(s) - np.log1p(-s)


def sigmoid(z) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=float)))


@dataclass
class Calibration:
    """A monotone map from raw score to P(cancer); JSON-serialisable (:meth:`to_dict`)."""
    kind: str = "identity"            # "platt" | "relative" | "isotonic" | "identity"
    a: float = 1.0
    b: float = 0.0
    prior: float = 0.5                # cancer fraction of the spots it was fitted on
    n: int = 0
    fitted_on: list[str] = field(default_factory=list)
    x_knots: list[float] = field(default_factory=list)   # isotonic only (raw-score knots)
    y_knots: list[float] = field(default_factory=list)
    note: str = ""
    spread: str = "total"             # relative only: "total" (all log-odds) or "within" (mixture components)

    def __call__(self, scores) -> np.ndarray:
        s = np.asarray(scores, dtype=float)
        if self.kind == "platt":
            return sigmoid(self.a * logit(s) + self.b)
        if self.kind == "relative":
            return sigmoid(self.logits(s))
        if self.kind == "isotonic":
            return np.clip(np.interp(s, self.x_knots, self.y_knots), 0.0, 1.0)
        if self.kind == "identity":
            return np.clip(s, 0.0, 1.0)
        raise ValueError(f"unknown calibration kind {self.kind!r}; expected platt, relative, isotonic or identity")

    def logits(self, scores) -> np.ndarray:
        """log-odds of the calibrated probability, computed without saturating (Platt: exactly
        ``a * logit(s) + b``; a probability rounded to 0 or 1 in float64 would lose the ranking)."""
        s = np.asarray(scores, dtype=float)
        if self.kind == "platt":
            return self.a * logit(s) + self.b
        if self.kind == "relative":
            if s.ndim == 2:
                return np.stack([self.a * relative_logit(r, self.spread) + self.b for r in s])
            return self.a * relative_logit(s, self.spread) + self.b
        return logit(np.clip(self(s), 1e-12, 1 - 1e-12))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"calibration state has unknown keys {sorted(unknown)}")
        return cls(**d)


def relative_logit(scores, spread: str = "total") -> np.ndarray:
    """One slice's relative log-odds ``(logit(s) - c) / sd`` (module docstring): ``c`` where the
    posteriors of a two-component Gaussian mixture on the slice's log-odds cross 0.5 (the median
    when the scores do not split in two). ``sd``: with ``spread="total"`` the log-odds' standard
    deviation; with ``spread="within"`` the pooled standard deviation *within* the two mixture
    components, ``sqrt(sum_k w_k var_k)`` (the total one when the mixture does not split). The
    total spread grows with the distance between the two components, so on a slice whose tumour
    and tissue are far apart it shrinks every spot's relative log-odds towards ``c`` and no spot is
    called confidently healthy; the within spread does not. 1 if constant. Label-free; invariant to
    an increasing affine map of the log-odds."""
    from spagraph.decide.prevalence import fit_logit_mixture
    from spagraph.decide.rules import mixture_crossing
    if spread not in ("total", "within"):
        raise ValueError(f"spread must be 'total' or 'within', got {spread!r}")
    z = logit(np.asarray(scores, dtype=float), 1e-12)
    if len(z) == 0:
        return z
    gm = fit_logit_mixture(z) if np.ptp(z) > 1e-9 else None     # one fit serves the crossing and the spread
    c, how = mixture_crossing(gm, 0.0)
    if how == "fallback_val_threshold":
        c = float(np.median(z))
    sd = float(z.std())
    if spread == "within" and how == "mixture":
        sd = float(np.sqrt(np.sum(gm.weights_ * gm.covariances_.ravel())))
    return (z - c) / (sd if sd > 1e-9 else 1.0)


def fit_relative(groups, slices: list[str] | None = None, spread: str = "total") -> Calibration:
    """Slice-relative Platt map fitted on several labelled slices: ``groups`` is a list of
    ``(labels, raw scores)`` per slice (NaN labels ignored); each slice is made relative on its own
    (all its spots, labelled or not) before one logistic regression is fitted on all of them."""
    vs, ys = [], []
    for y, s in groups:
        y = np.asarray(y, dtype=float)
        s = np.asarray(s, dtype=float)
        if y.shape != s.shape:
            raise ValueError(f"fit_relative: {len(y)} labels but {len(s)} scores in one slice")
        if len(s) == 0:
            continue
        v = relative_logit(s, spread)
        m = ~np.isnan(y) & np.isfinite(v)
        vs.append(v[m]); ys.append(y[m].astype(int))
    v = np.concatenate(vs) if vs else np.zeros(0)
    y = np.concatenate(ys) if ys else np.zeros(0, dtype=int)
    names = list(slices or [])
    prior = float(y.mean()) if len(y) else 0.5
    if len(y) < 10 or len(np.unique(y)) < 2 or np.ptp(v) == 0:
        return Calibration("identity", prior=prior, n=int(len(y)), fitted_on=names,
                           note="identity: fewer than 10 labelled spots, one class or constant scores")
    return _increasing_platt(v, y, "relative", "relative Platt", prior, names, spread=spread)


def fit_calibration(y, scores, kind: str = "platt", slices: list[str] | None = None) -> Calibration:
    """Fit a calibration map on labelled validation spots.

    Parameters
    ----------
    y : (m,) 0/1/NaN labels of the *validation* slices (NaN spots are ignored).
    scores : (m,) raw scores in [0, 1] of the same spots.
    kind : "platt" (default), "relative" (the spots are one slice; see :func:`fit_relative` for
        several) or "isotonic".
    slices : names of the slices the spots come from (recorded).
    """
    y = np.asarray(y, dtype=float)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape:
        raise ValueError(f"fit_calibration: {len(y)} labels but {len(s)} scores")
    names = list(slices or [])
    if kind == "relative":                    # the slice is made relative on all its spots
        return fit_relative([(y, s)], names)
    m = ~np.isnan(y) & np.isfinite(s)
    y, s = y[m].astype(int), s[m]
    prior = float(y.mean()) if len(y) else 0.5
    if len(y) < 10 or len(np.unique(y)) < 2 or np.ptp(s) == 0:
        return Calibration("identity", prior=prior, n=int(len(y)), fitted_on=names,
                           note="identity: fewer than 10 labelled validation spots, one class or constant scores")
    if kind == "isotonic":
        from sklearn.isotonic import IsotonicRegression
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(s, y)
        return Calibration("isotonic", prior=prior, n=int(len(y)), fitted_on=names,
                           x_knots=[float(v) for v in iso.X_thresholds_], y_knots=[float(v) for v in iso.y_thresholds_])
    if kind != "platt":
        raise ValueError(f"calibration kind must be 'platt', 'relative' or 'isotonic', got {kind!r}")
    return _increasing_platt(logit(s), y, "platt", "Platt", prior, names)


def _increasing_platt(x, y, kind: str, what: str, prior: float, names: list[str], **fields) -> Calibration:
    """``P = sigmoid(a * x + b)`` by an (almost) unpenalised logistic regression of the labels ``y``
    on the one feature ``x``; the identity map (saying so) when the fit is not increasing. Shared
    by the Platt and the slice-relative maps."""
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(C=1e4, max_iter=1000).fit(np.asarray(x, dtype=float)[:, None], y)
    a, b = float(clf.coef_[0, 0]), float(clf.intercept_[0])
    if not (np.isfinite(a) and np.isfinite(b)) or a <= 0:
        return Calibration("identity", prior=prior, n=int(len(y)), fitted_on=names,
                           note=f"identity: the {what} fit was not increasing (a = {a:.3g})")
    return Calibration(kind, a=a, b=b, prior=prior, n=int(len(y)), fitted_on=names, **fields)


def reliability(y, prob, n_bins: int = 10) -> dict:
    """Equal-width reliability bins of calibrated probabilities: per non-empty bin the mean
    probability, the observed cancer fraction and the count; ``ece`` = count-weighted mean
    |observed - predicted| (None without labelled spots)."""
    y, p = np.asarray(y, dtype=float), np.asarray(prob, dtype=float)
    m = ~np.isnan(y)
    y, p = y[m], p[m]
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    mean_p, frac, count = [], [], []
    for b in range(n_bins):
        k = idx == b
        if k.any():
            mean_p.append(float(p[k].mean())); frac.append(float(y[k].mean())); count.append(int(k.sum()))
    c = np.asarray(count, dtype=float)
    ece = float(np.sum(c * np.abs(np.asarray(frac) - np.asarray(mean_p))) / c.sum()) if len(c) else None
    return {"mean_prob": mean_p, "fraction_positive": frac, "count": count, "ece": ece}
