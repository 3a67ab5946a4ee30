"""Run an experiment: folds x seeds of embed -> graph -> fit -> predict -> threshold -> metrics.

Outputs in ``OUT`` (contract read by later tooling):
  predictions.csv   slice,spot,seed,score,pred,label,raw_score   (score: calibrated P(cancer); raw_score: the
                    model's; label 1/0, NA for undetermined/unlabelled)
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
                checkpoint: Path | None = None, stamp: dict | None = None,
                pretrained: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Train on fold.train (early stopping on fold.val) and score val + test slices (the gene
    stream starting from ``pretrained`` weights when given: ``pretrain:``, prepared per fold).

    ``stamp`` (``config_hash``, ``config``, ``inputs``) is stored in every epoch checkpoint; a
    checkpoint whose stamp differs is refused (one line, never a state-dict size mismatch)."""
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
        init = torch.load(checkpoint, weights_only=True)   # tensors, numbers, strings: no code runs on load
        if stamp is not None:
            from spagraph.experiment.resume import ResumeMismatch, config_diff
            if init.get("config_hash", stamp["config_hash"]) != stamp["config_hash"] or \
                    (init.get("inputs") and init.get("inputs") != stamp.get("inputs")):
                diff = config_diff(init.get("config") or {}, stamp["config"]) or ["inputs changed"]
                raise ResumeMismatch(f"checkpoint {checkpoint} was written with another config or other data "
                                     f"({'; '.join(diff[:8])}); delete it or resume with --recompute-changed")
        log.info("resuming %s seed %d from epoch %d", fold.name, seed, init["epoch"] + 1)

    def hook(epoch, rec, state_fn):
        if checkpoint is not None:
            with atomic_path(checkpoint) as tmp:
                torch.save(state_fn() | (stamp or {}), tmp)
        if on_epoch is not None:
            on_epoch(epoch, rec)

    target = None
    from spagraph.train.adapt import strip_labels, uses_target
    if uses_target(ts):   # label-free adaptation to the test slice(s): features only, labels stripped
        target = [strip_labels(graphs[n]) for n in fold.test]
    res = fit(tr, va, model_settings(cfg), ts, seed, on_epoch=hook, init_state=init, pretrained=pretrained,
              target=target)
    scores = {n: predict_scores(res.model, graphs[n], ts) for n in fold.val + fold.test}
    if ts.self_train_rounds > 0:   # label-free refinement of each test slice's ranking (spagraph/train/selftrain.py)
        from spagraph.train.selftrain import self_train_scores
        for n in fold.test:
            scores[n] = self_train_scores(res.model, strip_labels(graphs[n]), ts, seed)
    return scores, {"best_epoch": res.best_epoch, "best_val_auc": res.best_val_auc, "history": res.history,
                    "kept_prior_by_se": res.kept_prior_by_se,
                    "model": res.model}


def score_fold(cfg: ExperimentConfig, graphs: dict, fold: Fold, seed: int, scores: dict) -> tuple[list[dict], pd.DataFrame]:
    """Calibration and thresholds (validation labels only; the rule by inner folds when
    ``threshold.method: auto``) and metrics (test labels only) for one fold and seed
    (:func:`spagraph.decide.evaluate.score_fold`)."""
    from spagraph.decide.evaluate import score_fold as _score
    return _score(cfg, graphs, fold, seed, scores)


def summarise(cfg: ExperimentConfig, rows: list[dict], fold_reports: dict) -> dict:
    from spagraph.train.metrics import mean_std
    from spagraph.decide.evaluate import EXTRA_KEYS, summarise_decisions
    mean, std, count = mean_std(rows, METRIC_KEYS + EXTRA_KEYS)
    collapsed = [f"{r['slice']}/seed{r['seed']}" for r in rows if any("collapsed" in u for u in r.get("undefined", []))]
    evaluated = ("validation slices (protocol 'fit' has no test slice; these labels chose the epoch and "
                 "threshold, so the numbers are optimistic)" if any(r.get("role") == "validation" for r in rows)
                 else "test slices")
    return {"protocol": cfg.protocol.kind, "experiment": cfg.name, "config_hash": cfg.config_hash(),
            "evaluated_on": evaluated,
            "undetermined": "excluded", "threshold_method": cfg.threshold.method,
            "per_slice": rows, "mean": mean, "std": std, "n_defined": count,
            "collapsed_runs": collapsed, "folds": fold_reports, "decisions": summarise_decisions(rows)}


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
                   write_maps: bool = True, save_models: bool = False, executor=None,
                   recompute_changed: bool = False, slices: dict | None = None) -> dict:
    """Run all folds and seeds of an experiment and write its outputs to ``out_dir``.

    Each (fold, seed) is one task (:func:`spagraph.experiment.tasks.fit_task`) run by ``executor``
    (default :class:`~spagraph.experiment.executor.LocalExecutor`, in this process; a
    ``RayExecutor`` runs them in parallel). A fold's embeddings and graphs are computed once (one
    task per fold) and shared by its seeds. Each task writes its own atomic result
    ``folds/<fold>_s<seed>.json`` + ``.csv``; the driver gathers results in fold x seed order, so
    the outcome equals the sequential run.

    ``on_epoch(fold_name, seed, epoch, record)`` is called after each epoch (Optuna pruning); with
    Ray it runs inside the worker (it must be picklable). With ``resume``, finished (fold, seed)
    pairs in ``out_dir/folds`` are reused and an interrupted fit continues from its last epoch
    checkpoint, provided they were computed with this config and these inputs
    (:mod:`spagraph.experiment.resume`); otherwise :class:`~spagraph.experiment.resume.ResumeMismatch`
    names what differs, or with ``recompute_changed`` those tasks are recomputed.

    ``save_models`` writes one model folder per fold and seed (:func:`model_path`; protocol ``fit``:
    ``OUT/model/s<seed>``, one ensemble, with its ``model_card.md``). ``slices`` ({name: AnnData},
    all in the default group) replaces reading ``cfg.data`` (the Python API's ``spagraph.tl.fit``).
    """
    from spagraph.experiment.executor import LocalExecutor
    from spagraph.experiment.progress import RunProgress
    from spagraph.experiment.resume import check_resume, input_digests
    from spagraph.experiment.tasks import fit_task, prepare_fold, task_key, write_task_result
    from spagraph.experiment.tracking import NullTracker
    check_inputs(cfg)
    if cfg.nested is not None:   # every choice by inner leave-one-slice-out: spagraph.experiment.nested
        from spagraph.experiment.nested import run_nested
        return run_nested(cfg, out_dir, resume=resume, progress=progress, base_dir=base_dir, write_maps=write_maps)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "folds").mkdir(exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    tracker = tracker or NullTracker()
    ex = executor or LocalExecutor()
    t0 = time.time()
    if slices is None:
        slices, groups = load_slices(cfg.data, base_dir)
    else:
        groups = {n: "default" for n in slices}
    folds = plan_folds(cfg, list(slices), groups)
    if save_models and cfg.model_type == "baseline":
        raise ValueError("--save-model saves spagraph models; model_type 'baseline' has no saved-model format")
    seeds = list(cfg.train.seeds)
    if not seeds:
        raise ValueError("train.seeds is empty: give at least one seed, e.g. train: {seeds: [0]}")
    digests = input_digests(cfg, slices)
    if resume:
        check_resume(cfg, out, folds, seeds, digests, recompute_changed=recompute_changed)
    else:
        for f in list((out / "folds").glob("*")) + list((out / "checkpoints").glob("*")):
            f.unlink()
    dump_config(cfg, out / "config.yaml")
    results: dict[tuple[str, int], dict] = {}
    step = 0
    local = ex.kind == "local"
    with RunProgress(enabled=progress, n_runs=len(folds) * len(seeds), epochs=cfg.train.epochs) as prog:

        def finished(i, res, _keys=None):
            nonlocal step
            write_task_result(out, res)          # no-op when the worker already wrote it (shared disk)
            results[(res["fold_name"], res["seed"])] = res
            if not local:                         # per-epoch records come back with the result
                for rec in res.get("history") or []:
                    tracker.log({f"{res['fold_name']}/{k}": v for k, v in rec.items() if v is not None and k != "epoch"} |
                                {"fold": res["fold_name"], "seed": res["seed"], "epoch": rec.get("epoch")}, step=step)
                    step += 1
                log.info("finished %s seed %d (%d/%d)", res["fold_name"], res["seed"], len(results), len(folds) * len(seeds))
            prog.end_run(res["rows"])

        slices_h = ex.put(slices, name="slices")
        handles = []
        for fold in folds:
            todo = [s for s in seeds if not (resume and (out / "folds" / f"{task_key(fold.name, s)}.json").exists())]
            prep = None
            if todo:
                prep = ex.submit(prepare_fold, cfg, slices_h, fold, base_dir, name=f"fold {fold.name}: embed + graph")
            for seed in seeds:
                key = task_key(fold.name, seed)
                if seed not in todo:
                    rec = json.loads((out / "folds" / f"{key}.json").read_text())
                    results[(fold.name, seed)] = {"fold_name": fold.name, "seed": seed, "rows": rec["rows"],
                                                  "fold": rec.get("fold", {}), "resumed": True, "key": key}
                    prog.advance_run(f"{fold.name} seed {seed} (resumed)")
                    continue
                hook = on_epoch
                if local:
                    prog.start_run(f"{fold.name} seed {seed}")

                    def hook(_fold, _seed, epoch, rec):
                        nonlocal step
                        prog.epoch(epoch, rec)
                        tracker.log({f"{_fold}/{k}": v for k, v in rec.items() if v is not None and k != "epoch"} |
                                    {"fold": _fold, "seed": _seed, "epoch": epoch}, step=step)
                        step += 1
                        if on_epoch is not None:
                            on_epoch(_fold, _seed, epoch, rec)

                h = ex.submit(fit_task, cfg, prep, fold, seed, str(out), hook, digests,
                              slices_h if save_models else None, base_dir, save_models,
                              name=f"fold {fold.name} seed {seed}")
                if local:
                    ex.gather([h], finished)
                else:
                    handles.append(h)
        if handles:
            from spagraph.experiment.executor import TaskFailed
            try:
                ex.gather(handles, finished)
            except TaskFailed as e:
                raise TaskFailed(e.failures, hint=f"{len(results)} of {len(folds) * len(seeds)} fold/seed results "
                                 f"are saved in {out / 'folds'}; fix the cause and rerun with --resume") from None
    all_rows, all_preds, fold_reports = [], [], {}
    for fold in folds:                      # fixed order: the outcome never depends on who finished first
        for seed in seeds:
            res = results[(fold.name, seed)]
            fold_reports.setdefault(fold.name, res["fold"])
            all_rows.extend(res["rows"])
            all_preds.append(_read_fold_csv(out / "folds" / f"{task_key(fold.name, seed)}.csv"))
    pred = pd.concat(all_preds, ignore_index=True)
    with atomic_path(out / "predictions.csv") as tmp:
        pred.to_csv(tmp, index=False)
    metrics = summarise(cfg, all_rows, fold_reports)
    metrics["undetermined_as_noncancer"] = secondary_undetermined_as_negative(pred, slices)
    metrics["wall_time_s"] = round(time.time() - t0, 2)
    metrics["executor"] = ex.kind
    if base_dir is not None:
        metrics["base_dir"] = str(Path(base_dir).resolve())   # where relative data paths start (report)
    if save_models and cfg.protocol.kind == "fit" and (out / "model").is_dir():
        from spagraph.train.saved import ensemble_card
        from spagraph.utils import atomic_write_text
        atomic_write_text(out / "model" / "model_card.md", ensemble_card(out / "model", metrics))
    atomic_write_json(out / "metrics.json", metrics)
    maps = write_slice_maps(pred, slices, out / "maps") if write_maps else []
    tracker.log_table("per_slice_metrics", [{k: v for k, v in r.items() if k != "undefined"} for r in all_rows])
    tracker.summary({f"mean_{k}": v for k, v in metrics["mean"].items() if v is not None})
    for m in maps:
        tracker.log_image(f"map/{m.stem}", m)
    tracker.log_artifact(out / "predictions.csv", f"{cfg.name}-predictions")
    return metrics


def model_path(out: Path, cfg: ExperimentConfig, fold: Fold, seed: int) -> Path:
    """Where ``--save-model`` puts a model: ``OUT/model/s<seed>`` for protocol ``fit`` (the seeds
    of ``OUT/model`` form one ensemble for ``spagraph predict OUT/model``), else
    ``OUT/models/<fold>_s<seed>``."""
    if cfg.protocol.kind == "fit":
        return Path(out) / "model" / f"s{seed}"
    return Path(out) / "models" / f"{_safe(fold.name)}_s{seed}"


def write_slice_maps(pred: pd.DataFrame, slices: dict, out: Path) -> list[Path]:
    """One label / score / prediction map per test slice (scores averaged over seeds)."""
    from spagraph.viz.spatial import plot_slice_panels
    paths = []
    for s, df in pred.groupby("slice", sort=False):
        agg = df.groupby("spot", sort=False).agg(score=("score", "mean"), pred=("pred", "mean"), label=("label", "first"))
        a = slices[s]
        idx = a.obs_names.get_indexer(agg.index)
        pos = np.asarray(a.obsm["spatial"])[idx]
        img, scale = _slice_image(a)
        lab = agg["label"].astype("Float32").to_numpy(dtype=float, na_value=np.nan)
        platform = (a.uns.get("spagraph_slice", {}) or {}).get("platform")
        paths.append(plot_slice_panels(pos, out / f"{_safe(s)}.png", label=lab, score=agg["score"].to_numpy(),
                                       pred=(agg["pred"].to_numpy() >= 0.5).astype(float), image=img, image_scale=scale,
                                       platform=platform,
                                       title=f"{s} (prediction: majority over seeds, each at its own threshold)"))
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


def _read_fold_csv(path: Path) -> pd.DataFrame:
    """One finished (fold, seed)'s predictions; a corrupt file is an error naming it."""
    hint = "delete it and its .json to recompute that fold"
    try:
        df = pd.read_csv(path, dtype={"spot": str, "slice": str, "label": "Int8"},
                         float_precision="round_trip")   # byte-identical rewrite
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: finished fold predictions are unreadable (corrupt or truncated?): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; {hint}") from None
    missing = {"slice", "spot", "seed", "score", "pred", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: finished fold predictions lack column(s) {sorted(missing)} (corrupt?); {hint}")
    return df


def _jsonable(d):
    try:
        json.dumps(d)
        return d
    except TypeError:
        return json.loads(json.dumps(d, default=str))
