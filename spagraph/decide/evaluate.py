"""The runner's decision step for one (fold, seed): calibrate on validation, decide every rule on
each test slice, score the calls (test labels used only here, after every call is made).

Per-slice row keys added (metrics.json ``per_slice``):
  rule, rule_choice            the rule in force and why (``auto``: inner-fold table)
  threshold, threshold_method  the cut on the calibrated scale and what made it (``fallback:<rule>``)
  flags, fallback              guard flags (``degenerate`` when the calls were replaced)
  prevalence_em / prevalence_mixture / prevalence_estimate (the estimator chosen by inner folds,
  or threshold.prevalence) / true_fraction / prevalence_error (|estimate - true|, also _em, _mixture)
  ece                          expected calibration error of the calibrated scores (10 bins)
  calibration                  {kind, a, b, prior, fitted_on}
  rules                        {rule: {threshold, used, pred_fraction, f1, sensitivity, specificity,
                                prevalence_error (|pred_fraction - true|), flags}}
  f1_<rule>, sensitivity_<rule>, specificity_<rule>, prevalence_error_<rule>  (flat, for means)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from spagraph.decide.rules import RULES

RULE_KEYS = tuple(f"{m}_{r}" for r in RULES for m in ("f1", "sensitivity", "specificity", "prevalence_error"))
EXTRA_KEYS = ("prevalence_error", "prevalence_error_em", "prevalence_error_mixture", "ece") + RULE_KEYS


def _calls_metrics(y, pred) -> dict:
    from spagraph.train.metrics import call_metrics
    out = call_metrics(y, pred)
    out["accuracy"] = float(np.mean(np.asarray(y) == np.asarray(pred))) if len(y) else None
    return out


def calibration_extra(cfg, graphs: dict, fold) -> dict | None:
    """Further calibration slices for ``threshold.calibration: relative``: the cross-fitted inner
    scores of the fold's training slices (validation slices excluded: they enter with the fold's own
    model's scores); None for the other kinds."""
    if getattr(cfg.threshold, "calibration", "platt") not in ("relative", "relative_within"):
        return None
    from spagraph.decide.choose import inner_scores
    return {n: v for n, v in inner_scores(cfg, graphs, fold).items() if n not in fold.val}


def fold_state(cfg, graphs: dict, fold, scores: dict):
    from spagraph.decide.core import fit_state
    if fold.val:
        vy = np.concatenate([graphs[n].y.numpy() for n in fold.val])
        vs = np.concatenate([scores[n] for n in fold.val])
    else:
        vy, vs = np.zeros(0), np.zeros(0)
    return fit_state(vy, vs, cfg.threshold.fixed, cfg.threshold.calibration, list(fold.val),
                     extra=calibration_extra(cfg, graphs, fold))


def fold_rule(cfg, graphs: dict, fold) -> tuple[str, dict]:
    """The rule for this fold's test slices and the record of why (with the prevalence estimator,
    also chosen by the inner folds when ``threshold.prevalence: auto``)."""
    from spagraph.decide.choose import choose_rule
    method, prev = cfg.threshold.method, cfg.threshold.prevalence
    ch = choose_rule(cfg, graphs, fold) if "auto" in (method, prev) else None
    est = prev if prev != "auto" else ch["prevalence_estimator"]
    if method != "auto":
        rec = {"rule": method, "why": "set in the config (threshold.method)"}
    else:
        rec = {"rule": ch["rule"], "why": ch["why"],
               "inner_f1": {r: v["f1"] for r, v in ch["inner"].items()},
               "inner_below_half": {r: v["n_below_half"] for r, v in ch["inner"].items()}}
    rec["prevalence_estimator"] = est
    if ch is not None:
        rec["inner_prevalence_mae"] = ch.get("inner_prevalence_mae", {})
    return rec["rule"], rec


def score_fold(cfg, graphs: dict, fold, seed: int, scores: dict) -> tuple[list[dict], pd.DataFrame]:
    from spagraph.decide.calibration import reliability
    from spagraph.decide.core import decide_rules
    from spagraph.train.metrics import binary_metrics
    state = fold_state(cfg, graphs, fold, scores)
    rule, choice = fold_rule(cfg, graphs, fold)
    cal = state.calibration
    rows, preds = [], []
    # protocol fit has no test slice: its validation slices are reported, marked as such
    role = "test" if fold.test else "validation"
    for t in (fold.test or fold.val):
        g, s = graphs[t], np.asarray(scores[t], dtype=float)
        ei = g.edge_index_0.numpy() if hasattr(g, "edge_index_0") else None
        sd = decide_rules(s, state, RULES, ei)          # labels of t are not an input
        d = sd.rules[rule]
        y = g.y.numpy()
        m = ~np.isnan(y)
        row = {"slice": t, "seed": seed, **({"role": role} if role != "test" else {}), "rule": rule, "rule_choice": choice, "threshold_method": d.used,
               "threshold": float(d.threshold), "flags": list(d.flags), "fallback": d.fallback,
               "predicted_fraction": float(d.pred.mean()) if len(d.pred) else None,
               "prevalence_em": sd.prevalence, "prevalence_mixture": sd.prevalence_mixture,
               "prevalence_estimate": sd.prevalence if choice["prevalence_estimator"] == "em" else sd.prevalence_mixture,
               "bimodal": sd.bimodal, "val_threshold": float(state.val_f1), "youden_threshold": float(state.val_youden),
               "calibration": {"kind": cal.kind, "a": cal.a, "b": cal.b, "prior": cal.prior, "fitted_on": cal.fitted_on},
               "quantile_threshold": sd.rules["quantile_beta"].threshold,
               "quantile_method": sd.rules["quantile_beta"].used,
               "mixture_threshold": sd.rules["mixture"].threshold, "mixture_method": sd.rules["mixture"].used}
        if m.any():
            yy = y[m].astype(int)
            r = binary_metrics(yy, s[m], 0.5)            # AUC / AP of the raw scores (ranking only)
            row.update({k: r[k] for k in ("n", "n_pos", "auc", "ap", "undefined")})
            row.update(_calls_metrics(yy, d.pred[m]))
            true = float(yy.mean())
            rel = reliability(yy, sd.prob[m])
            row.update({"true_fraction": true, "ece": rel["ece"],
                        "prevalence_error": (abs(row["prevalence_estimate"] - true)
                                             if row["prevalence_estimate"] is not None else None),
                        "prevalence_error_em": abs(sd.prevalence - true) if sd.prevalence is not None else None,
                        "prevalence_error_mixture": (abs(sd.prevalence_mixture - true)
                                                     if sd.prevalence_mixture is not None else None)})
            per = {}
            for rn, dr in sd.rules.items():
                cm = _calls_metrics(yy, dr.pred[m])
                pf = float(dr.pred[m].mean())
                per[rn] = {"threshold": dr.threshold, "used": dr.used, "pred_fraction": pf, **cm,
                           "prevalence_error": abs(pf - true), "flags": dr.flags}
                for k in ("f1", "sensitivity", "specificity", "prevalence_error"):
                    row[f"{k}_{rn}"] = per[rn][k]
            row["rules"] = per
            # names kept from earlier metrics.json files
            row["f1_val_threshold"] = per["val_f1"]["f1"]
            row["f1_quantile"] = per["quantile_beta"]["f1"]
            row["f1_mixture"] = per["mixture"]["f1"]
            row["f1_val_youden"] = per["val_youden"]["f1"]
            row["f1_fixed_0.5"] = per["fixed"]["f1"]
        else:
            row.update({"n": 0, "undefined": ["no labels on this slice"]})
        rows.append(row)
        preds.append(pd.DataFrame({"slice": t, "spot": g.spot_ids, "seed": seed, "score": sd.prob,
                                   "pred": d.pred.astype(int),
                                   "label": pd.array(np.where(m, y, np.nan), dtype="Float32").astype("Int8"),
                                   "raw_score": s}))
    return rows, pd.concat(preds, ignore_index=True)


def summarise_decisions(rows: list[dict]) -> dict:
    """Run-level decision summary: prevalence MAE over slices, the rule per fold, every rule side by
    side (means over slices of the per-slice means over seeds; worst slice's sensitivity/specificity)."""
    df = pd.DataFrame([{k: r.get(k) for k in ("slice", "seed", "rule", "prevalence_error", "prevalence_error_em",
                                              "prevalence_error_mixture", "flags") + RULE_KEYS}
                       for r in rows])
    if df.empty:
        return {}
    out: dict = {}
    per_slice = df.groupby("slice", sort=False)
    pe = pd.to_numeric(df["prevalence_error"], errors="coerce")
    out["prevalence_mae"] = float(pe.groupby(df["slice"]).mean().mean()) if pe.notna().any() else None
    for k in ("em", "mixture"):
        v = pd.to_numeric(df[f"prevalence_error_{k}"], errors="coerce")
        out[f"prevalence_mae_{k}"] = float(v.groupby(df["slice"]).mean().mean()) if v.notna().any() else None
    table = {}
    for r in RULES:
        cols = {k: f"{k}_{r}" for k in ("f1", "sensitivity", "specificity", "prevalence_error")}
        if cols["f1"] not in df or pd.to_numeric(df[cols["f1"]], errors="coerce").isna().all():
            continue
        sm = {k: pd.to_numeric(df[c], errors="coerce").groupby(df["slice"]).mean() for k, c in cols.items()}
        table[r] = {"f1": float(sm["f1"].mean()), "sensitivity": float(sm["sensitivity"].mean()),
                    "specificity": float(sm["specificity"].mean()), "prevalence_error": float(sm["prevalence_error"].mean()),
                    "min_sensitivity": float(sm["sensitivity"].min()), "min_specificity": float(sm["specificity"].min())}
    out["rules"] = table
    out["rule_per_slice"] = {str(s): sorted(set(map(str, g["rule"]))) for s, g in per_slice}
    out["degenerate"] = [f"{r['slice']}/seed{r['seed']}" for r in rows if "degenerate" in (r.get("flags") or [])]
    return out
