"""Cohort prediction: the 36 her2st sections predicted by one saved model, as one cohort job.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cohort.py [--workers 1 2] [--mc-passes 20]

Protocol: one model is trained once (her2st_loso.yaml's settings, seed 0, protocol ``fixed``:
train on A1-F1, validate on G2, test H1; saved with ``save_models``), then every section in
``../shared/data/her2st`` (8 annotated) and ``../shared/data/her2st_unlabelled`` (28) is read,
embedded with the saved gene encoder, scored (with ``--mc-passes`` MC-dropout passes) and written
(``<section>.h5ad`` + ``.csv``) by :func:`spagraph.experiment.cohort.predict_cohort`, once per worker
count (1 = the local executor, in this process; N > 1 = a local Ray with N CPUs). Prints spots/s
and each worker's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def train_model(out: Path) -> Path:
    from spagraph.experiment.config import load_config
    from spagraph.experiment.runner import run_experiment
    model = out / "run" / "models" / "fixed_s0"
    if model.exists():
        return model
    cfg = load_config(ROOT / "experiments" / "her2st_loso.yaml",
                      ["train.seeds=[0]", "protocol.kind=fixed", "data.train=[A1,B1,C1,D1,E1,F1]",
                       "data.validate=[G2]", "data.test=[H1]", "track.mode=disabled"])
    run_experiment(cfg, out / "run", progress=False, write_maps=False, save_models=True,
                   base_dir=ROOT / "experiments")
    return model


def sections() -> list[tuple[Path, str]]:
    out = []
    for root in (DATA / "her2st", DATA / "her2st_unlabelled"):
        for p in sorted((root / "counts").glob("*.tsv.gz")):
            out.append((root, p.name.split(".")[0]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mc-passes", type=int, default=20)
    ap.add_argument("--out", default="runs/cohort_bench")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from spagraph.experiment.cohort import predict_cohort
    from spagraph.experiment.executor import LocalExecutor, RayExecutor
    out = Path(a.out)
    t = time.time()
    model = train_model(out)
    print(f"model: {model} ({time.time() - t:.0f} s incl. training)", flush=True)
    secs = sections()
    print(f"{len(secs)} sections", flush=True)
    recs = []
    for w in a.workers:
        dest = out / f"pred_w{w}"
        shutil.rmtree(dest, ignore_errors=True)
        ex = LocalExecutor() if w == 1 else RayExecutor(num_cpus=w, threads=1)
        try:
            t = time.time()
            s = predict_cohort(model, secs, dest, executor=ex, resume=False, n_mc=a.mc_passes)
            wall = time.time() - t
        finally:
            ex.shutdown()
        n = int(s["spots"].sum())
        per_worker = s.groupby("worker_pid")["worker_peak_rss_mb"].max()
        rec = {"workers": w, "sections": len(s), "spots": n, "wall_s": round(wall, 1), "spots_per_s": round(n / wall, 1),
               "peak_rss_mb_per_worker": per_worker.round(0).tolist(), "files": len(list(dest.glob("*.h5ad")))}
        recs.append(rec)
        print(json.dumps(rec), flush=True)
    print("\n| workers | sections | spots | wall s | spots/s | peak RSS per worker MiB |\n|---|---|---|---|---|---|")
    for r in recs:
        print(f"| {r['workers']} | {r['sections']} | {r['spots']:,} | {r['wall_s']} | {r['spots_per_s']} | "
              f"{', '.join(f'{x:.0f}' for x in r['peak_rss_mb_per_worker'])} |")
    print(f"\nload average at end: {os.getloadavg()}; cpu count {os.cpu_count()}; mc passes {a.mc_passes}")


if __name__ == "__main__":
    sys.exit(main())
