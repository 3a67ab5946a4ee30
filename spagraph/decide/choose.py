"""Choose the threshold rule honestly: inner leave-one-slice-out over a fold's training slices.

For an outer fold, the pool is its training and validation slices (the outer test slice is never
read). Each pool slice in turn is the inner test slice; the next pool slice (cyclic order) is the
inner validation slice (calibration and validation cuts) and the rest are inner training slices.
The inner scorer is cheap and deterministic: a logistic regression on the fold's graph features
and their disc means at every graph scale (``C`` = ``model.linear_C``, expression smoothing
``model.feature_smoothing``), i.e. the model's linear prior. Every rule decides each inner test
slice; the chosen rule has the fewest inner slices with sensitivity or specificity below 0.5, then
the highest mean inner F1, then the earlier position in :data:`RULES`.

The outer fold's embeddings (fitted on its training slices) are reused, so the inner folds share
them; this touches no outer test data. Results are cached per (config hash, fold) so seeds reuse them.
"""
from __future__ import annotations

import logging

import numpy as np

from spagraph.decide.rules import RULES
from spagraph.train.metrics import call_metrics

log = logging.getLogger("spagraph")
_CACHE: dict = {}


def _inner_scorer(cfg, train, seed: int = 0):
    from spagraph.train.baselines import _fit_logreg
    keys = [k for k in ("x_gene", "x_img") if train[0][k].shape[1] > 0]
    if not keys:
        raise ValueError("inner folds: the slices have neither gene nor image embeddings")
    b = {"smooth": "disc", "standardise": False, "C": float(getattr(cfg.model, "linear_C", 1.0) or 1.0),
         "feature_smoothing": float(getattr(cfg.model, "feature_smoothing", 0.0) or 0.0)}
    pred, _ = _fit_logreg(b, train, [], seed, keys)
    return pred


def _inner_folds(cfg, graphs: dict, fold) -> list[tuple]:
    """``[(t, v, scores of t, scores of v)]``: per pool slice ``t`` (the fold's training and
    validation slices, never its test slice) the stand-in scorer trained on the pool without ``t``
    and ``v`` (the next pool slice) scores both. Cached per (config hash, fold)."""
    pool = list(fold.train) + list(fold.val)
    key = ("folds", cfg.config_hash(), tuple(fold.train), tuple(fold.val))
    if key in _CACHE:
        return _CACHE[key]
    out = []
    if len(pool) >= 3:
        for i, t in enumerate(pool):
            v = pool[(i + 1) % len(pool)]
            tr = [graphs[n] for n in pool if n not in (t, v)]
            try:
                scorer = _inner_scorer(cfg, tr)
            except ValueError as e:          # e.g. inner training slices with one class
                log.info("inner fold %s skipped: %s", t, e)
                continue
            out.append((t, v, np.asarray(scorer(graphs[t]), dtype=float), np.asarray(scorer(graphs[v]), dtype=float)))
    _CACHE[key] = out
    return out


def inner_scores(cfg, graphs: dict, fold) -> dict:
    """Cross-fitted scores of the fold's training and validation slices: ``{name: (labels, scores)}``,
    each slice scored by a stand-in model trained without it (:func:`_inner_folds`); empty with
    fewer than 3 such slices. For the slice-relative calibration (``threshold.calibration: relative``)."""
    return {t: (graphs[t].y.numpy(), st) for t, _, st, _ in _inner_folds(cfg, graphs, fold)}


def choose_rule(cfg, graphs: dict, fold, rules=RULES) -> dict:
    """``{"rule", "why", "inner": {rule: {"f1", "n_below_half", "per_slice": {...}}}, "prevalence_estimator"
    ("em" | "mixture": the lower inner-fold mean absolute error of the cancer fraction),
    "inner_prevalence_mae"}`` for one outer fold."""
    from spagraph.decide.core import decide_rules, fit_state
    pool = list(fold.train) + list(fold.val)
    key = (cfg.config_hash(), tuple(fold.train), tuple(fold.val), tuple(rules))
    if key in _CACHE:
        return _CACHE[key]
    if len(pool) < 3:
        res = {"rule": "prior_adjusted", "inner": {},
               "why": f"only {len(pool)} training+validation slice(s): no inner folds; prior_adjusted by default",
               "prevalence_estimator": "em", "inner_prevalence_mae": {}}
        _CACHE[key] = res
        return res
    per_rule = {r: {} for r in rules}
    prev_err = {"em": [], "mixture": []}
    for t, v, st, sv in _inner_folds(cfg, graphs, fold):
        gv, gt = graphs[v], graphs[t]
        # inner calibration: the inner validation slice only (other pool slices' cross-fitted scores
        # come from scorers trained on t, whose labels must not inform its own calls)
        state = fit_state(gv.y.numpy(), sv, cfg.threshold.fixed, cfg.threshold.calibration, [v])
        ei = gt.edge_index_0.numpy() if hasattr(gt, "edge_index_0") else None
        sd = decide_rules(st, state, rules, ei)
        y = gt.y.numpy()
        m = ~np.isnan(y)
        if len(np.unique(y[m])) < 2:
            continue
        for r, d in sd.rules.items():
            per_rule[r][t] = call_metrics(y[m], d.pred[m])
        true = float(y[m].mean())
        for k, v in (("em", sd.prevalence), ("mixture", sd.prevalence_mixture)):
            if v is not None:
                prev_err[k].append(abs(v - true))
    inner = {}
    for r, rows in per_rule.items():
        f1s = [x["f1"] for x in rows.values() if x["f1"] is not None]
        bad = sum(1 for x in rows.values() if (x["sensitivity"] is not None and x["sensitivity"] < 0.5)
                  or (x["specificity"] is not None and x["specificity"] < 0.5))
        inner[r] = {"f1": float(np.mean(f1s)) if f1s else None, "n_below_half": bad, "per_slice": rows}
    ranked = sorted((r for r in rules if inner[r]["f1"] is not None),
                    key=lambda r: (inner[r]["n_below_half"], -inner[r]["f1"], rules.index(r)))
    if not ranked:
        res = {"rule": "prior_adjusted", "inner": inner, "why": "no inner fold had two classes; prior_adjusted by default"}
    else:
        best = ranked[0]
        res = {"rule": best, "inner": inner,
               "why": (f"inner leave-one-slice-out over {len(pool)} training slices ({', '.join(map(str, pool))}): "
                       f"{best} had mean inner F1 {inner[best]['f1']:.3f} with {inner[best]['n_below_half']} slice(s) "
                       "below 0.5 sensitivity or specificity (fewest such slices, then highest F1)")}
    mae = {k: float(np.mean(v)) for k, v in prev_err.items() if v}
    res["prevalence_estimator"] = min(mae, key=lambda k: (mae[k], k != "em")) if mae else "em"
    res["inner_prevalence_mae"] = mae
    _CACHE[key] = res
    return res
