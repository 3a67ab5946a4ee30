"""Every threshold rule side by side for a finished run: `python benchmarks/decisions.py RUN_DIR`.

Reads RUN_DIR/metrics.json (written by `spagraph run`) and prints markdown tables: per rule F1,
sensitivity, specificity, |predicted - true cancer fraction| (means over sections of per-section
means over seeds) and the worst section's sensitivity / specificity; the rule in force per section
(``auto``: chosen by inner folds) with its F1 / sensitivity / specificity, the label-free prevalence
estimates against the true fraction, ECE and guard flags. Nothing is recomputed, except two
*ceilings* from RUN_DIR/predictions.csv that use the test labels (so they are bounds, not methods):
the F1 of cutting each section at its true cancer fraction, and the best F1 any per-section threshold
reaches.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def _f(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def _load(run_dir: Path) -> dict:
    """metrics.json, or (a run still going) the finished folds' rows from folds/*.json, summarised the
    same way, with a note of how many (fold, seed) tasks are in."""
    if (run_dir / "metrics.json").exists():
        return json.loads((run_dir / "metrics.json").read_text())
    from spagraph.decide.evaluate import EXTRA_KEYS, summarise_decisions
    from spagraph.experiment.runner import METRIC_KEYS
    from spagraph.train.metrics import mean_std
    rows = [r for f in sorted((run_dir / "folds").glob("*.json")) for r in json.loads(f.read_text())["rows"]]
    if not rows:
        sys.exit(f"{run_dir}: no metrics.json and no finished fold yet")
    mean, std, _ = mean_std(rows, METRIC_KEYS + EXTRA_KEYS)
    print(f"(partial: {len(rows)} finished slice x seed rows from {run_dir / 'folds'})\n")
    return {"experiment": run_dir.name, "protocol": "?", "threshold_method": rows[0].get("rule_choice", {}).get("rule"),
            "per_slice": rows, "mean": mean, "std": std, "decisions": summarise_decisions(rows)}


def ceilings(pred_csv: Path) -> dict | None:
    """Label-using bounds per section (means over seeds): F1 when each section is cut at its true
    cancer fraction (rank of the raw score), and the best F1 over every threshold on the section."""
    if not pred_csv.exists():
        return None
    from spagraph.train.metrics import call_metrics
    p = pd.read_csv(pred_csv, usecols=["slice", "seed", "raw_score", "label"])
    rows = []
    for (s, seed), g in p.groupby(["slice", "seed"], sort=False):
        g = g[g["label"].notna()]
        y = g["label"].to_numpy(int)
        if len(np.unique(y)) < 2:
            continue
        o = np.argsort(-g["raw_score"].to_numpy(), kind="stable")
        ys = y[o]
        tp = np.cumsum(ys)
        f1 = 2 * tp / (np.arange(1, len(ys) + 1) + ys.sum())       # call the top k cancer, k = 1..n
        k = int(round(ys.mean() * len(ys)))
        true_cut = call_metrics(y, (np.arange(len(y))[np.argsort(o)] < k).astype(int))["f1"]
        rows.append({"slice": s, "true_fraction_cut": true_cut, "best_threshold": float(f1.max())})
    df = pd.DataFrame(rows).groupby("slice", sort=False).mean()
    return {"true_fraction_cut": float(df["true_fraction_cut"].mean()), "best_threshold": float(df["best_threshold"].mean())}


def main(run_dir: str) -> None:
    m = _load(Path(run_dir))
    d = m.get("decisions") or {}
    rows = pd.DataFrame(m["per_slice"])
    n_seeds = rows.groupby("slice").size().max()
    print(f"# {m.get('experiment')} ({m['protocol']}, {rows['slice'].nunique()} sections x {n_seeds} seed(s), "
          f"threshold.method {m.get('threshold_method')})\n")
    print("| rule | F1 | sensitivity | specificity | abs. prevalence error | worst sensitivity | worst specificity |")
    print("|---|---|---|---|---|---|---|")
    prim = {k: float(rows.groupby("slice")[k].apply(lambda v: pd.to_numeric(v, errors="coerce").mean()).mean())
            for k in ("f1", "sensitivity", "specificity")}
    per_sec = rows.groupby("slice", sort=False)
    sens = per_sec["sensitivity"].apply(lambda v: pd.to_numeric(v, errors="coerce").mean())
    spec = per_sec["specificity"].apply(lambda v: pd.to_numeric(v, errors="coerce").mean())
    pe = rows.groupby("slice")["predicted_fraction"].mean() - rows.groupby("slice")["true_fraction"].mean()
    print(f"| **in force ({m.get('threshold_method')})** | **{prim['f1']:.3f}** | {prim['sensitivity']:.3f} | "
          f"{prim['specificity']:.3f} | {float(np.abs(pe).mean()):.3f} | {sens.min():.3f} | {spec.min():.3f} |")
    for r, v in (d.get("rules") or {}).items():
        print(f"| {r} | {v['f1']:.3f} | {v['sensitivity']:.3f} | {v['specificity']:.3f} | {v['prevalence_error']:.3f} | "
              f"{v['min_sensitivity']:.3f} | {v['min_specificity']:.3f} |")
    print(f"\nAUC {_f(m['mean'].get('auc'))}; prevalence MAE over sections (estimator chosen by inner folds) "
          f"{_f(d.get('prevalence_mae'))} (EM {_f(d.get('prevalence_mae_em'))}, mixture {_f(d.get('prevalence_mae_mixture'))}); "
          f"mean ECE over sections {_f(float(pd.to_numeric(rows['ece'], errors='coerce').groupby(rows['slice']).mean().mean()))}; "
          f"degenerate calls: {len(d.get('degenerate', []))}")
    c = ceilings(Path(run_dir) / "predictions.csv")
    if c:
        print(f"Ceilings (use the test labels; bounds, not methods): cut at the true cancer fraction F1 "
              f"{c['true_fraction_cut']:.3f}; best per-section threshold F1 {c['best_threshold']:.3f}")
    print()
    print("| section | rule(s) in force | F1 | sensitivity | specificity | est. fraction | true fraction | ECE | flags |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s, g in per_sec:
        num = lambda k: _f(pd.to_numeric(g[k], errors="coerce").mean()) if k in g else "n/a"
        rules = ", ".join(f"{r} x{c}" for r, c in g["rule"].value_counts().items())
        flags = sum(1 for f in g["flags"] if f)
        print(f"| {s} | {rules} | {num('f1')} | {num('sensitivity')} | {num('specificity')} | "
              f"{num('prevalence_estimate')} | {num('true_fraction')} | {num('ece')} | {flags or ''} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/decisions.py RUN_DIR")
    main(sys.argv[1])
