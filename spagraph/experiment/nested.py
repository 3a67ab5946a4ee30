"""Nested leave-one-slice-out: every choice made by inner folds of the outer training slices.

For each outer fold (test slice X, training slices T = every other slice):

1. **grid** (``nested.grid``): every combination of candidate values is scored by an inner
   leave-one-slice-out over T with a cheap scorer, the model's linear prior alone (fitted on the
   inner training slices, embeddings fitted there too; AUC on the inner test slice). The highest
   mean inner AUC wins (ties: the first combination in grid order).
2. **deep or prior** (``nested.choose_deep``): at that grid point, the full model (linear prior +
   MSFA / fusion residual, early stopping and the prior-override rule on the inner validation
   slice, one seed) is scored by the same inner folds; the outer fold runs the full model if its
   mean inner test AUC is higher than the prior's, the prior alone otherwise.
3. the outer fold is run with those choices exactly as :func:`spagraph.experiment.runner.run_experiment`
   runs a fold (its validation slice chooses the epoch and the thresholds; X is only predicted).

X is never loaded into steps 1-2 (they receive T's slices only). The choices, the inner AUCs
and their per-slice values are written to ``OUT/nested/<fold>.json`` and ``metrics.json``
(``nested``); rows carry ``nested_deep`` and ``nested_params``. Resumable per fold and seed.
"""
from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spagraph.experiment.config import ExperimentConfig, dump_config
from spagraph.utils import atomic_path, atomic_write_json

log = logging.getLogger("spagraph")


def grid_points(grid: dict[str, list]) -> list[dict]:
    """All combinations of a ``{key: [values]}`` grid, in order (the last key varies fastest)."""
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))] or [{}]


def _auc(g, scores: np.ndarray) -> float | None:
    from spagraph.train.metrics import binary_metrics
    m = g.label_mask.numpy()
    if m.sum() == 0:
        return None
    return binary_metrics(g.y.numpy()[m].astype(int), scores[m], 0.5)["auc"]


def prior_scores(cfg: ExperimentConfig, graphs: dict, train: list[str], seed: int, names: list[str]) -> dict:
    """Scores of the linear prior alone (deep part silent), fitted on ``train``: ``{name: (n,)}``."""
    from spagraph.experiment.runner import model_settings, train_settings
    from spagraph.train.fit import build_model, predict_scores
    ms = model_settings(cfg)
    if not (ms.linear_path and ms.linear_fit == "prior"):
        raise ValueError("nested selection scores candidates by the linear prior: set model.linear_path: true and "
                         "model.linear_fit: prior")
    model = build_model([graphs[n] for n in train], ms, train_settings(cfg), seed)
    return {n: predict_scores(model, graphs[n], train_settings(cfg)) for n in names}


def _without_nested(cfg: ExperimentConfig) -> ExperimentConfig:
    from spagraph.experiment.config import validate_config
    d = cfg.to_dict()
    d["nested"] = None
    return validate_config(d)


def choose(cfg: ExperimentConfig, slices: dict, groups: dict, progress=None) -> dict:
    """Steps 1-2 on ``slices`` (the outer fold's training slices only): the grid point, deep or
    prior, and every inner AUC that chose them."""
    from spagraph.experiment.data import plan_folds
    from spagraph.experiment.runner import embed_and_graph, model_settings, train_settings
    from spagraph.experiment.tune import apply_params
    from spagraph.train.fit import fit, predict_scores
    base = _without_nested(cfg)
    nc = cfg.nested
    inner = plan_folds(base, list(slices), groups)
    embed_keys = [k for k in nc.grid if k.split(".")[0] in ("embed", "graph")]
    cache: dict = {}

    def graphs_for(pcfg, params, fold):
        key = (fold.name, tuple((k, json.dumps(params[k])) for k in embed_keys))
        if key not in cache:
            cache[key] = embed_and_graph(pcfg, slices, fold)[0]
        return cache[key]

    table = []
    for params in grid_points(nc.grid):
        pcfg = apply_params(base, params)
        per = {}
        for f in inner:
            g = graphs_for(pcfg, params, f)
            per[f.test[0]] = _auc(g[f.test[0]], prior_scores(pcfg, g, f.train, nc.inner_seed, f.test)[f.test[0]])
        vals = [v for v in per.values() if v is not None]
        table.append({"params": params, "inner_auc": per, "mean": float(np.mean(vals)) if vals else float("nan")})
        if progress is not None:
            progress(f"grid {params}: inner prior AUC {table[-1]['mean']:.4f}")
    best = max(range(len(table)), key=lambda i: (table[i]["mean"], -i))
    params = table[best]["params"]
    out = {"params": params, "grid": table, "prior_inner_mean": table[best]["mean"], "deep": False}
    if nc.choose_deep:
        pcfg = apply_params(base, params)
        per = {}
        for f in inner:
            g = graphs_for(pcfg, params, f)
            from spagraph.train.adapt import strip_labels
            res = fit([g[n] for n in f.train], [g[n] for n in f.val], model_settings(pcfg), train_settings(pcfg),
                      nc.inner_seed, target=[strip_labels(g[n]) for n in f.test])   # used only with an alignment weight > 0
            per[f.test[0]] = _auc(g[f.test[0]], predict_scores(res.model, g[f.test[0]], train_settings(pcfg)))
        vals = [v for v in per.values() if v is not None]
        out["deep_inner_auc"] = per
        out["deep_inner_mean"] = float(np.mean(vals)) if vals else float("nan")
        out["deep"] = bool(out["deep_inner_mean"] > out["prior_inner_mean"])
        if progress is not None:
            progress(f"deep inner AUC {out['deep_inner_mean']:.4f} vs prior {out['prior_inner_mean']:.4f}")
    return out


def run_nested(cfg: ExperimentConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
               base_dir: Path | None = None, write_maps: bool = True) -> dict:
    """Nested leave-one-slice-out run of ``cfg`` (with a ``nested:`` block) into ``out_dir``:
    the same outputs as :func:`spagraph.experiment.runner.run_experiment`, plus ``nested/``."""
    from spagraph.experiment.data import load_slices, plan_folds
    from spagraph.experiment.runner import (_jsonable, _safe, embed_and_graph, fit_predict, score_fold, summarise,
                                            secondary_undetermined_as_negative, write_slice_maps)
    from spagraph.experiment.tune import apply_params
    if cfg.protocol.kind != "loso":
        raise ValueError(f"nested selection needs protocol.kind: loso (got {cfg.protocol.kind!r}); other protocols "
                         "never score their test slices during selection")
    out = Path(out_dir)
    for sub in ("folds", "nested"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if not resume:
        for f in list((out / "folds").glob("*")) + list((out / "nested").glob("*")):
            f.unlink()
    dump_config(cfg, out / "config.yaml")
    t0 = time.time()
    say = (lambda msg: log.info(msg)) if progress else None
    slices, groups = load_slices(cfg.data, base_dir)
    folds = plan_folds(cfg, list(slices), groups)
    rows_all, preds_all, fold_reports, choices = [], [], {}, {}
    for fold in folds:
        cpath = out / "nested" / f"{_safe(fold.name)}.json"
        if resume and cpath.exists():
            choice = json.loads(cpath.read_text())
        else:
            t1 = time.time()
            train_names = [n for n in slices if n not in fold.test]       # the outer test slice stays out
            choice = choose(cfg, {n: slices[n] for n in train_names}, {n: groups[n] for n in train_names}, say)
            choice["seconds"] = round(time.time() - t1, 1)
            atomic_write_json(cpath, _jsonable(choice))
        choices[fold.name] = choice
        log.info("fold %s: nested choice %s, %s", fold.name, choice["params"], "deep" if choice["deep"] else "prior")
        fcfg = apply_params(_without_nested(cfg), choice["params"])
        graphs = None
        for seed in cfg.train.seeds:
            key = f"{_safe(fold.name)}_s{seed}"
            jpath, ppath = out / "folds" / f"{key}.json", out / "folds" / f"{key}.csv"
            if resume and jpath.exists():
                rows_all.extend(json.loads(jpath.read_text())["rows"])
                preds_all.append(pd.read_csv(ppath, dtype={"spot": str, "slice": str, "label": "Int8"},
                                             float_precision="round_trip"))
                continue
            if graphs is None:
                graphs, report = embed_and_graph(fcfg, slices, fold)
                fold_reports[fold.name] = {"train": fold.train, "val": fold.val, "test": fold.test,
                                           "embed": _jsonable(report)}
            if choice["deep"]:
                scores, info = fit_predict(fcfg, graphs, fold, seed)
            else:
                scores, info = prior_scores(fcfg, graphs, fold.train, seed, fold.val + fold.test), {"best_epoch": -1}
            rows, preds = score_fold(fcfg, graphs, fold, seed, scores)
            for r in rows:
                r.update({"best_epoch": info.get("best_epoch"), "best_val_auc": info.get("best_val_auc"),
                          "nested_deep": choice["deep"], "nested_params": choice["params"]})
            with atomic_path(ppath) as tmp:
                preds.to_csv(tmp, index=False)
            atomic_write_json(jpath, _jsonable({"rows": rows}))
            rows_all.extend(rows)
            preds_all.append(preds)
    pred = pd.concat(preds_all, ignore_index=True)
    with atomic_path(out / "predictions.csv") as tmp:
        pred.to_csv(tmp, index=False)
    metrics = summarise(cfg, rows_all, fold_reports)
    metrics["nested"] = {f: {k: c.get(k) for k in ("params", "deep", "prior_inner_mean", "deep_inner_mean",
                                                   "seconds")} for f, c in choices.items()}
    metrics["protocol"] = "loso (nested)"
    metrics["undetermined_as_noncancer"] = secondary_undetermined_as_negative(pred, slices)
    metrics["wall_time_s"] = round(time.time() - t0, 2)
    atomic_write_json(out / "metrics.json", _jsonable(metrics))
    if write_maps:
        write_slice_maps(pred, slices, out / "maps")
    return metrics
