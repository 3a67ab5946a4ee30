"""her2st leave-one-out, sequential vs Ray with N workers, side by side in one invocation.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_loso.py [--seeds 0] [--workers 2]

Runs ``experiments/her2st_loso.yaml`` (with ``--seeds``) twice: the local executor (one process,
torch 1 thread) and a local Ray with ``--workers`` CPUs (one fold x seed task per CPU, torch 1
thread each); prints both wall times, the speed-up, and whether metrics.json's per-slice rows and
predictions.csv are identical.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--config", default=str(ROOT / "experiments" / "her2st_loso.yaml"))
    ap.add_argument("--set", dest="sets", nargs="*", default=[])
    ap.add_argument("--out", default="runs/ray_loso_bench")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from spagraph.experiment.config import load_config
    from spagraph.experiment.executor import LocalExecutor, RayExecutor
    from spagraph.experiment.runner import run_experiment
    cfg = load_config(a.config, [f"train.seeds={a.seeds}", "track.mode=disabled", *a.sets])
    out = Path(a.out)
    walls = {}
    for kind in ("sequential", "ray"):
        shutil.rmtree(out / kind, ignore_errors=True)
        ex = LocalExecutor() if kind == "sequential" else RayExecutor(num_cpus=a.workers, threads=1)
        t = time.time()
        try:
            run_experiment(cfg, out / kind, progress=False, write_maps=False, executor=ex,
                           base_dir=Path(a.config).resolve().parent)
        finally:
            ex.shutdown()
        walls[kind] = time.time() - t
        print(f"{kind}: {walls[kind]:.1f} s", flush=True)
    m = [json.loads((out / k / "metrics.json").read_text()) for k in ("sequential", "ray")]
    same = m[0]["per_slice"] == m[1]["per_slice"] and \
        (out / "sequential" / "predictions.csv").read_bytes() == (out / "ray" / "predictions.csv").read_bytes()
    print(f"\n| run | folds x seeds | wall s | mean AUC |\n|---|---|---|---|")
    for k, mm in zip(("sequential", "ray"), m):
        print(f"| {k}{'' if k == 'sequential' else f' ({a.workers} workers)'} | {len(mm['per_slice'])} | "
              f"{walls[k]:.1f} | {mm['mean']['auc']:.4f} |")
    print(f"\nspeed-up {walls['sequential'] / walls['ray']:.2f}x; identical per-slice metrics and predictions: {same}")
    print(f"load average at end: {os.getloadavg()}; cpu count {os.cpu_count()}")


if __name__ == "__main__":
    main()
