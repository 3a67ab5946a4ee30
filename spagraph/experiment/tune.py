"""Hyper-parameter search with Optuna over the ``search:`` block of an experiment YAML.

Objective = mean best-epoch *validation* AUC over the protocol's folds (validation = whole
held-out training slices). Test slices are never scored during a trial: they are not
predicted at all.

Nested by default: under leave-one-slice-out every slice is some fold's validation slice, so one
study over all folds would choose with the test sections' labels. Instead there is one study per
*outer* test slice X (``<name>-outer-X`` in the storage), whose folds are the leave-one-slice-out
folds of the other slices only: X is never loaded into its trials (its labels cannot move a
trial value; ``tests/test_tune.py`` shuffles them to check). Each writes ``best_<X>.yaml``: the
configuration to run for test slice X. ``nested=False`` runs the old single study over all folds
(``best.yaml``), which is not an honest basis for a test estimate under LOSO.

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
        data["embed"]["cache_dir"] = str(resolve_path(data["embed"]["cache_dir"], base, must_exist=False).resolve())
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
    """One parallel tuning worker (an executor task): trials until its study holds enough."""
    return tune(**kwargs)


def tune(config: str | Path, trials: int, storage: str, out: str | Path, overrides: list[str] | None = None,
         exclude: list[str] | None = None, seed: int = 0, max_folds: int | None = None,
         progress: bool = True, nested: bool = True, outer: list[str] | None = None,
         workers: int = 1, executor=None, _worker: bool = False) -> dict:
    """Run (or continue) the study (nested: one study per outer test slice) until each holds
    ``trials`` finished trials; write best.yaml (or best_<outer>.yaml), study.json and plots.

    ``outer``: nested only, the outer test slices to tune for (default: every slice).
    ``workers`` > 1 runs that many tuning workers per study on ``executor`` (Ray: in parallel), all
    on the one study in ``storage`` (``journal:FILE`` on one machine, an RDB URL on a cluster); each
    stops once the study holds ``trials`` finished (complete or pruned) trials (one more may be in
    flight). Worker ``i`` samples with seed ``seed + i``; every trial records its process id (user
    attribute ``worker``). A parallel study is not reproducible trial by trial (who asks first
    depends on timing); each trial's value is.
    """
    from spagraph.experiment.data import load_slices

    out = Path(out)
    base_dir = Path(config).resolve().parent
    cfg = _absolute_sources(load_config(config, overrides), base_dir)
    if not cfg.search:
        raise ConfigError(f"{config}: no 'search:' block: nothing to tune")
    out.mkdir(parents=True, exist_ok=True)   # only once the config is valid: a typo leaves no empty folder
    slices, groups = load_slices(cfg.data, base_dir)
    for x in exclude or []:
        if x not in slices:
            raise ConfigError(f"--exclude {x}: no such slice; slices are {list(slices)}")
        slices.pop(x); groups.pop(x)
    def launcher(outer_x):
        if workers <= 1 or _worker:
            return None
        from spagraph.experiment.executor import map_tasks
        if str(storage).startswith("sqlite") and executor is not None and executor.kind == "ray":
            log.warning("--storage %s: SQLite locks under parallel writers; prefer journal:FILE on one machine "
                        "or an RDB server URL on a cluster", storage)
        base = dict(config=str(Path(config).resolve()), trials=trials, storage=storage, out=str(out),
                    overrides=overrides, exclude=exclude, max_folds=max_folds, progress=False, nested=nested,
                    outer=[outer_x] if outer_x is not None else None, _worker=True)
        return lambda: map_tasks(_tune_worker, [base | {"seed": seed + i} for i in range(workers)],
                                 names=[f"tune worker {i}" + (f" (outer {outer_x})" if outer_x else "")
                                        for i in range(workers)], executor=executor)

    if not nested or cfg.protocol.kind != "loso":
        # fixed / transfer folds never score their test slices in a trial: one study is nested already
        summary = _study(cfg, slices, groups, cfg.name, storage, trials, out, "best.yaml", seed, max_folds, progress,
                         launch=launcher(None), worker=_worker)
        if _worker:
            return summary
        summary.update({"excluded": exclude or [], "nested": cfg.protocol.kind != "loso"})
        atomic_write_json(out / "study.json", summary)
        return summary
    names = list(slices)
    for x in outer or []:
        if x not in slices:
            raise ConfigError(f"--outer {x}: no such slice; slices are {names}")
    per_outer = {}
    for x in outer or names:
        inner = {n: slices[n] for n in names if n != x}   # the outer test slice is not even loaded
        per_outer[x] = _study(cfg, inner, {n: groups[n] for n in inner}, f"{cfg.name}-outer-{x}", storage, trials,
                              out, f"best_{_safe(x)}.yaml", seed, max_folds, progress, header=f"# outer test slice: {x}\n",
                              launch=launcher(x), worker=_worker)
    if _worker:
        return {"worker": os.getpid(), "outer": per_outer}
    summary = {"study": cfg.name, "storage": storage, "nested": True, "excluded": exclude or [],
               "objective": "per outer test slice: mean best-epoch validation AUC over the leave-one-slice-out "
                            "folds of the other slices (the outer slice never loaded)",
               "outer": per_outer,
               "best_value": float(np.mean([v["best_value"] for v in per_outer.values()])),
               "best_trial": None,
               "n_complete": sum(v["n_complete"] for v in per_outer.values()),
               "n_pruned": sum(v["n_pruned"] for v in per_outer.values())}
    atomic_write_json(out / "study.json", summary)
    return summary


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _study(cfg: ExperimentConfig, slices: dict, groups: dict, study_name: str, storage: str, trials: int,
           out: Path, best_file: str, seed: int, max_folds: int | None, progress: bool, header: str = "",
           launch=None, worker: bool = False) -> dict:
    """One Optuna study over the protocol's folds of ``slices``; writes ``out/best_file`` and a plot.

    ``launch``: runs parallel workers on this study first (see :func:`tune`); ``worker``: this
    process is one of them (trials until the study holds ``trials``, then return; nothing written)."""
    import optuna
    from spagraph.experiment.data import plan_folds
    from spagraph.experiment.runner import embed_and_graph, model_settings, train_settings
    from spagraph.experiment.tracking import make_tracker
    from spagraph.train.fit import fit

    folds = plan_folds(cfg, list(slices), groups)[: max_folds or None]
    graph_cache: dict = {}
    embed_keys = [k for k in cfg.search if k.split(".")[0] in ("embed", "graph")]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=open_storage(storage), load_if_exists=True,
                                direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=5))
    if not worker:        # a worker must not fail its siblings' running trials
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # left by a killed process
    if launch is not None:
        launch()
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                        optuna.trial.TrialState.PRUNED)))
    todo = max(0, trials - done)
    log.info("study %s: %d finished trials, running %d more", study_name, done, todo)

    def objective(trial):
        trial.set_user_attr("worker", os.getpid())
        params = {k: _suggest(trial, k, p) for k, p in cfg.search.items()}
        tcfg = apply_params(cfg, params)
        seed0 = tcfg.train.seeds[0]
        tracker = make_tracker(tcfg.track, tcfg.to_dict() | {"trial": trial.number}, out,
                               name=f"{study_name}-trial{trial.number}", group=f"optuna-{cfg.name}", job_type="trial")
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
    if worker:
        if todo:
            study.optimize(objective, show_progress_bar=False, catch=(),
                           callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished)])
        return {"worker": os.getpid(), "study": study_name,
                "trials": [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == os.getpid()]}
    if todo:
        study.optimize(objective, n_trials=todo, show_progress_bar=progress, catch=())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    if not complete:
        raise RuntimeError(f"study {study_name}: no trial completed: see the log above")
    best = study.best_trial
    best_cfg = apply_params(cfg, best.params)
    d = best_cfg.to_dict()
    d["name"] = f"{cfg.name}_best"
    head = (f"# best of Optuna study '{study_name}' ({len(complete)} complete trials), trial {best.number}:\n"
            f"# mean validation AUC {best.value:.4f}; params {best.params}\n"
            f"# slices in the study: {list(slices)}\n" + header)
    atomic_write_text(out / best_file, head + yaml.safe_dump(d, sort_keys=False))
    _plot_study(study, out / (Path(best_file).stem.replace("best", "study", 1) + ".png"))
    return {"study": study_name, "storage": storage, "n_complete": len(complete),
            "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
            "best_value": best.value, "best_params": best.params, "best_trial": best.number,
            "best_config": str(out / best_file), "slices": list(slices),
            "trial_values": [t.value for t in complete],
            "objective": "mean best-epoch validation AUC over folds (test slices never scored)"}


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
