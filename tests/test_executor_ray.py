"""Runs through a local Ray (2 CPUs): same outcome as the sequential run, failures named and resumable.

Skipped when Ray is not installed (``pip install 'spagraph[ray]'``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

CFG = """\
name: raytest
data:
  sources:
    - {reader: synthetic, n_slices: 3, n_spots: 120, seed: 5, with_image: false}
embed: {image_encoder: null, gene_encoder: pca, settings: {n_pcs: 8, n_hvg: 80}}
graph: {scales: [1.0, 2.0], n_dir_bins: 4}
model: {hidden: 16, heads: 2}
train: {epochs: 4, patience: 3, min_epochs: 2, seeds: [0, 1]}
protocol: {kind: loso}
track: {mode: disabled}
"""


@pytest.fixture(scope="module")
def ray_ex():
    from spagraph.experiment.executor import RayExecutor
    ex = RayExecutor(num_cpus=2, threads=1)
    yield ex
    ex.shutdown()


@pytest.fixture(scope="module")
def cfg_and_ref(tmp_path_factory, one_thread):
    from spagraph.experiment.config import load_config
    from spagraph.experiment.runner import run_experiment
    d = tmp_path_factory.mktemp("rayref")
    (d / "c.yaml").write_text(CFG)
    cfg = load_config(d / "c.yaml")
    run_experiment(cfg, d / "ref", progress=False, write_maps=False)
    return cfg, d / "ref"


def comparable(run: Path):
    m = json.loads((run / "metrics.json").read_text())
    return m["mean"], m["std"], m["n_defined"], m["per_slice"], (run / "predictions.csv").read_bytes()


def test_ray_leave_one_out_equals_sequential(cfg_and_ref, ray_ex, tmp_path):
    from spagraph.experiment.runner import run_experiment
    cfg, ref = cfg_and_ref
    m = run_experiment(cfg, tmp_path / "ray", progress=False, write_maps=False, executor=ray_ex)
    assert m["executor"] == "ray"
    assert len(list((tmp_path / "ray" / "folds").glob("*.json"))) == 6     # 3 folds x 2 seeds
    assert comparable(tmp_path / "ray") == comparable(ref)


def test_ray_failed_task_is_named_and_run_resumes(cfg_and_ref, ray_ex, tmp_path):
    from spagraph.experiment.executor import TaskFailed
    from spagraph.experiment.runner import run_experiment
    cfg, ref = cfg_and_ref

    def die(fold, seed, epoch, rec):          # runs inside the Ray worker (a local function: pickled by value)
        if fold == "syn1" and seed == 1 and epoch == 2:
            raise RuntimeError("worker lost")

    with pytest.raises(TaskFailed) as err:
        run_experiment(cfg, tmp_path / "run", progress=False, write_maps=False, executor=ray_ex, on_epoch=die)
    assert "fold syn1 seed 1" in str(err.value) and "worker lost" in str(err.value)
    assert "--resume" in str(err.value)
    assert not (tmp_path / "run" / "metrics.json").exists()
    done = sorted(p.stem for p in (tmp_path / "run" / "folds").glob("*.json"))
    assert done == ["syn0_s0", "syn0_s1", "syn1_s0", "syn2_s0", "syn2_s1"]
    assert (tmp_path / "run" / "checkpoints" / "syn1_s1.pt").exists()     # continued mid-fit on resume
    run_experiment(cfg, tmp_path / "run", resume=True, progress=False, write_maps=False, executor=ray_ex)
    assert comparable(tmp_path / "run") == comparable(ref)


def test_map_tasks_order_and_failure_names(ray_ex):
    from spagraph.experiment.executor import TaskFailed, map_tasks

    def square(x):
        if x == 3:
            raise ValueError(f"bad item {x}")
        return x * x

    assert map_tasks(square, [4, 1, 2], executor=ray_ex) == [16, 1, 4]
    seen = []
    with pytest.raises(TaskFailed) as err:
        map_tasks(square, [1, 3, 2], names=["a", "b", "c"], executor=ray_ex, on_done=lambda i, r: seen.append(i))
    assert list(err.value.failures) == ["b"] and "bad item 3" in err.value.failures["b"]
    assert sorted(seen) == [0, 2]          # the other tasks still finished and were handed over


TUNE_YAML = """\
name: tune_par
data:
  sources:
    - {reader: synthetic, n_slices: 3, n_spots: 120, seed: 5, with_image: false}
embed: {image_encoder: null, gene_encoder: pca, settings: {n_pcs: 8, n_hvg: 80}}
graph: {scales: [1.0, 2.0]}
model: {hidden: 16, heads: 2}
train: {epochs: 2, patience: 10, seeds: [0]}
track: {mode: disabled}
search:
  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
"""


def test_two_tune_workers_share_one_study(ray_ex, tmp_path):
    import optuna
    from spagraph.experiment.tune import open_storage, tune
    (tmp_path / "t.yaml").write_text(TUNE_YAML)
    storage = f"journal:{tmp_path}/study.journal"
    s = tune(tmp_path / "t.yaml", 6, storage, tmp_path / "out", max_folds=1, progress=False, workers=2, executor=ray_ex,
             nested=False)
    study = optuna.load_study(study_name="tune_par", storage=open_storage(storage))
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert 6 <= len(done) <= 7                   # each worker stops once 6 are finished (one may be in flight)
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2, workers             # both workers wrote trials into the one study
    assert s["n_complete"] + s["n_pruned"] == len(done)
    assert (tmp_path / "out" / "best.yaml").exists()


def test_a_worker_running_other_code_is_named_not_run(ray_ex):
    """A task whose driver fingerprint differs from the worker's fails with the cause, not an unpickling error."""
    from spagraph.experiment.executor import TaskFailed, import_modules
    assert ray_ex.gather([ray_ex.submit(import_modules, ["json"], name="same code")]) == [["json"]]
    real, ray_ex.code = ray_ex.code, "f" * 64
    try:
        with pytest.raises(TaskFailed, match="same spagraph code"):
            ray_ex.gather([ray_ex.submit(import_modules, ["json"], name="other code")])
    finally:
        ray_ex.code = real
