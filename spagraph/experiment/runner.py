"""Run an experiment: folds x seeds of embed -> graph -> fit -> predict -> threshold -> metrics.

Outputs in ``OUT`` (contract read by later tooling):
  predictions.csv   slice,spot,seed,score,pred,label   (label 1/0, NA for undetermined/unlabelled)
  metrics.json      protocol, per_slice rows, mean/std over slices x seeds
  config.yaml       the resolved config;   maps/<slice>.png   label / score / prediction maps
  folds/            one finished (fold, seed) per JSON + CSV: what ``--resume`` skips
  checkpoints/      the in-progress fit of the running (fold, seed): what ``--resume`` continues
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from spagraph.experiment.config import ExperimentConfig, dump_config
from spagraph.experiment.data import Fold, load_slices, plan_folds
from spagraph.utils import atomic_path, atomic_write_json

log = logging.getLogger("spagraph")

METRIC_KEYS = ("auc", "ap", "f1", "f1_val_threshold", "f1_quantile", "f1_mixture", "f1_val_youden", "f1_fixed_0.5", "accuracy", "sensitivity",
               "specificity")


class EpochCallback:
    """Hook for per-epoch reporting (Optuna pruning, tracking)."""

    def __call__(self, fold: str, seed: int, epoch: int, record: dict) -> None: ...


# The library takes the validated config sections themselves (GraphSettings, ModelSettings and
# TrainSettings are GraphConfig, ModelConfig and TrainConfig): one set of defaults.
def graph_settings(cfg: ExperimentConfig):
    return cfg.graph


def model_settings(cfg: ExperimentConfig):
    return cfg.model


def train_settings(cfg: ExperimentConfig):
    return cfg.train


def harmonise(graphs: list) -> None:
    """Give every graph the same embedding widths (a slice without an image gets zero
    features with ``has_img`` False), so one model serves all slices."""
    import torch
    for key, flag in (("x_img", "has_img"), ("x_gene", "has_gene")):
        width = max(g[key].shape[1] for g in graphs)
        for g in graphs:
            if g[key].shape[1] != width:
                if g[key].shape[1] != 0:
                    raise ValueError(f"slice {g.name}: {key} has {g[key].shape[1]} columns, others {width}")
                g[key] = torch.zeros(g.num_nodes, width)
                g[flag] = torch.zeros(g.num_nodes, dtype=torch.bool)


def embed_and_graph(cfg: ExperimentConfig, slices: dict, fold: Fold) -> tuple[dict, dict]:
    """Embeddings fitted on the fold's training slices only, then one graph per slice."""
    from spagraph.embed import embed_slices
    from spagraph.graph import build_slice_graph
    names = fold.train + fold.val + fold.test
    sub = {n: slices[n] for n in names}
    report = embed_slices(sub, fit_on=list(fold.train), image_encoder=cfg.embed.image_encoder,
                          gene_encoder=cfg.embed.gene_encoder, settings=dict(cfg.embed.settings),
                          cache_dir=cfg.embed.cache_dir, progress=False)
    gs = graph_settings(cfg)
    graphs = {n: build_slice_graph(sub[n], gs, label_key=cfg.data.label_key, name=n) for n in names}
    harmonise(list(graphs.values()))
    return graphs, report or {}


def fit_predict(cfg: ExperimentConfig, graphs: dict, fold: Fold, seed: int, on_epoch=None,
                checkpoint: Path | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Train on fold.train (early stopping on fold.val) and score val + test slices."""
    import torch
    from spagraph.train.fit import fit, predict_scores
    ts = train_settings(cfg)
    tr, va = [graphs[n] for n in fold.train], [graphs[n] for n in fold.val]
    if cfg.model_type == "baseline":
        from spagraph.train.baselines import fit_baseline
        predictor, info = fit_baseline(cfg, tr, va, seed, on_epoch=on_epoch)
        return {n: predictor(graphs[n]) for n in fold.val + fold.test}, info
    init = None
    if checkpoint is not None and checkpoint.exists():
        init = torch.load(checkpoint, weights_only=False)
        log.info("resuming %s seed %d from epoch %d", fold.name, seed, init["epoch"] + 1)

    def hook(epoch, rec, state_fn):
        if checkpoint is not None:
            with atomic_path(checkpoint) as tmp:
                torch.save(state_fn(), tmp)
        if on_epoch is not None:
            on_epoch(epoch, rec)

    res = fit(tr, va, model_settings(cfg), ts, seed, on_epoch=hook, init_state=init)
    scores = {n: predict_scores(res.model, graphs[n], ts) for n in fold.val + fold.test}
    return scores, {"best_epoch": res.best_epoch, "best_val_auc": res.best_val_auc, "history": res.history,
                    "kept_prior_by_se": res.kept_prior_by_se,
                    "model": res.model}


def score_fold(cfg: ExperimentConfig, graphs: dict, fold: Fold, seed: int, scores: dict) -> tuple[list[dict], pd.DataFrame]:
    """Thresholds (validation labels only) and metrics (test labels only) for one fold and seed."""
    from spagraph.train.metrics import binary_metrics, validation_thresholds
    from spagraph.train.thresholds import threshold_rules
    if fold.val:
        vy = np.concatenate([graphs[n].y.numpy() for n in fold.val])
        vs = np.concatenate([scores[n] for n in fold.val])
        val_thr, j_thr = validation_thresholds(vy, vs)
    else:
        vs, val_thr, j_thr = np.zeros(0), 0.5, 0.5
    rows, preds = [], []
    for t in fold.test:
        g, s = graphs[t], scores[t]
        method = cfg.threshold.method
        quantile = method if method.startswith("quantile") else "quantile_beta"
        rules = threshold_rules([method, quantile, "mixture"], vs, val_thr, j_thr, s, cfg.threshold.fixed)
        thr, used = rules[method]
        (q_thr, q_used), (m_thr, m_used) = rules[quantile], rules["mixture"]
        y = g.y.numpy()
        m = ~np.isnan(y)
        row = {"slice": t, "seed": seed, "threshold_method": used, "val_threshold": float(val_thr),
               "quantile_threshold": float(q_thr), "quantile_method": q_used,
               "mixture_threshold": float(m_thr), "mixture_method": m_used, "youden_threshold": float(j_thr)}
        if m.any():
            r = binary_metrics(y[m].astype(int), s[m], thr)
            row.update(r)
            # F1 under each label-free threshold rule, whichever one is primary
            row["f1_val_threshold"] = binary_metrics(y[m].astype(int), s[m], val_thr)["f1"]
            row["f1_quantile"] = binary_metrics(y[m].astype(int), s[m], q_thr)["f1"]
            row["f1_mixture"] = binary_metrics(y[m].astype(int), s[m], m_thr)["f1"]
            row["f1_val_youden"] = binary_metrics(y[m].astype(int), s[m], j_thr)["f1"]
            row["f1_fixed_0.5"] = binary_metrics(y[m].astype(int), s[m], 0.5)["f1"]
        else:
            row.update({"n": 0, "threshold": float(thr), "undefined": ["no labels on this slice"]})
        rows.append(row)
        preds.append(pd.DataFrame({"slice": t, "spot": g.spot_ids, "seed": seed, "score": s,
                                   "pred": (s >= thr).astype(int),
                                   "label": pd.array(np.where(m, y, np.nan), dtype="Float32").astype("Int8")}))
    return rows, pd.concat(preds, ignore_index=True)


def summarise(cfg: ExperimentConfig, rows: list[dict], fold_reports: dict) -> dict:
    from spagraph.train.metrics import mean_std
    mean, std, count = mean_std(rows, METRIC_KEYS)
    collapsed = [f"{r['slice']}/seed{r['seed']}" for r in rows if any("collapsed" in u for u in r.get("undefined", []))]
    return {"protocol": cfg.protocol.kind, "experiment": cfg.name, "config_hash": cfg.config_hash(),
            "undetermined": "excluded", "threshold_method": cfg.threshold.method,
            "per_slice": rows, "mean": mean, "std": std, "n_defined": count,
            "collapsed_runs": collapsed, "folds": fold_reports}


def secondary_undetermined_as_negative(pred: pd.DataFrame, slices: dict) -> dict:
    """Mean AUC/AP when undetermined spots are scored as non-cancer (SpaCancer's text)."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    aucs, aps = [], []
    for (s, seed), df in pred.groupby(["slice", "seed"]):
        ann = slices[s].obs.get("annotation")
        y = df["label"].astype("Float32").to_numpy(dtype=float, na_value=np.nan)
        if ann is not None:
            has_ann = ann.reindex(df["spot"]).notna().to_numpy()
            y = np.where(np.isnan(y) & has_ann, 0.0, y)
        keep = ~np.isnan(y)
        if len(np.unique(y[keep])) == 2:
            aucs.append(roc_auc_score(y[keep], df["score"].to_numpy()[keep]))
            aps.append(average_precision_score(y[keep], df["score"].to_numpy()[keep]))
    return {"auc": float(np.mean(aucs)) if aucs else None, "ap": float(np.mean(aps)) if aps else None}


WEIGHT_SETTINGS = {"weights": "image encoder", "omiclip_weights": "gene encoder 'omiclip'",
                   "text_model": "gene encoder 'sentence'"}


def check_inputs(cfg: ExperimentConfig) -> None:
    """Fail at the start of a run, not deep inside a fold, on local files the config names but lacks."""
    st = cfg.embed.settings or {}
    uses = {"weights": cfg.embed.image_encoder is not None and cfg.embed.image_encoder != "handcrafted",
            "omiclip_weights": cfg.embed.gene_encoder == "omiclip",
            "text_model": cfg.embed.gene_encoder == "sentence"}
    for key, what in WEIGHT_SETTINGS.items():
        v = st.get(key)
        if not uses[key] or v is None:
            continue
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"embed.settings.{key}: expected a path to a local file for the {what}, got {v!r}")
        if key == "text_model" and "/" not in v and not v.startswith((".", "~")):
            continue   # a model name, resolved by sentence-transformers
        if not Path(v).expanduser().exists():
            raise FileNotFoundError(f"embed.settings.{key}: weights file for the {what} "
                                    f"({cfg.embed.image_encoder if key == 'weights' else cfg.embed.gene_encoder}) "
                                    f"not found: {v} (relative paths start at {Path.cwd()})")
    if cfg.embed.gene_encoder == "omiclip" and not st.get("omiclip_weights"):
        raise ValueError("gene encoder 'omiclip' needs embed.settings.omiclip_weights: a local path to the OmiCLIP checkpoint")


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
                   on_epoch: Callable | None = None, tracker=None, base_dir: Path | None = None,
                   write_maps: bool = True, save_models: bool = False) -> dict:
    """Run all folds and seeds of an experiment and write its outputs to ``out_dir``.

    ``on_epoch(fold_name, seed, epoch, record)`` is called after each epoch (Optuna pruning).
    With ``resume``, finished (fold, seed) pairs found in ``out_dir/folds`` are reused and an
    interrupted fit continues from its last epoch checkpoint.
    """
    from spagraph.experiment.tracking import NullTracker
    from spagraph.experiment.progress import RunProgress
    check_inputs(cfg)
    if cfg.nested is not None:   # every choice by inner leave-one-slice-out: spagraph.experiment.nested
        from spagraph.experiment.nested import run_nested
        return run_nested(cfg, out_dir, resume=resume, progress=progress, base_dir=base_dir, write_maps=write_maps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "folds").mkdir(exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    if not resume:
        for f in list((out / "folds").glob("*")) + list((out / "checkpoints").glob("*")):
            f.unlink()
    dump_config(cfg, out / "config.yaml")
    tracker = tracker or NullTracker()
    t0 = time.time()
    slices, groups = load_slices(cfg.data, base_dir)
    folds = plan_folds(cfg, list(slices), groups)
    seeds = list(cfg.train.seeds)
    all_rows, all_preds, fold_reports = [], [], {}
    step = 0
    with RunProgress(enabled=progress, n_runs=len(folds) * len(seeds), epochs=cfg.train.epochs) as prog:
        for fold in folds:
            todo = [s for s in seeds if not (resume and (out / "folds" / f"{_safe(fold.name)}_s{s}.json").exists())]
            graphs = None
            if todo:
                graphs, report = embed_and_graph(cfg, slices, fold)
                fold_reports[fold.name] = {"train": fold.train, "val": fold.val, "test": fold.test,
                                           "embed": _jsonable(report)}
            for seed in seeds:
                key = f"{_safe(fold.name)}_s{seed}"
                jpath, cpath = out / "folds" / f"{key}.json", out / "folds" / f"{key}.csv"
                if seed not in todo:
                    rec = json.loads(jpath.read_text())
                    all_rows.extend(rec["rows"])
                    fold_reports.setdefault(fold.name, rec.get("fold", {}))
                    all_preds.append(pd.read_csv(cpath, dtype={"spot": str, "slice": str, "label": "Int8"},
                                                 float_precision="round_trip"))   # byte-identical rewrite
                    prog.advance_run(f"{fold.name} seed {seed} (resumed)")
                    continue
                prog.start_run(f"{fold.name} seed {seed}")

                def hook(epoch, rec, _fold=fold.name, _seed=seed):
                    nonlocal step
                    prog.epoch(epoch, rec)
                    tracker.log({f"{_fold}/{k}": v for k, v in rec.items() if v is not None and k != "epoch"} |
                                {"fold": _fold, "seed": _seed, "epoch": epoch}, step=step)
                    step += 1
                    if on_epoch is not None:
                        on_epoch(_fold, _seed, epoch, rec)

                ckpt = out / "checkpoints" / f"{key}.pt"
                scores, info = fit_predict(cfg, graphs, fold, seed, on_epoch=hook, checkpoint=ckpt)
                rows, preds = score_fold(cfg, graphs, fold, seed, scores)
                for r in rows:
                    r["best_epoch"] = info.get("best_epoch")
                    r["best_val_auc"] = info.get("best_val_auc")
                    if info.get("kept_prior_by_se"):
                        r["kept_prior_by_se"] = True
                with atomic_path(cpath) as tmp:
                    preds.to_csv(tmp, index=False)
                atomic_write_json(jpath, {"rows": rows, "fold": fold_reports[fold.name]})
                if save_models and info.get("model") is not None:
                    from spagraph.train.saved import save_model
                    save_model(info["model"], cfg, graphs, fold, out / "models" / key, slices=slices, base_dir=base_dir, seed=seed)
                ckpt.unlink(missing_ok=True)
                all_rows.extend(rows)
                all_preds.append(preds)
                prog.end_run(rows)
    pred = pd.concat(all_preds, ignore_index=True)
    with atomic_path(out / "predictions.csv") as tmp:
        pred.to_csv(tmp, index=False)
    metrics = summarise(cfg, all_rows, fold_reports)
    metrics["undetermined_as_noncancer"] = secondary_undetermined_as_negative(pred, slices)
    metrics["wall_time_s"] = round(time.time() - t0, 2)
    atomic_write_json(out / "metrics.json", metrics)
    maps = write_slice_maps(pred, slices, out / "maps") if write_maps else []
    tracker.log_table("per_slice_metrics", [{k: v for k, v in r.items() if k != "undefined"} for r in all_rows])
    tracker.summary({f"mean_{k}": v for k, v in metrics["mean"].items() if v is not None})
    for m in maps:
        tracker.log_image(f"map/{m.stem}", m)
    tracker.log_artifact(out / "predictions.csv", f"{cfg.name}-predictions")
    return metrics


def write_slice_maps(pred: pd.DataFrame, slices: dict, out: Path) -> list[Path]:
    """One label / score / prediction map per test slice (scores averaged over seeds)."""
    from spagraph.viz.maps import plot_slice_map
    paths = []
    for s, df in pred.groupby("slice", sort=False):
        agg = df.groupby("spot", sort=False).agg(score=("score", "mean"), pred=("pred", "mean"), label=("label", "first"))
        a = slices[s]
        idx = a.obs_names.get_indexer(agg.index)
        pos = np.asarray(a.obsm["spatial"])[idx]
        img, scale = _slice_image(a)
        lab = agg["label"].astype("Float32").to_numpy(dtype=float, na_value=np.nan)
        paths.append(plot_slice_map(pos, lab, agg["score"].to_numpy(), (agg["pred"].to_numpy() >= 0.5).astype(int),
                                    out / f"{_safe(s)}.png", title=s, image=img, image_scale=scale))
    return paths


def _slice_image(a):
    sp = a.uns.get("spatial", {})
    for lib in sp.values():
        imgs, sf = lib.get("images", {}), lib.get("scalefactors", {})
        if "hires" in imgs:
            return imgs["hires"], float(sf.get("tissue_hires_scalef", 1.0))
        if "lowres" in imgs:
            return imgs["lowres"], float(sf.get("tissue_lowres_scalef", 1.0))
    return None, 1.0


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _jsonable(d):
    try:
        json.dumps(d)
        return d
    except TypeError:
        return json.loads(json.dumps(d, default=str))
