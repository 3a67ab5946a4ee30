"""Kill a real `spagraph run` at a random (seeded) moment, resume it, and get the same results as
an uninterrupted run: per-slice metrics, means and predictions.csv byte for byte.

The fast (default) variant crashes in-process at a seeded random epoch of a random fold; the slow
ones SIGKILL a real `spagraph run` subprocess inside a fold and at random delays over the run.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CFG = """\
name: killme
data:
  sources:
    - {reader: synthetic, n_slices: 3, n_spots: 150, seed: 11, with_image: false}
%(split)sembed: {image_encoder: null, gene_encoder: pca, settings: {n_pcs: 10, n_hvg: 100}}
graph: {scales: [1.0, 2.0], n_dir_bins: 4}
model: %(model)s
train: {epochs: %(epochs)d, patience: 3, min_epochs: 2, seeds: [0]}
protocol: {kind: %(kind)s}
track: {mode: disabled}
"""

ENV = dict(os.environ, WANDB_MODE="disabled")


def cmd(cfg, out, *extra):
    return [sys.executable, "-m", "spagraph.cli", "run", str(cfg), "--no-progress", "--out", str(out), *extra]


def comparable(run: Path):
    """Everything of a run that must not depend on interruptions (wall time and maps aside)."""
    m = json.loads((run / "metrics.json").read_text())
    rows = sorted(({k: v for k, v in r.items()} for r in m["per_slice"]), key=lambda r: (r["slice"], r["seed"]))
    return m["mean"], m["std"], m["n_defined"], m["collapsed_runs"], rows, (run / "predictions.csv").read_bytes()


def kill_and_resume(tmp_path, cfg, out, wait_for, delay):
    p = subprocess.Popen(cmd(cfg, out), env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None and not wait_for(out):
        time.sleep(0.02)
    time.sleep(delay)
    killed = p.poll() is None
    p.send_signal(signal.SIGKILL)
    p.wait()
    state = {"killed": killed, "folds_done": len(list((out / "folds").glob("*.json"))) if (out / "folds").exists() else 0,
             "checkpoints": len(list((out / "checkpoints").glob("*.pt"))) if (out / "checkpoints").exists() else 0}
    r = subprocess.run(cmd(cfg, out, "--resume"), env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return state


MODEL = "{hidden: 16, heads: 2}"
FAST = {"epochs": 6, "kind": "fixed", "split": "  train: [syn0]\n  validate: [syn1]\n  test: [syn2]\n", "model": MODEL}
FULL = {"epochs": 8, "kind": "loso", "split": "", "model": MODEL}


class Crash(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way may swallow it."""


def crash_and_resume(tmp_path, setting, seed):
    from spagraph.experiment.config import load_config
    from spagraph.experiment.runner import run_experiment
    cfg_path = tmp_path / "killme.yaml"
    cfg_path.write_text(CFG % setting)
    cfg = load_config(cfg_path)
    run_experiment(cfg, tmp_path / "ref", progress=False, write_maps=False)
    rng = random.Random(seed)
    ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    at_fold = rng.choice(sorted({r["slice"] for r in ref["per_slice"]}))
    at_fold = "fixed" if setting["kind"] == "fixed" else at_fold
    at_epoch = rng.randrange(0, setting["epochs"] - 1)

    def crash(fold, s, epoch, rec):
        if fold == at_fold and epoch == at_epoch:
            raise Crash()

    with pytest.raises(Crash):
        run_experiment(cfg, tmp_path / "run", progress=False, write_maps=False, on_epoch=crash)
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert list((tmp_path / "run" / "checkpoints").glob("*.pt")), "a crash inside a fold leaves its checkpoint"
    run_experiment(cfg, tmp_path / "run", resume=True, progress=False, write_maps=False)
    assert comparable(tmp_path / "run") == comparable(tmp_path / "ref"), (at_fold, at_epoch)


def test_resume_after_crash_at_random_epoch(tmp_path, one_thread):
    """Fast, in-process, one fold: crash at a seeded random epoch, resume, compare."""
    crash_and_resume(tmp_path, dict(FAST, epochs=4), seed=3)


@pytest.mark.parametrize("seed", [0, 1])
def test_resume_with_linear_prior_and_one_se_rule(tmp_path, one_thread, seed):
    """The prior's state and the one-SE decision survive a crash (they live in the checkpoint)."""
    crash_and_resume(tmp_path, dict(FAST, epochs=4, model="{hidden: 16, heads: 2, linear_path: true}"), seed=seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_resume_after_crash_at_random_epoch_of_random_fold(tmp_path, one_thread, seed):
    crash_and_resume(tmp_path, dict(FULL, epochs=5), seed)


@pytest.mark.slow
def test_resume_after_sigkill_inside_a_fold(tmp_path):
    """A real process killed (SIGKILL) at a seeded random delay after its first epoch checkpoint."""
    from spagraph.experiment.config import load_config
    from spagraph.experiment.runner import run_experiment
    cfg = tmp_path / "killme.yaml"
    cfg.write_text(CFG % FAST)
    run_experiment(load_config(cfg), tmp_path / "ref", progress=False, base_dir=tmp_path)
    delay = random.Random(20261124).uniform(0.0, 0.3)
    first_ckpt = lambda out: bool(list((out / "checkpoints").glob("*.pt"))) if (out / "checkpoints").exists() else False
    state = kill_and_resume(tmp_path, cfg, tmp_path / "run", first_ckpt, delay)
    assert state["killed"] and state["folds_done"] == 0, f"not killed inside the fold: {state}"
    assert comparable(tmp_path / "run") == comparable(tmp_path / "ref"), state


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    cfg = d / "killme.yaml"
    cfg.write_text(CFG % FULL)
    t0 = time.time()
    subprocess.run(cmd(cfg, d / "ref"), env=ENV, cwd=ROOT, check=True, capture_output=True)
    return cfg, d / "ref", time.time() - t0


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_resume_after_kill_at_random_time(reference, tmp_path, seed):
    cfg, ref, wall = reference
    delay = random.Random(seed).uniform(0.0, wall)
    started = lambda out: (out / "config.yaml").exists()
    kill_and_resume(tmp_path, cfg, tmp_path / "run", started, delay)
    assert comparable(tmp_path / "run") == comparable(ref)
