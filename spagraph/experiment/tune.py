"""Hyper-parameter search with Optuna over the ``search:`` block of an experiment YAML.

Objective = mean best-epoch *validation* AUC over the protocol's folds (validation = whole
held-out training slices). Test slices are never scored during a trial: they are not
predicted at all. For leave-one-slice-out, every slice still serves as some fold's
validation slice, so a strictly nested estimate for a test slice X means tuning with
``--exclude X`` and then running the best config; ``tune`` records what it excluded.

Resumable: the study lives in ``--storage`` (sqlite); rerunning the same command continues
it (trials left RUNNING by a killed process are marked FAIL and redone).
"""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import numpy as np
import yaml

from spagraph.experiment.config import ConfigError, ExperimentConfig, load_config, parse_set, validate_config
from spagraph.utils import atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger("spagraph")


def _suggest(trial, name: str, p) -> object:
    if p.type == "categorical":
        if not p.choices:
            raise ConfigError(f"search.{name}: categorical needs 'choices'")
        return trial.suggest_categorical(name, p.choices)
    if p.low is None or p.high is None or p.low >= p.high:
        raise ConfigError(f"search.{name}: needs low < high (got {p.low}, {p.high})")
    if p.type == "int":
        return trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(name, float(p.low), float(p.high), log=p.log)


def apply_params(cfg: ExperimentConfig, params: dict) -> ExperimentConfig:
    """A copy of ``cfg`` with dotted-key parameters set (validated)."""
    data = cfg.to_dict()
    for key, val in params.items():
        d = data
        parts = key.split(".")
        for k in parts[:-1]:
            if k not in d or not isinstance(d[k], dict):
                raise ConfigError(f"search key {key!r}: '{k}' is not a config section")
            d = d[k]
        if parts[-1] not in d:
            raise ConfigError(f"search key {key!r} is not a config key")
        d[parts[-1]] = val
    return validate_config(data)


def _absolute_sources(cfg: ExperimentConfig, base: Path) -> ExperimentConfig:
    from spagraph.experiment.data import resolve_path
    data = cfg.to_dict()
    for src in data["data"]["sources"]:
        for k in ("root", "path", "annotation"):
            if src.get(k):
                src[k] = str(resolve_path(src[k], base).resolve())
    if data["embed"].get("cache_dir"):
        data["embed"]["cache_dir"] = str(resolve_path(data["embed"]["cache_dir"], base).resolve())
    return validate_config(data)


def open_storage(storage: str):
    """An Optuna storage from a string: ``journal:PATH`` (Optuna's JournalStorage on a file: one
    machine, many processes), else an RDB URL (``sqlite:///...``, ``postgresql://...``: a cluster)."""
    import optuna
    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend
        path = Path(storage[len("journal:"):]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return storage


def _tune_worker(kwargs: dict) -> dict:
    """One parallel tuning worker (an executor task): trials until the study holds enough."""
    return tune(**kwargs)


def tune(config: str | Path, trials: int, storage: str, out: str | Path, overrides: list[str] | None = None,
         exclude: list[str] | None = None, seed: int = 0, max_folds: int | None = None,
         progress: bool = True, workers: int = 1, executor=None, _worker: bool = False) -> dict:
    """Run (or continue) a study until it holds ``trials`` finished trials; write best.yaml + plots.

    ``workers`` > 1 runs that many tuning processes on ``executor`` (Ray: in parallel), all on the
    one study in ``storage`` (``journal:FILE`` on one machine, an RDB URL on a cluster); each stops
    once the study holds ``trials`` finished (complete or pruned) trials. Worker ``i`` samples with
    seed ``seed + i``; trials record their worker's pid (user attribute ``worker``).
    """
    import optuna
    from spagraph.experiment.data import load_slices, plan_folds
    from spagraph.experiment.runner import embed_and_graph, model_settings, train_settings
    from spagraph.experiment.tracking import make_tracker
    from spagraph.train.fit import fit

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_dir = Path(config).resolve().parent
    cfg = _absolute_sources(load_config(config, overrides), base_dir)
    if not cfg.search:
        raise ConfigError(f"{config}: no 'search:' block: nothing to tune")
    slices, groups = load_slices(cfg.data, base_dir)
    for x in exclude or []:
        if x not in slices:
            raise ConfigError(f"--exclude {x}: no such slice; slices are {list(slices)}")
        slices.pop(x); groups.pop(x)
    folds = plan_folds(cfg, list(slices), groups)[: max_folds or None]
    graph_cache: dict = {}
    embed_keys = [k for k in cfg.search if k.split(".")[0] in ("embed", "graph")]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=cfg.name, storage=open_storage(storage), load_if_exists=True,
                                direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=5))
    if not _worker:      # a worker must not fail its siblings' running trials
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # left by a killed process
    if workers > 1 and not _worker:
        from spagraph.experiment.executor import map_tasks
        if storage.startswith("sqlite") and executor is not None and executor.kind == "ray":
            log.warning("--storage %s: SQLite locks under parallel writers; prefer journal:FILE on one machine "
                        "or an RDB server URL on a cluster", storage)
        base = dict(config=str(Path(config).resolve()), trials=trials, storage=storage, out=str(out),
                    overrides=overrides, exclude=exclude, max_folds=max_folds, progress=False, _worker=True)
        map_tasks(_tune_worker, [base | {"seed": seed + i} for i in range(workers)],
                  names=[f"tune worker {i}" for i in range(workers)], executor=executor)
        study = optuna.load_study(study_name=cfg.name, storage=open_storage(storage))
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                        optuna.trial.TrialState.PRUNED)))
    todo = max(0, trials - done)
    log.info("study %s: %d finished trials, running %d more", cfg.name, done, todo)

    def objective(trial):
        trial.set_user_attr("worker", os.getpid())
        params = {k: _suggest(trial, k, p) for k, p in cfg.search.items()}
        tcfg = apply_params(cfg, params)
        seed0 = tcfg.train.seeds[0]
        tracker = make_tracker(tcfg.track, tcfg.to_dict() | {"trial": trial.number}, out,
                               name=f"{cfg.name}-trial{trial.number}", group=f"optuna-{cfg.name}", job_type="trial")
        aucs = []
        try:
            for fi, fold in enumerate(folds):
                key = (fold.name, tuple(sorted((k, str(params[k])) for k in embed_keys)))
                if key not in graph_cache:
                    graph_cache[key] = embed_and_graph(tcfg, slices, fold)[0]
                graphs = graph_cache[key]
                step0 = fi * tcfg.train.epochs

                def hook(epoch, rec, _state, _step0=step0):
                    if rec.get("val_auc") is not None:
                        trial.report(rec["val_auc"], _step0 + epoch)
                        tracker.log({"val_auc": rec["val_auc"], "loss": rec["loss"]}, step=_step0 + epoch)
                        if fi == 0 and trial.should_prune():
                            raise optuna.TrialPruned()

                res = fit([graphs[n] for n in fold.train], [graphs[n] for n in fold.val], model_settings(tcfg),
                          train_settings(tcfg), seed0, on_epoch=hook)
                if res.best_val_auc is not None:
                    aucs.append(res.best_val_auc)
            value = float(np.mean(aucs)) if aucs else float("nan")
            tracker.summary({"objective_val_auc": value})
            return value
        finally:
            tracker.finish()

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    if _worker:
        if todo == 0:
            return {"worker": os.getpid(), "trials": []}
        study.optimize(objective, show_progress_bar=False, catch=(),
                       callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished)])
        return {"worker": os.getpid(), "trials": [t.number for t in study.get_trials(deepcopy=False)
                                                  if t.user_attrs.get("worker") == os.getpid()]}
    if todo and workers <= 1:
        study.optimize(objective, n_trials=todo, show_progress_bar=progress, catch=())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    if not complete:
        raise RuntimeError("no trial completed: see the log above")
    best = study.best_trial
    best_cfg = apply_params(cfg, best.params)
    d = best_cfg.to_dict()
    d["name"] = f"{cfg.name}_best"
    header = (f"# best of Optuna study '{cfg.name}' ({len(complete)} complete trials), trial {best.number}:\n"
              f"# mean validation AUC {best.value:.4f}; params {best.params}\n"
              f"# excluded slices: {exclude or []}\n")
    atomic_write_text(out / "best.yaml", header + yaml.safe_dump(d, sort_keys=False))
    summary = {"study": cfg.name, "storage": storage, "n_complete": len(complete),
               "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
               "best_value": best.value, "best_params": best.params, "best_trial": best.number,
               "objective": "mean best-epoch validation AUC over folds (test slices never scored)",
               "excluded": exclude or []}
    atomic_write_json(out / "study.json", summary)
    _plot_study(study, out / "study.png")
    return summary


def _plot_study(study, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    trials = [t for t in study.trials if t.value is not None and t.state == optuna.trial.TrialState.COMPLETE]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    xs = [t.number for t in trials]; ys = [t.value for t in trials]
    ax[0].plot(xs, ys, "o", color="#0072B2", label="trial")
    ax[0].plot(xs, np.maximum.accumulate(ys), "-", color="#D55E00", label="best so far")
    ax[0].set_xlabel("trial"); ax[0].set_ylabel("mean validation AUC"); ax[0].legend(); ax[0].set_title("history")
    try:
        imp = optuna.importance.get_param_importances(study) if len(trials) >= 2 else {}
    except Exception:
        imp = {}
    if imp:
        names = list(imp)[::-1]
        ax[1].barh(names, [imp[n] for n in names], color="#009E73")
        ax[1].set_xlabel("importance (fANOVA)")
    else:
        ax[1].text(0.5, 0.5, "importance needs ≥ 2 complete trials\nwith varying parameters", ha="center", va="center")
    ax[1].set_title("parameter importance")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
