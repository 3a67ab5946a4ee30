"""Self-training on or off per outer fold, chosen by inner leave-one-section-out (her2st, nested).

For each outer test section X (never read here while choosing): over the other sections, each
inner fold's linear prior (its training sections only, the outer fold's nested C and smoothing,
embeddings fitted on the inner training sections, seed 0) scores the inner test section, alone
and after transductive self-training (:mod:`spagraph.train.selftrain`, the ``selftrain`` variant's
settings, the inner test section's labels stripped); self-training is switched on for X when the
mean inner gain (AUC after - before) is > 0. Writes ``OUT/gate/<X>.json`` (resumable).

Then, from ``benchmarks/deep_ideas.py``'s ``selftrain`` records in ``RECORDS`` (X scored by the
model the Hanley-McNeil rule keeps, ``test_sel_hanley_mcneil``, and after self-training from it,
``test_selftrain``), the gated model's AUC per section (mean over seeds) and its paired difference
from the prior (mean +/- SE over sections, better / worse, Wilcoxon p).

    OMP_NUM_THREADS=1 python benchmarks/selftrain_gate.py experiments/her2st_loso.yaml \\
        --params-from RUN/nested --records /tmp/selftrain_ideas --out /tmp/selftrain_gate
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deep_ideas import VARIANTS, _auc, nested_params, paired  # noqa: E402


def inner_gate(cfg, slices: dict, groups: dict, test: str, seed: int = 0) -> dict:
    """Inner-LOSO gains of self-training over the prior on the sections other than ``test``."""
    from spagraph.experiment.data import plan_folds
    from spagraph.experiment.runner import embed_and_graph, model_settings, train_settings
    from spagraph.train.adapt import strip_labels
    from spagraph.train.fit import build_model, predict_scores
    from spagraph.train.selftrain import self_train_scores
    rest = {n: slices[n] for n in slices if n != test}
    ms, ts = model_settings(cfg), train_settings(cfg)
    per = {}
    for f in plan_folds(cfg, list(rest), {n: groups[n] for n in rest}):
        t0 = time.time()
        g = embed_and_graph(cfg, rest, f)[0]
        model = build_model([g[n] for n in f.train], ms, ts, seed)
        x = g[f.test[0]]
        before = _auc(x, predict_scores(model, x, ts))
        after = _auc(x, self_train_scores(model, strip_labels(x), ts, seed))
        per[f.test[0]] = {"prior": before, "selftrain": after, "seconds": round(time.time() - t0, 1)}
        print(f"  outer {test} inner {f.test[0]}: prior {before:.4f} self-trained {after:.4f} "
              f"({per[f.test[0]]['seconds']} s, load {os.getloadavg()[0]:.2f})", flush=True)
    gain = float(np.mean([v["selftrain"] - v["prior"] for v in per.values()]))
    return {"inner": per, "mean_gain": gain, "on": bool(gain > 0)}


def gated_summary(records_dir: Path, gates: dict, sections: list[str]) -> dict:
    recs = [json.loads(p.read_text()) for p in sorted((records_dir / "records").glob("selftrain_*.json"))]
    sec = {}
    for t in sections:
        rr = [r for r in recs if r["test"] == t]
        if not rr or t not in gates:
            continue
        key = "test_selftrain" if gates[t]["on"] else "test_sel_hanley_mcneil"
        sec[t] = {"prior": float(np.mean([r["test_prior"] for r in rr])), "gated": float(np.mean([r[key] for r in rr])),
                  "on": gates[t]["on"], "inner_gain": gates[t]["mean_gain"], "seeds": sorted(r["seed"] for r in rr)}
    ts = list(sec)
    return {"per_section": sec, "mean_prior": float(np.mean([sec[t]["prior"] for t in ts])),
            "mean_gated": float(np.mean([sec[t]["gated"] for t in ts])),
            "gated_vs_prior": paired([sec[t]["gated"] for t in ts], [sec[t]["prior"] for t in ts]),
            "n_on": int(sum(sec[t]["on"] for t in ts))}


def main() -> None:
    import torch
    from spagraph.experiment.config import load_config
    from spagraph.experiment.data import load_slices
    from spagraph.experiment.tune import apply_params
    from spagraph.utils import atomic_write_json
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--params-from", required=True, help="a nested run's nested/ folder (inner-LOSO choices per fold)")
    ap.add_argument("--records", required=True, help="deep_ideas.py --out folder holding selftrain records")
    ap.add_argument("--sections", nargs="*", default=None)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out); (out / "gate").mkdir(parents=True, exist_ok=True)
    cfg = load_config(a.config)
    sections = [n for src in cfg.data.sources for n in (src.names or [])]
    todo = [t for t in (a.sections or sections) if not (out / "gate" / f"{t}.json").exists()]
    if todo:
        slices, groups = load_slices(cfg.data)
        for test in todo:
            params = nested_params(cfg, slices, groups, test, Path(a.params_from))
            vcfg = apply_params(apply_params(cfg, params), VARIANTS["selftrain"])
            g = inner_gate(vcfg, slices, groups, test)
            g.update(test=test, params=params, load=os.getloadavg()[0])
            atomic_write_json(out / "gate" / f"{test}.json", g)
            print(f"{test}: inner mean gain {g['mean_gain']:+.4f} -> self-training {'on' if g['on'] else 'off'}", flush=True)
    gates = {p.stem: json.loads(p.read_text()) for p in (out / "gate").glob("*.json")}
    s = gated_summary(Path(a.records), gates, sections)
    atomic_write_json(out / "summary.json", s)
    p = s["gated_vs_prior"]
    print(f"gated: mean AUC {s['mean_gated']:.4f} vs prior {s['mean_prior']:.4f}; Δ {p['mean']:+.4f} ± {p['se']:.4f} "
          f"({p['better']}/{p['worse']}, p={p['wilcoxon_p']:.2f}); self-training on in {s['n_on']}/{len(s['per_section'])} folds")
    print(" ".join(f"{t}:{v['gated']:.3f}/{v['prior']:.3f}({'on' if v['on'] else 'off'} {v['inner_gain']:+.3f})"
                   for t, v in s["per_section"].items()))


if __name__ == "__main__":
    main()
