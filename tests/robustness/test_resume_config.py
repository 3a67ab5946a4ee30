"""Resume keyed on content: a changed config never reuses stale results or checkpoints, and a crash
exactly on the early-stopping epoch resumes to the uninterrupted metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

CFG = """\
name: resumecfg
data:
  sources:
    - {reader: synthetic, n_slices: 3, n_spots: 150, seed: 11, with_image: false}
  train: [syn0]
  validate: [syn1]
  test: [syn2]
embed: {image_encoder: null, gene_encoder: pca, settings: {n_pcs: 10, n_hvg: 100}}
graph: {scales: [1.0, 2.0], n_dir_bins: 4}
model: {hidden: 16, heads: 2}
train: {epochs: %(epochs)d, patience: %(patience)d, min_epochs: 1, seeds: [0]}
protocol: {kind: fixed}
track: {mode: disabled}
"""


class Crash(BaseException):
    """Stands for a kill."""


def _cfg(tmp_path, overrides=None, epochs=4, patience=3):
    from spagraph.experiment.config import load_config
    p = tmp_path / "c.yaml"
    p.write_text(CFG % {"epochs": epochs, "patience": patience})
    return load_config(p, overrides)


def comparable(run: Path):
    m = json.loads((run / "metrics.json").read_text())
    return m["mean"], m["per_slice"], (run / "predictions.csv").read_bytes()


@pytest.mark.bad_input
def test_resume_finished_run_with_changed_config_refuses_naming_keys(tmp_path, one_thread):
    from spagraph.experiment.resume import ResumeMismatch
    from spagraph.experiment.runner import run_experiment
    run_experiment(_cfg(tmp_path), tmp_path / "run", progress=False, write_maps=False)
    before = (tmp_path / "run" / "predictions.csv").read_bytes()
    with pytest.raises(ResumeMismatch) as err:
        run_experiment(_cfg(tmp_path, ["model.hidden=32", "train.lr=0.002"]), tmp_path / "run", resume=True,
                       progress=False, write_maps=False)
    msg = str(err.value)
    assert "model.hidden: 16 -> 32" in msg and "train.lr: 0.001 -> 0.002" in msg and "--recompute-changed" in msg
    assert "model.heads" not in msg
    assert (tmp_path / "run" / "predictions.csv").read_bytes() == before      # nothing overwritten
    # asked to: the changed folds are recomputed, equal to a fresh run with the new config
    new = _cfg(tmp_path, ["model.hidden=32", "train.lr=0.002"])
    run_experiment(new, tmp_path / "run", resume=True, recompute_changed=True, progress=False, write_maps=False)
    run_experiment(new, tmp_path / "fresh", progress=False, write_maps=False)
    assert comparable(tmp_path / "run") == comparable(tmp_path / "fresh")
    assert json.loads((tmp_path / "run" / "folds" / "fixed_s0.json").read_text())["config_hash"] == new.config_hash()


@pytest.mark.bad_input
def test_resume_mid_fit_with_changed_config_is_one_clear_error(tmp_path, one_thread):
    from spagraph.experiment.resume import ResumeMismatch
    from spagraph.experiment.runner import run_experiment

    def crash(fold, seed, epoch, rec):
        if epoch == 1:
            raise Crash()

    with pytest.raises(Crash):
        run_experiment(_cfg(tmp_path), tmp_path / "run", progress=False, write_maps=False, on_epoch=crash)
    assert (tmp_path / "run" / "checkpoints" / "fixed_s0.pt").exists()
    with pytest.raises(ResumeMismatch) as err:
        run_experiment(_cfg(tmp_path, ["model.hidden=32"]), tmp_path / "run", resume=True, progress=False,
                       write_maps=False)
    msg = str(err.value)
    assert "model.hidden: 16 -> 32" in msg and "fixed_s0" in msg
    assert "size mismatch" not in msg and len(msg.splitlines()) == 1


@pytest.mark.bad_input
def test_resume_with_changed_data_refuses(tmp_path, one_thread):
    from spagraph.experiment.resume import ResumeMismatch
    from spagraph.experiment.runner import run_experiment
    cfg = _cfg(tmp_path)
    run_experiment(cfg, tmp_path / "run", progress=False, write_maps=False)
    rec = json.loads((tmp_path / "run" / "folds" / "fixed_s0.json").read_text())
    rec["inputs"]["slices"]["syn2"] = "0" * 64          # as if the test slice's counts had changed
    (tmp_path / "run" / "folds" / "fixed_s0.json").write_text(json.dumps(rec))
    with pytest.raises(ResumeMismatch, match="slice syn2: content changed"):
        run_experiment(cfg, tmp_path / "run", resume=True, progress=False, write_maps=False)


def test_resume_when_crash_lands_on_the_early_stopping_epoch(tmp_path, one_thread):
    from spagraph.experiment.runner import run_experiment
    cfg = _cfg(tmp_path, epochs=40, patience=1)
    run_experiment(cfg, tmp_path / "ref", progress=False, write_maps=False)
    seen = []
    run_experiment(cfg, tmp_path / "probe", progress=False, write_maps=False,
                   on_epoch=lambda f, s, e, r: seen.append(e))
    stop_epoch = seen[-1]
    assert stop_epoch < 39, "early stopping must fire before the last epoch for this test to mean anything"

    def crash(fold, seed, epoch, rec):
        if epoch == stop_epoch:
            raise Crash()

    with pytest.raises(Crash):
        run_experiment(cfg, tmp_path / "run", progress=False, write_maps=False, on_epoch=crash)
    ran = []
    run_experiment(cfg, tmp_path / "run", resume=True, progress=False, write_maps=False,
                   on_epoch=lambda f, s, e, r: ran.append(e))
    assert ran == [], f"the resumed fit trained epochs {ran} after early stopping had fired"
    assert comparable(tmp_path / "run") == comparable(tmp_path / "ref")


@pytest.mark.bad_input
def test_cli_resume_with_changed_config_exits_2_naming_keys(tmp_path, one_thread):
    from typer.testing import CliRunner
    from spagraph.cli import app
    from spagraph.experiment.runner import run_experiment
    run_experiment(_cfg(tmp_path), tmp_path / "run", progress=False, write_maps=False)
    r = CliRunner().invoke(app, ["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--resume",
                                 "--no-progress", "--set", "model.hidden=32"])
    assert r.exit_code == 2, r.output
    assert "model.hidden: 16 -> 32" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"),
                                 "--recompute-changed", "--no-progress"])
    assert r.exit_code == 2 and "--recompute-changed needs --resume" in r.output


class _RunsCodeOnLoad:
    """Unpickling this calls os.makedirs(path): what a tampered checkpoint could do."""
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os
        return (os.makedirs, (self.path,))


@pytest.mark.bad_input
def test_resume_never_runs_code_from_a_tampered_checkpoint(tmp_path, one_thread):
    """Epoch checkpoints load with weights_only=True: an object that would run code on load is
    refused (the fit restarts from epoch 0, the run finishes) and its code never runs."""
    import torch
    from spagraph.experiment.runner import run_experiment

    def crash(fold, seed, epoch, rec):
        if epoch == 1:
            raise Crash()

    with pytest.raises(Crash):
        run_experiment(_cfg(tmp_path), tmp_path / "run", progress=False, write_maps=False, on_epoch=crash)
    ckpt = tmp_path / "run" / "checkpoints" / "fixed_s0.pt"
    marker = tmp_path / "code_ran"
    torch.save({"epoch": 0, "payload": _RunsCodeOnLoad(marker)}, ckpt)
    run_experiment(_cfg(tmp_path), tmp_path / "run", resume=True, progress=False, write_maps=False)
    assert not marker.exists()
    assert (tmp_path / "run" / "metrics.json").exists()
