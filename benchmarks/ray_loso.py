"""her2st leave-one-out, sequential vs Ray with N workers, side by side in one invocation.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_loso.py [--seeds 0] [--workers 2]

Runs ``experiments/her2st_loso.yaml`` (with ``--seeds``) twice: the local executor (one process,
torch 1 thread) and a local Ray with ``--workers`` CPUs (one fold x seed task per CPU, torch 1
thread each); prints both wall times, the speed-up, and whether metrics.json's per-slice rows and
predictions.csv are identical.

With ``--overlap`` the Ray side does what ``spagraph run --executor ray`` does: the workers' warm-up
imports run while the driver reads and embeds the slices, so its start-up is ``ray.init`` alone and
the warm-up falls inside the run's wall time.

Start-up is timed apart from the run on both sides: the driver imports what a task needs
(torch, PyG, scanpy, spagraph's runner: ``executor.WARM_MODULES``) before its sequential run, and
Ray's start (``ray.init``) plus the workers' warm-up imports are the Ray side's start-up. The
speed-up is printed without and with start-up; the sequential run's CPU time (user + sys) and
the load average are printed too, since a wall time on a shared machine is not the idle figure
(Ray's workers are not this process's children: their CPU time is not counted, so the Ray row
shows only the driver's).
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
    ap.add_argument("--overlap", action="store_true", help="as spagraph run does: do not wait for the Ray workers' warm-up before the run starts")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from spagraph.experiment.config import load_config
    from spagraph.experiment.executor import WARM_MODULES, LocalExecutor, RayExecutor, import_modules
    from spagraph.experiment.runner import run_experiment
    cfg = load_config(a.config, [f"train.seeds={a.seeds}", "track.mode=disabled", *a.sets])
    out = Path(a.out)
    walls, startup, cpu = {}, {}, {}
    print(f"load average at start: {os.getloadavg()}; cpu count {os.cpu_count()}", flush=True)
    for kind in ("sequential", "ray"):
        shutil.rmtree(out / kind, ignore_errors=True)
        c0, t = _cpu(), time.time()
        if kind == "sequential":
            import_modules(WARM_MODULES)
            ex = LocalExecutor()
        else:
            ex = RayExecutor(num_cpus=a.workers, threads=1)
            if not a.overlap:
                ex.wait_warm()
        startup[kind] = time.time() - t
        t = time.time()
        try:
            run_experiment(cfg, out / kind, progress=False, write_maps=False, executor=ex,
                           base_dir=Path(a.config).resolve().parent)
            walls[kind] = time.time() - t
        finally:
            ex.shutdown()
        cpu[kind] = _cpu() - c0
        print(f"{kind}: start-up {startup[kind]:.1f} s, run {walls[kind]:.1f} s wall; CPU (user+sys of the driver, "
              f"start-up included) {cpu[kind]:.1f} s; load {os.getloadavg()[0]:.2f}", flush=True)
    m = [json.loads((out / k / "metrics.json").read_text()) for k in ("sequential", "ray")]
    same = m[0]["per_slice"] == m[1]["per_slice"] and \
        (out / "sequential" / "predictions.csv").read_bytes() == (out / "ray" / "predictions.csv").read_bytes()
    print(f"\n| run | folds x seeds | start-up s | run wall s | CPU s | mean AUC |\n|---|---|---|---|---|---|")
    for k, mm in zip(("sequential", "ray"), m):
        print(f"| {k}{'' if k == 'sequential' else f' ({a.workers} workers)'} | {len(mm['per_slice'])} | "
              f"{startup[k]:.1f} | {walls[k]:.1f} | {cpu[k]:.1f} | {mm['mean']['auc']:.4f} |")
    tot = {k: walls[k] + startup[k] for k in walls}
    print(f"\nspeed-up {walls['sequential'] / walls['ray']:.2f}x (run), {tot['sequential'] / tot['ray']:.2f}x "
          f"(start-up included); identical per-slice metrics and predictions: {same}")
    print(f"load average at end: {os.getloadavg()}; cpu count {os.cpu_count()}")


def _cpu() -> float:
    """User + system CPU seconds of this process and its finished children (Ray's processes once shut down)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


if __name__ == "__main__":
    main()
