"""A full disk, a refused permission, a read-only mount, and corrupt model / run files.

I/O failures are simulated by making the low-level write raise ``OSError(errno.ENOSPC)`` (or
torch's own RuntimeError, which hides the errno, with the folder reported full). Each must give one
line naming the path and the cause, leave no temporary file, and keep what was there before.
Corrupt files must give an error naming the file; saved weights load with ``weights_only=True``
only, and torch's advice to retry with ``weights_only=False`` is never shown.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from spagraph.cli import app

pytestmark = pytest.mark.bad_input



def cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def assert_one_line(code, out, *needles):
    assert code == 2, out
    assert "Traceback" not in out, out
    errs = [l for l in out.splitlines() if l.startswith("error:")]
    assert len(errs) == 1, out
    for n in needles:
        assert n in errs[0], f"{n!r} not in {errs[0]!r}"
    assert "weights_only=False" not in out


def tmp_leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_fixed_yaml):
    """A finished tiny run with one saved model, and a slice to predict on."""
    from spagraph.experiment.config import load_config
    from spagraph.experiment.runner import run_experiment
    from spagraph.io.synthetic import make_synthetic_slice
    root = tmp_path_factory.mktemp("trained")
    (root / "exp.yaml").write_text(tiny_fixed_yaml("ioerr"))
    run_experiment(load_config(root / "exp.yaml"), root / "run", progress=False, write_maps=False, save_models=True)
    make_synthetic_slice(n_spots=120, with_image=False, seed=4).write_h5ad(root / "slice.h5ad")
    return root


def model_copy(trained, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(trained / "run" / "models" / "fixed_s0", dst)
    return dst


def enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


# ------------------------------------------------------------------ full disk, permission, read-only


def test_predict_full_disk_one_line_nothing_left(trained, tmp_path, monkeypatch):
    import spagraph.utils as utils
    monkeypatch.setattr(utils, "_write_bytes", enospc)
    out = tmp_path / "p.h5ad"
    code, text = cli("predict", trained / "run" / "models", trained / "slice.h5ad", "--out", out, "--mc-passes", "0",
                     "--no-plot")
    assert_one_line(code, text, str(out), "no space left on device")
    assert not list(tmp_path.iterdir()), "nothing half-written"


def test_predict_csv_full_disk(trained, tmp_path, monkeypatch):
    def to_csv(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    out = tmp_path / "p.h5ad"
    code, text = cli("predict", trained / "run" / "models", trained / "slice.h5ad", "--out", out, "--mc-passes", "0",
                     "--no-plot")
    assert_one_line(code, text, "p.csv", "no space left on device")
    assert not tmp_leftovers(tmp_path)


def test_run_full_disk_in_torch_save(trained, tmp_path, monkeypatch):
    """torch hides the errno ("file write failed"): the folder is then diagnosed as full."""
    import torch
    import spagraph.utils as utils

    def torch_save(obj, f, *a, **k):
        Path(f).write_bytes(b"\x00partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                           "file write failed")

    class Full:
        f_flag, f_bavail, f_frsize = 0, 0, 4096

    monkeypatch.setattr(torch, "save", torch_save)
    monkeypatch.setattr(utils.os, "statvfs", lambda p: Full())
    out = tmp_path / "run"
    code, text = cli("run", trained / "exp.yaml", "--out", out, "--no-progress")
    assert_one_line(code, text, "checkpoints", "no space left on device")
    assert "PytorchStreamWriter" not in text and not tmp_leftovers(out)


def test_run_results_full_disk(trained, tmp_path, monkeypatch):
    def to_csv(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    out = tmp_path / "run"
    code, text = cli("run", trained / "exp.yaml", "--out", out, "--no-progress")
    assert_one_line(code, text, str(out / "folds"), "no space left on device")
    assert not tmp_leftovers(out)


def test_output_folder_permission_denied(trained, tmp_path, monkeypatch):
    real = Path.mkdir

    def mkdir(self, *a, **k):
        if "denied" in str(self):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, text = cli("predict", trained / "run" / "models", trained / "slice.h5ad", "--out",
                     tmp_path / "denied" / "p.h5ad", "--mc-passes", "0", "--no-plot")
    assert_one_line(code, text, "denied", "permission denied")


def test_read_only_file_system(trained, tmp_path, monkeypatch):
    import tempfile

    def mkstemp(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    out = tmp_path / "p.h5ad"
    code, text = cli("predict", trained / "run" / "models", trained / "slice.h5ad", "--out", out, "--mc-passes", "0",
                     "--no-plot")
    assert_one_line(code, text, str(out), "read-only file system")


def test_save_model_full_disk_keeps_previous_folder(trained, tmp_path, monkeypatch):
    import torch
    from spagraph.utils import WriteError, atomic_dir
    target = model_copy(trained, tmp_path)
    before = sorted(p.name for p in target.iterdir())
    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(WriteError, match=r"cannot write .*model.*: no space left on device"):
        with atomic_dir(target) as d:
            torch.save({}, d / "model.pt")
    assert sorted(p.name for p in target.iterdir()) == before and not tmp_leftovers(tmp_path)


def test_non_io_failure_is_not_disguised(tmp_path):
    from spagraph.utils import atomic_path
    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "x.txt"):
            raise KeyError("a bug, not a disk problem")
    assert not list(tmp_path.iterdir())


def test_embed_full_disk(tmp_path, monkeypatch, trained):
    import spagraph.utils as utils
    monkeypatch.setattr(utils, "_write_bytes", enospc)
    code, text = cli("embed", trained / "slice.h5ad", "--image-encoder", "none", "--out", tmp_path / "e.h5ad",
                     "--set", "n_pcs=4", "--set", "n_hvg=40", "--no-progress")
    assert_one_line(code, text, "e.h5ad", "no space left on device")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ corrupt saved model files


def predict_error(model, trained, tmp_path):
    code, text = cli("predict", model, trained / "slice.h5ad", "--out", tmp_path / "p.h5ad", "--mc-passes", "0",
                     "--no-plot")
    return code, text


@pytest.mark.parametrize("content", [b"this is not a model\n", b"", b"PK\x03\x04truncated"])
def test_corrupt_model_pt(trained, tmp_path, content):
    m = model_copy(trained, tmp_path)
    (m / "model.pt").write_bytes(content)
    code, text = predict_error(m, trained, tmp_path)
    assert_one_line(code, text, "model.pt", "cannot load the model weights")


def test_truncated_model_pt(trained, tmp_path):
    m = model_copy(trained, tmp_path)
    raw = (m / "model.pt").read_bytes()
    (m / "model.pt").write_bytes(raw[: len(raw) // 2])
    code, text = predict_error(m, trained, tmp_path)
    assert_one_line(code, text, "model.pt")


def test_model_pt_holding_a_pickled_object_is_refused(trained, tmp_path):
    import torch
    m = model_copy(trained, tmp_path)
    torch.save({"weights": Path("/etc/passwd")}, m / "model.pt")     # any non-tensor global
    code, text = predict_error(m, trained, tmp_path)
    assert_one_line(code, text, "model.pt", "pickled Python objects")


def test_model_pt_for_another_architecture(trained, tmp_path):
    import torch
    m = model_copy(trained, tmp_path)
    st = torch.load(m / "model.pt", weights_only=True)
    k = next(iter(st))
    st[k] = torch.zeros(*(s + 1 for s in st[k].shape))
    torch.save(st, m / "model.pt")
    code, text = predict_error(m, trained, tmp_path)
    assert_one_line(code, text, "model.pt", "do not match the model described in meta.json")


@pytest.mark.parametrize("text_,needle", [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"),
                                          ('{"d_img": 0}', "missing key(s)")])
def test_corrupt_meta_json(trained, tmp_path, text_, needle):
    m = model_copy(trained, tmp_path)
    (m / "meta.json").write_text(text_)
    code, text = predict_error(m, trained, tmp_path)
    assert_one_line(code, text, "meta.json", needle)


def test_meta_json_bad_model_settings(trained, tmp_path):
    m = model_copy(trained, tmp_path)
    meta = json.loads((m / "meta.json").read_text())
    meta["model_settings"]["no_such_setting"] = 1
    (m / "meta.json").write_text(json.dumps(meta))
    code, text = predict_error(m, trained, tmp_path)
    assert_one_line(code, text, "meta.json", "model_settings")


@pytest.mark.parametrize("kind", ["garbage", "pickled", "2d", "out_of_range"])
def test_corrupt_val_scores(trained, tmp_path, kind):
    m = model_copy(trained, tmp_path)
    p = m / "val_scores.npy"
    if kind == "garbage":
        p.write_bytes(b"\x93NUMPY garbage")
    elif kind == "pickled":
        np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "2d":
        np.save(p, np.zeros((3, 3)))
    else:
        np.save(p, np.array([0.2, 1.7]))
    code, text = predict_error(m, trained, tmp_path)
    assert_one_line(code, text, "val_scores.npy")


@pytest.mark.parametrize("kind", ["garbage", "incomplete"])
def test_corrupt_gene_encoder(trained, tmp_path, kind):
    import torch
    m = model_copy(trained, tmp_path)
    if kind == "garbage":
        (m / "gene_encoder.pt").write_text("nope")
    else:
        st = torch.load(m / "gene_encoder.pt", weights_only=True)
        del st["genes"]
        torch.save(st, m / "gene_encoder.pt")
    code, text = predict_error(m, trained, tmp_path)
    assert_one_line(code, text, "gene_encoder.pt")


def test_gene_encoder_loads_weights_only_and_old_numpy_states(trained, tmp_path):
    """Saved states are plain lists (weights_only=True loads them); states saved earlier held numpy
    arrays: those load too, through numpy's array constructors only."""
    import torch
    from spagraph.train.saved import load_model
    m = model_copy(trained, tmp_path)
    st = torch.load(m / "gene_encoder.pt", weights_only=True)
    assert isinstance(st["mean"], list)
    new = load_model(m).gene_encoder
    torch.save({k: (np.asarray(v, np.float32) if k in ("mean", "std", "components", "pc_mean") else v)
                for k, v in st.items()}, m / "gene_encoder.pt")
    old = load_model(m).gene_encoder
    np.testing.assert_array_equal(old.components, new.components)


def test_model_config_yaml_corrupt(trained, tmp_path):
    m = model_copy(trained, tmp_path)
    (m / "config.yaml").write_text("name: [unclosed\n")
    code, text = predict_error(m, trained, tmp_path)
    assert_one_line(code, text, "config.yaml", "not valid YAML")


def test_model_config_yaml_duplicate_key(trained, tmp_path):
    m = model_copy(trained, tmp_path)
    (m / "config.yaml").write_text((m / "config.yaml").read_text() + "name: again\n")
    code, text = predict_error(m, trained, tmp_path)
    assert_one_line(code, text, "config.yaml", "duplicate key 'name'")


def test_model_file_missing(trained, tmp_path):
    m = model_copy(trained, tmp_path)
    (m / "val_scores.npy").unlink()
    code, text = predict_error(m, trained, tmp_path)
    assert_one_line(code, text, "missing val_scores.npy")


# ------------------------------------------------------------------ corrupt run files


def run_copy(trained, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained / "run", dst)
    return dst


def test_report_with_corrupt_metrics_json(trained, tmp_path):
    r = run_copy(trained, tmp_path)
    (r / "metrics.json").write_text('{"per_slice": [')
    code, text = cli("report", r)
    assert_one_line(code, text, "metrics.json", "not valid JSON")


def test_report_with_corrupt_predictions_csv(trained, tmp_path):
    r = run_copy(trained, tmp_path)
    (r / "predictions.csv").write_bytes(b"slice,spot\n\"unclosed")
    code, text = cli("report", r)
    assert_one_line(code, text, "predictions.csv")


def test_resume_with_corrupt_fold_json(trained, tmp_path):
    r = run_copy(trained, tmp_path)
    (r / "folds" / "fixed_s0.json").write_text("{trunc")
    code, text = cli("run", trained / "exp.yaml", "--out", r, "--resume", "--no-progress")
    assert_one_line(code, text, "fixed_s0.json")


def test_resume_with_corrupt_fold_csv(trained, tmp_path):
    r = run_copy(trained, tmp_path)
    (r / "folds" / "fixed_s0.csv").write_bytes(b"\x00\x01 not a table")
    code, text = cli("run", trained / "exp.yaml", "--out", r, "--resume", "--no-progress")
    assert_one_line(code, text, "fixed_s0.csv")


def test_suite_with_corrupt_entry_metrics(trained, tmp_path):
    from spagraph.bench.suite import run_suite
    s = tmp_path / "suite.yaml"
    shutil.copy(trained / "exp.yaml", tmp_path / "exp.yaml")
    s.write_text("name: s\nentries:\n  - {name: a, experiment: exp.yaml}\n")
    (tmp_path / "out" / "a").mkdir(parents=True)
    (tmp_path / "out" / "a" / "metrics.json").write_text("{")
    with pytest.raises(ValueError, match=r"a/metrics\.json: the suite entry metrics is not valid JSON"):
        run_suite(s, tmp_path / "out")
