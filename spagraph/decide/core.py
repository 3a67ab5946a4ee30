"""One decision path for the runner and for saved-model prediction.

``fit_state(val_labels, val_scores, ...)`` -> :class:`DecisionState` (validation slices only);
``decide(scores, state, rule, edge_index)`` -> :class:`Decision` for one target slice;
``decide_rules(...)`` the same for several rules, sharing the calibration and prevalence work.
The target slice's labels are never an input here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spagraph.decide.calibration import Calibration, fit_calibration
from spagraph.decide.guard import bimodality, check_calls
from spagraph.decide.prevalence import em_prior, mixture_fit
from spagraph.decide.rules import RULES, rule_calls

FALLBACKS = ("mixture", "prior_adjusted", "fixed")


@dataclass
class DecisionState:
    """What a threshold rule may know about validation: the calibration map and the validation
    F1- / Youden-optimal cuts on the calibrated scale. ``val_prob`` (calibrated validation
    probabilities, for quantile matching) is kept out of :meth:`to_dict` (saved as .npy)."""
    calibration: Calibration = field(default_factory=Calibration)
    val_f1: float = 0.5
    val_youden: float = 0.5
    fixed: float = 0.5
    val_prob: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict:
        return {"calibration": self.calibration.to_dict(), "val_f1": float(self.val_f1),
                "val_youden": float(self.val_youden), "fixed": float(self.fixed)}

    @classmethod
    def from_dict(cls, d: dict, val_scores=None) -> "DecisionState":
        cal = Calibration.from_dict(d["calibration"])
        vp = cal(np.asarray(val_scores, dtype=float)) if val_scores is not None else np.zeros(0)
        return cls(cal, float(d["val_f1"]), float(d["val_youden"]), float(d.get("fixed", 0.5)), vp)


def fit_state(val_labels, val_scores, fixed: float = 0.5, kind: str = "platt",
              slices: list[str] | None = None, extra: dict | None = None) -> DecisionState:
    """Calibration and validation cuts from the validation slices' labels and raw scores.

    ``kind="relative"`` (``"relative_within"``: the same with the within-component spread,
    :func:`spagraph.decide.calibration.relative_logit`): the slice-relative map is fitted on the validation spots (one slice) and
    on ``extra`` = ``{name: (labels, raw scores)}`` of further labelled slices, each scored by a
    model not trained on it (cross-fitted inner scores, :func:`spagraph.decide.choose.inner_scores`).
    The validation cuts stay on the validation spots alone."""
    from spagraph.decide.calibration import fit_relative
    from spagraph.train.metrics import validation_thresholds
    y = np.asarray(val_labels, dtype=float)
    s = np.asarray(val_scores, dtype=float)
    if kind in ("relative", "relative_within"):
        groups = ([(y, s)] if len(s) else []) + [tuple(v) for v in (extra or {}).values()]
        cal = fit_relative(groups, list(slices or []) + [f"{n} (cross-fitted)" for n in (extra or {})],
                           spread="within" if kind == "relative_within" else "total")
    else:
        cal = fit_calibration(y, s, kind=kind, slices=slices) if kind != "identity" else \
            Calibration("identity", prior=float(np.nanmean(y)) if (~np.isnan(y)).any() else 0.5,
                        n=int((~np.isnan(y)).sum()), fitted_on=list(slices or []))
    vp = cal(s)
    f1t, jt = validation_thresholds(y, vp) if len(y) else (0.5, 0.5)
    return DecisionState(cal, float(f1t), float(jt), float(fixed), vp)


@dataclass
class Decision:
    rule: str                     # the rule asked for
    used: str                     # what made the calls (the rule's method, or "fallback:<rule>")
    threshold: float              # on the calibrated scale (the rule's, or its fallback's)
    pred: np.ndarray              # (n,) 0/1
    flags: list[str]
    fallback: str | None = None

    @property
    def degenerate(self) -> bool:
        return "degenerate" in self.flags


@dataclass
class SliceDecisions:
    prob: np.ndarray              # calibrated P(cancer)
    posterior: np.ndarray         # prior-adjusted posteriors
    prevalence: float | None      # EM estimate
    prevalence_mixture: float | None
    bimodal: dict
    rules: dict[str, Decision]


def decide_rules(scores, state: DecisionState, rules, edge_index=None, guard: bool = True) -> SliceDecisions:
    """Every rule in ``rules`` on one target slice (raw ``scores``), with the guard applied."""
    s = np.asarray(scores, dtype=float)
    cal = state.calibration
    p = cal(s)
    z = cal.logits(s)                     # unsaturated log-odds for the mixture fits
    em = em_prior(p, cal.prior)
    pi = em["prevalence"] if em["prevalence"] is not None else cal.prior
    q = em["posteriors"]
    bim = bimodality(z=z)
    mix = mixture_fit(z=z)
    pi_mix, r_mix = (None, None) if mix is None else mix
    cache: dict[str, tuple] = {}

    def calls(r):
        if r not in cache:
            cache[r] = rule_calls(r, p, q, cal.prior, pi, state.val_prob, state.val_f1, state.val_youden,
                                  state.fixed, edge_index, pi_mix, r_mix, z)
        return cache[r]

    out = {}
    for r in dict.fromkeys(rules):
        t, pred, used = calls(r)
        flags = check_calls(p, pred, t if r not in ("spatial", "mixture_spatial") else None, bim) if guard else []
        dec = Decision(r, used, float(t), pred, flags)
        if "degenerate" in flags:
            for fb in FALLBACKS:
                if fb == r:
                    continue
                ft, fpred, fused = calls(fb)
                if "degenerate" not in check_calls(p, fpred, ft, bim):
                    dec = Decision(r, f"fallback:{fb}", float(ft), fpred, flags, fallback=fb)
                    break
            else:
                dec.flags = flags + ["no non-degenerate fallback"]
        out[r] = dec
    return SliceDecisions(p, q, em["prevalence"], pi_mix, bim, out)


def decide(scores, state: DecisionState, rule: str, edge_index=None) -> tuple[Decision, SliceDecisions]:
    """One rule on one slice; also returns the shared slice-level results."""
    if rule not in RULES:
        raise ValueError(f"threshold rule must be one of {RULES}, got {rule!r}")
    sd = decide_rules(scores, state, [rule], edge_index)
    return sd.rules[rule], sd
