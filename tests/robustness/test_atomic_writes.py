"""Nothing half-written: a failure in the middle of any writer leaves the previous file intact
and no temporary file behind.

Each test makes the low-level write (``DataFrame.to_csv``, ``Path.write_text``, ``torch.save``,
``np.save``, ``AnnData.write_h5ad``, ``Figure.savefig``) write some garbage bytes into its target
and then raise, as a full disk or a crash would.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spagraph.experiment.config import load_config



class Boom(RuntimeError):
    pass


def half_writer(original, target_arg=1, match=None):
    """Wrap a writer ``original(obj, target, ...)``: write junk into the target, then raise."""
    def wrapper(*args, **kwargs):
        target = args[target_arg] if len(args) > target_arg else None
        if hasattr(target, "write"):
            target.write(b"\x00garbage" if "b" in getattr(target, "mode", "b") else "garbage")
        elif target is not None:
            if match is not None and match not in Path(target).name:
                return original(*args, **kwargs)
            Path(target).write_bytes(b"\x00garbage")
        raise Boom("disk full (simulated)")
    return wrapper


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or ".old-" in p.name]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_fixed_yaml):
    from spagraph.experiment.runner import run_experiment
    d = tmp_path_factory.mktemp("atomic")
    (d / "exp.yaml").write_text(tiny_fixed_yaml("atomic"))
    cfg = load_config(d / "exp.yaml")
    run_experiment(cfg, d / "run", progress=False, save_models=True)
    return d


def fresh_copy(finished_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished_run / "run", dst)
    return dst


@pytest.mark.parametrize("where", ["predictions.csv", "metrics.json", "config.yaml", "maps"])
def test_runner_outputs_survive_failed_rewrite(finished_run, tmp_path, monkeypatch, where):
    """Resume a finished run (no training) with one writer failing: earlier outputs stay whole."""
    from spagraph.experiment.runner import run_experiment
    run = fresh_copy(finished_run, tmp_path)
    before = snapshot(run)
    if where == "predictions.csv":
        monkeypatch.setattr(pd.DataFrame, "to_csv", half_writer(pd.DataFrame.to_csv, match="predictions.csv"))
    elif where in ("metrics.json", "config.yaml"):
        monkeypatch.setattr(Path, "write_text", half_writer(Path.write_text, target_arg=0, match=where))
    else:
        from matplotlib.figure import Figure
        monkeypatch.setattr(Figure, "savefig", half_writer(Figure.savefig))
    with pytest.raises(Boom):
        run_experiment(load_config(finished_run / "exp.yaml"), run, resume=True, progress=False)
    after = snapshot(run)
    if where == "maps":   # metrics.json is legitimately rewritten before the maps (its wall_time_s differs)
        before.pop("metrics.json"); after.pop("metrics.json")
    assert after == before
    assert not leftovers(run)


def test_checkpoint_write_failure_leaves_no_checkpoint(finished_run, tmp_path, monkeypatch):
    import torch
    from spagraph.experiment import runner
    from spagraph.experiment.data import Fold
    cfg = load_config(finished_run / "exp.yaml")
    slices, _ = runner.load_slices(cfg.data)
    fold = Fold("f", ["syn0"], ["syn1"], ["syn2"])
    graphs, _ = runner.embed_and_graph(cfg, slices, fold)
    ck = tmp_path / "checkpoints" / "f_s0.pt"
    monkeypatch.setattr(torch, "save", half_writer(torch.save))
    with pytest.raises(Boom):
        runner.fit_predict(cfg, graphs, fold, 0, checkpoint=ck)
    assert not ck.exists() and not leftovers(tmp_path)


def test_saved_model_folder_all_or_nothing(finished_run, tmp_path, monkeypatch):
    import torch
    from spagraph.experiment import runner
    from spagraph.experiment.data import Fold
    from spagraph.train.saved import load_models, save_model
    run = fresh_copy(finished_run, tmp_path)
    models = run / "models"
    (folder,) = [p for p in models.iterdir()]
    before = snapshot(models)
    cfg = load_config(finished_run / "exp.yaml").model_copy(update={"name": "other"})
    slices, _ = runner.load_slices(cfg.data)
    fold = Fold("fixed", ["syn0"], ["syn1"], ["syn2"])
    graphs, _ = runner.embed_and_graph(cfg, slices, fold)
    model = load_models(folder)[0].model
    with torch.no_grad():                 # new weights, so a half-replaced folder would show
        next(model.parameters()).add_(1.0)
    real = torch.save
    calls = {"n": 0}

    def second_save_fails(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:               # model.pt written, gene_encoder.pt fails
            return half_writer(real)(obj, f, *a, **k)
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", second_save_fails)
    with pytest.raises(Boom):
        save_model(model, cfg, graphs, fold, folder, slices=slices, seed=0)
    assert calls["n"] == 2
    assert snapshot(models) == before
    assert not leftovers(models) and not [p for p in models.iterdir() if p.name.startswith(".")]
    assert load_models(folder)[0].meta["experiment"] == "atomic"


def test_embedding_cache_put_failure_keeps_old_entry(tmp_path, monkeypatch):
    from spagraph.embed.cache import EmbeddingCache
    cache = EmbeddingCache(tmp_path)
    old = np.arange(6, dtype=np.float32).reshape(3, 2)
    cache.put("k", old)
    monkeypatch.setattr(np, "save", half_writer(np.save, target_arg=0))
    with pytest.raises(Boom):
        cache.put("k", old * 10)
    monkeypatch.undo()
    assert np.array_equal(cache.get("k"), old) and not leftovers(tmp_path)


def test_prediction_h5ad_failure_keeps_old_file(tmp_path, monkeypatch):
    import anndata as ad
    from spagraph.train.saved import write_prediction
    a = ad.AnnData(np.ones((4, 2), np.float32))
    table = pd.DataFrame({"spot": list(map(str, a.obs_names)), "score": np.linspace(0, 1, 4)})
    out = tmp_path / "pred.h5ad"
    write_prediction(a, table, out)
    before = snapshot(tmp_path)
    import spagraph.utils as utils     # the .h5ad is built in memory, then written by utils._write_bytes
    monkeypatch.setattr(utils, "_write_bytes", half_writer(utils._write_bytes, target_arg=0))
    with pytest.raises(Boom):
        write_prediction(a, table, out)
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


def test_report_failure_keeps_old_report(finished_run, tmp_path, monkeypatch):
    from spagraph.report import write_report
    run = fresh_copy(finished_run, tmp_path)
    write_report(run)
    assert (run / "report.html").exists()
    before = snapshot(run)
    monkeypatch.setattr(Path, "write_text", half_writer(Path.write_text, target_arg=0, match="report.html"))
    with pytest.raises(Boom):
        write_report(run)
    assert snapshot(run) == before and not leftovers(run)


def test_atomic_path_and_dir_on_failure(tmp_path):
    from spagraph.utils import atomic_dir, atomic_path
    f = tmp_path / "a.txt"
    f.write_text("old")
    with pytest.raises(Boom):
        with atomic_path(f) as tmp:
            tmp.write_text("new, half")
            raise Boom()
    d = tmp_path / "folder"
    d.mkdir()
    (d / "x").write_text("old")
    with pytest.raises(Boom):
        with atomic_dir(d) as tmp:
            (tmp / "x").write_text("new")
            raise Boom()
    assert f.read_text() == "old" and (d / "x").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "folder"]
    with atomic_dir(d) as tmp:
        (tmp / "y").write_text("new")
    assert sorted(p.name for p in d.iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "folder"]
