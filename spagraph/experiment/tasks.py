"""The units of work of ``run``: one fold's embeddings + graphs, and one (fold, seed) fit.

Both are plain top-level functions so that an executor can ship them to another process
(:mod:`spagraph.experiment.executor`). ``fit_task`` writes its own atomic result files
(``folds/<key>.json`` + ``.csv``) and returns the same content, so that the driver can write them
where the worker's disk is not the driver's (a Ray cluster without shared storage).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from spagraph.utils import atomic_path, atomic_write_json

log = logging.getLogger("spagraph")


def task_key(fold_name: str, seed: int) -> str:
    from spagraph.experiment.runner import _safe
    return f"{_safe(fold_name)}_s{seed}"


def prepare_fold(cfg, slices: dict, fold, base_dir=None) -> dict:
    """Embeddings fitted on ``fold.train`` only and one graph per slice of the fold (computed once
    per fold, shared by its seeds); with ``pretrain.enabled`` also the fold's pretrained gene
    stream (:func:`spagraph.pretrain.ssl.pretrain_fold`: the pool minus the test patients)."""
    from spagraph.experiment.runner import _jsonable, embed_and_graph
    graphs, report = embed_and_graph(cfg, slices, fold)
    report = dict(report or {})
    encoder = report.pop("gene_encoder", None)     # an object: saved with models, not written to JSON
    pretrained = None
    if cfg.pretrain.enabled:
        from spagraph.pretrain.ssl import pretrain_fold
        pt = pretrain_fold(cfg, list(fold.test), encoder, base_dir)
        pretrained = pt["state"]
        h = pt["history"]
        report["pretrain"] = {"sections": pt["sections"], "key": pt["key"], "cache": pt["cache"],
                              "seconds": pt["seconds"], "loss_first": h[0]["loss"], "loss_last": h[-1]["loss"]}
    return {"graphs": graphs, "report": _jsonable(report), "gene_encoder": encoder, "pretrained": pretrained}


def fit_task(cfg, prep: dict, fold, seed: int, out: str, on_epoch=None, digests: dict | None = None,
             slices: dict | None = None, base_dir=None, save_models: bool = False) -> dict:
    """Fit one (fold, seed), score it, write ``folds/<key>.json`` + ``.csv`` atomically; return them.

    The epoch checkpoint ``checkpoints/<key>.pt`` (continued by ``--resume``) carries the config hash
    and input digests; it is removed once the result is written.
    """
    from spagraph.experiment.resume import fold_inputs, hashed_config
    from spagraph.experiment.runner import fit_predict, score_fold
    out = Path(out)
    graphs = prep["graphs"]
    key = task_key(fold.name, seed)
    inputs = fold_inputs(digests, fold.train + fold.val + fold.test) if digests else None
    ckpt = out / "checkpoints" / f"{key}.pt"
    stamp = {"config_hash": cfg.config_hash(), "config": hashed_config(cfg), "inputs": inputs}

    def hook(epoch, rec):
        log.debug("%s seed %d epoch %d: %s", fold.name, seed, epoch, rec)
        if on_epoch is not None:
            on_epoch(fold.name, seed, epoch, rec)

    scores, info = fit_predict(cfg, graphs, fold, seed, on_epoch=hook, checkpoint=ckpt, stamp=stamp,
                               pretrained=prep.get("pretrained"))
    rows, preds = score_fold(cfg, graphs, fold, seed, scores)
    for r in rows:
        r["best_epoch"] = info.get("best_epoch")
        r["best_val_auc"] = info.get("best_val_auc")
        if info.get("kept_prior_by_se"):
            r["kept_prior_by_se"] = True
    fold_report = {"train": fold.train, "val": fold.val, "test": fold.test, "embed": prep["report"]}
    res = {"fold_name": fold.name, "seed": seed, "key": key, "rows": rows, "preds": preds, "fold": fold_report,
           "history": info.get("history"), **stamp}
    write_task_result(out, res)
    if save_models and info.get("model") is not None:
        from spagraph.experiment.runner import model_path
        from spagraph.train.saved import save_model
        save_model(info["model"], cfg, graphs, fold, model_path(out, cfg, fold, seed), slices=slices,
                   base_dir=base_dir, seed=seed, gene_encoder=prep.get("gene_encoder"), val_metrics=rows)
    ckpt.unlink(missing_ok=True)
    log.info("%s seed %d: test AUC %s", fold.name, seed,
             ", ".join(f"{r['slice']} {r['auc']:.3f}" for r in rows if r.get("auc") is not None) or "n/a")
    return res


def write_task_result(out: Path, res: dict) -> None:
    """``folds/<key>.csv`` then ``folds/<key>.json`` (the JSON marks the task done), each atomic;
    nothing when the JSON already exists (the worker wrote it)."""
    jpath, cpath = Path(out) / "folds" / f"{res['key']}.json", Path(out) / "folds" / f"{res['key']}.csv"
    if jpath.exists() or res.get("resumed"):
        return
    preds: pd.DataFrame = res["preds"]
    with atomic_path(cpath) as tmp:
        preds.to_csv(tmp, index=False)
    atomic_write_json(jpath, {"rows": res["rows"], "fold": res["fold"], "config_hash": res["config_hash"],
                              "config": res["config"], "inputs": res["inputs"]})


def read_task_rows(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())["rows"]
