"""Predict a cohort of slices with one saved model: one task per slice on an executor.

``predict_cohort(model_dir, [(path, slice_name), ...], out_dir, executor)`` writes
``out_dir/<slice>.h5ad`` + ``.csv`` per slice (atomic, as ``spagraph predict`` does) and
``out_dir/cohort_summary.csv`` (one row per slice: spots, spots predicted cancer, threshold,
seconds, worker pid, peak RSS of the worker). A slice whose result files exist is skipped
(``resume``). A failed slice does not stop the others; the error names every failed slice.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pandas as pd

from spagraph.utils import atomic_path

log = logging.getLogger("spagraph")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def predict_one(job: dict) -> dict:
    """One slice: read, predict with the saved model(s), write ``<slice>.h5ad`` + ``.csv``."""
    import resource
    from spagraph.io import read_slice
    from spagraph.train.saved import load_models, predict_slice, write_prediction
    t0 = time.perf_counter()
    models = load_models(job["model_dir"])
    adata = read_slice(job["path"], slice_name=job["slice"])
    name = job["name"]
    res = predict_slice(models, adata, name=name, **job["kwargs"])
    write_prediction(adata, res["table"], Path(job["out"]))
    t = res["table"]
    return {"slice": name, "spots": int(len(t)), "pred_cancer": int(t["pred"].sum()),
            "threshold": float(res["threshold"]), "threshold_method": res["threshold_method"],
            "seconds": round(time.perf_counter() - t0, 3), "worker_pid": os.getpid(),
            "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def predict_cohort(model_dir: str | Path, slices: list[tuple[str | Path, str | None]], out_dir: str | Path,
                   executor=None, resume: bool = True, **predict_kwargs) -> pd.DataFrame:
    """Predict every ``(path, slice_name)`` of ``slices`` with the saved model(s) in ``model_dir``.

    ``predict_kwargs`` go to :func:`spagraph.train.saved.predict_slice` (``n_mc``, ...). Returns
    the cohort summary (also written to ``out_dir/cohort_summary.csv``), in the order of ``slices``.
    """
    from spagraph.experiment.executor import map_tasks
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs, names = [], []
    for path, sl in slices:
        name = str(sl or Path(path).stem)
        if name in names:
            raise ValueError(f"slice name {name!r} appears twice in the cohort")
        names.append(name)
        jobs.append({"model_dir": str(model_dir), "path": str(path), "slice": sl, "name": name,
                     "out": str(out / f"{_safe(name)}.h5ad"), "kwargs": predict_kwargs})
    todo = [j for j in jobs if not (resume and Path(j["out"]).exists() and Path(j["out"]).with_suffix(".csv").exists())]
    if len(todo) < len(jobs):
        log.info("cohort: %d of %d slices already predicted (skipped)", len(jobs) - len(todo), len(jobs))
    t0 = time.perf_counter()
    rows = map_tasks(predict_one, todo, names=[f"slice {j['name']}" for j in todo], executor=executor)
    wall = time.perf_counter() - t0
    by = {r["slice"]: r for r in rows}
    summary = pd.DataFrame([by.get(n, {"slice": n, "skipped": True}) for n in names])
    with atomic_path(out / "cohort_summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    n_spots = sum(r["spots"] for r in rows)
    log.info("cohort: %d slices, %d spots in %.1f s (%.0f spots/s)", len(rows), n_spots, wall,
             n_spots / wall if wall > 0 else float("nan"))
    summary.attrs["wall_s"] = wall
    return summary
