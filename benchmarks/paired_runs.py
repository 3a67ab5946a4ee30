"""Paired per-section comparison of two finished runs on the same folds (e.g. with and without
``pretrain:``): per-section test AUC, the paired difference (mean ± SE over sections), better / worse
sections, and how often the deep model was kept over the linear prior (best epoch >= 0).

    python benchmarks/paired_runs.py RUN_WITHOUT RUN_WITH

Each RUN is a ``spagraph run`` output folder (its ``metrics.json``). AUCs of several seeds are
averaged per section before pairing; sections are paired by name.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def per_section(run: Path) -> dict[str, dict]:
    rows = json.loads((Path(run) / "metrics.json").read_text())["per_slice"]
    acc: dict[str, dict] = defaultdict(lambda: {"auc": [], "deep": 0, "runs": 0})
    for r in rows:
        if r.get("auc") is None:
            continue
        a = acc[r["slice"]]
        a["auc"].append(float(r["auc"]))
        a["runs"] += 1
        a["deep"] += int((r.get("best_epoch") if r.get("best_epoch") is not None else -1) >= 0)
    return {s: {"auc": float(np.mean(v["auc"])), "deep": v["deep"], "runs": v["runs"]} for s, v in acc.items()}


def compare(base: Path, new: Path) -> dict:
    a, b = per_section(base), per_section(new)
    names = [s for s in a if s in b]
    from spagraph.bench.table import paired_difference
    d = np.array([b[s]["auc"] - a[s]["auc"] for s in names])
    p = paired_difference(d)
    return {"sections": names, "base": a, "new": b, "diff": dict(zip(names, d.tolist())),
            "mean_base": float(np.mean([a[s]["auc"] for s in names])),
            "mean_new": float(np.mean([b[s]["auc"] for s in names])),
            "mean_diff": p["mean"], "se_diff": p["se"], "wilcoxon_p": p["wilcoxon_p"],
            "better": [s for s, x in zip(names, d) if x > 5e-4], "worse": [s for s, x in zip(names, d) if x < -5e-4],
            "deep_base": sum(a[s]["deep"] for s in names), "deep_new": sum(b[s]["deep"] for s in names),
            "runs": sum(a[s]["runs"] for s in names)}


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    r = compare(Path(argv[0]), Path(argv[1]))
    print(f"{'section':8} {'base AUC':>9} {'new AUC':>9} {'diff':>8}  deep kept (base/new)")
    for s in r["sections"]:
        print(f"{s:8} {r['base'][s]['auc']:9.4f} {r['new'][s]['auc']:9.4f} {r['diff'][s]:+8.4f}  "
              f"{r['base'][s]['deep']}/{r['new'][s]['deep']} of {r['base'][s]['runs']}")
    print(f"mean     {r['mean_base']:9.4f} {r['mean_new']:9.4f} {r['mean_diff']:+8.4f} ± {r['se_diff']:.4f} (SE over "
          f"{len(r['sections'])} sections)")
    print(f"better (> +0.0005): {', '.join(r['better']) or '-'}; worse (< -0.0005): {', '.join(r['worse']) or '-'}")
    print(f"deep model kept over the prior: {r['deep_base']} of {r['runs']} (base), {r['deep_new']} of {r['runs']} (new)")


if __name__ == "__main__":
    main(sys.argv[1:])
