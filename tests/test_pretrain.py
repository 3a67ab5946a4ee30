"""Self-supervised pretraining (spagraph.pretrain): the patient rule, loss, determinism, the runner hook."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spagraph.experiment.config import validate_config
from spagraph.io.synthetic import make_synthetic_slice
from spagraph.pretrain import pool as pool_mod
from spagraph.pretrain import ssl
from spagraph.pretrain.pool import PatientLeak, allowed_sections, patient_of

POOL = ["A2", "A3", "B2", "B3", "C2", "D2"]


def _fake_pool(tmp_path: Path, names=POOL) -> Path:
    """A pool folder the lister accepts (the spy reader below supplies the contents)."""
    root = tmp_path / "pool"
    (root / "counts").mkdir(parents=True)
    for n in names:
        (root / "counts" / f"{n}.tsv.gz").write_bytes(b"")
    return root


def _slice(name: str, seed: int):
    return make_synthetic_slice(n_spots=120, seed=seed, n_genes=60, with_image=False, library_id=name)


class SpyReader:
    """Stands in for the pool reader: records every section read, returns a synthetic slice."""

    def __init__(self):
        self.read: list[str] = []

    def __call__(self, root, name):
        self.read.append(name)
        return _slice(name, seed=100 + sum(map(ord, name)))


def _cfg(pool_root: Path, **pretrain):
    return validate_config({
        "name": "pt", "data": {"sources": [{"reader": "synthetic", "n_slices": 3, "n_spots": 120}]},
        "embed": {"image_encoder": None, "gene_encoder": "pca", "settings": {"n_hvg": 40, "n_pcs": 6}},
        "graph": {"scales": [1.0, 2.0], "n_dir_bins": 4},
        "model": {"hidden": 8, "heads": 2, "contrastive_weight": 0.0, "linear_path": True},
        "train": {"epochs": 2, "patience": 2, "min_epochs": 1, "seeds": [0]},
        "threshold": {"method": "fixed"},
        "pretrain": {"enabled": True, "pool": str(pool_root), "epochs": 3, **pretrain}})


def _encoder(names=("B1", "C1")):
    from spagraph.embed.gene import fit_gene_encoder
    return fit_gene_encoder("pca", [_slice(n, i) for i, n in enumerate(names)], {"n_hvg": 40, "n_pcs": 6})


# ------------------------------------------------------------------ the rule itself


def test_patient_of_her2st_names():
    assert [patient_of(n) for n in ("A1", "C3", "G2", "H1")] == ["A", "C", "G", "H"]
    with pytest.raises(ValueError, match="cannot tell its patient"):
        patient_of("12")


def test_allowed_sections_drop_every_section_of_the_test_patient():
    assert allowed_sections(["A1"], POOL) == ["B2", "B3", "C2", "D2"]
    assert allowed_sections(["B1", "D1"], POOL) == ["A2", "A3", "C2"]
    assert allowed_sections(["E1"], POOL) == POOL


def test_explicit_same_patient_section_is_refused():
    with pytest.raises(PatientLeak, match=r"A3.*test patient"):
        allowed_sections(["A1"], POOL, explicit=["B2", "A3"])
    assert allowed_sections(["A1"], POOL, explicit=["B2", "C2"]) == ["B2", "C2"]
    with pytest.raises(ValueError, match="does not hold"):
        allowed_sections(["A1"], POOL, explicit=["Z9"])


def test_pretraining_reads_no_section_of_the_test_patient(tmp_path, monkeypatch, one_thread):
    """The spy sees every pool section pretraining reads: none may be the test patient's.
    (Removing the exclusion in allowed_sections makes this test fail: checked by hand.)"""
    root = _fake_pool(tmp_path)
    cfg = _cfg(root)
    enc = _encoder()
    for test in (["A1"], ["B1"], ["C1"]):
        spy = SpyReader()
        monkeypatch.setattr(pool_mod, "read_section", spy)
        res = ssl.pretrain_fold(cfg, test, enc)
        banned = patient_of(test[0])
        assert spy.read, "pretraining read nothing"
        assert all(patient_of(n) != banned for n in spy.read), (test, spy.read)
        assert sorted(spy.read) == res["sections"] == [n for n in POOL if n[0] != banned]


def test_runner_pretrains_each_fold_without_its_test_patient(tmp_path, monkeypatch, one_thread):
    """End to end: a leave-one-slice-out run over A1, B1, C1 with pretraining on; per fold the spy
    records which pool sections were read."""
    from spagraph.experiment.runner import run_experiment
    root = _fake_pool(tmp_path)
    cfg = _cfg(root)
    reads: dict[str, list[str]] = {}
    current: list[str] = []
    orig = ssl.pretrain_fold

    def spy_read(r, name):
        reads.setdefault(current[0], []).append(name)
        return _slice(name, seed=100 + sum(map(ord, name)))

    def wrapped(cfg, test_slices, encoder, base_dir=None):
        current[:] = [test_slices[0]]
        return orig(cfg, test_slices, encoder, base_dir)

    monkeypatch.setattr(pool_mod, "read_section", spy_read)
    monkeypatch.setattr(ssl, "pretrain_fold", wrapped)
    slices = {n: _slice(n, i) for i, n in enumerate(["A1", "B1", "C1"])}
    m = run_experiment(cfg, tmp_path / "out", progress=False, write_maps=False, slices=slices)
    assert sorted(reads) == ["A1", "B1", "C1"]
    for test, names in reads.items():
        assert names and all(patient_of(n) != patient_of(test) for n in names), (test, names)
    rep = m["folds"]["A1"]["embed"]["pretrain"]
    assert rep["sections"] == ["B2", "B3", "C2", "D2"] and rep["loss_last"] is not None


# ------------------------------------------------------------------ the objective


def _graphs(n=3):
    from spagraph.experiment.config import GraphConfig
    from spagraph.graph import build_slice_graph
    enc = _encoder()
    out = []
    for i in range(n):
        a = _slice(f"P{i}", 50 + i)
        a.obsm["gene_emb"] = enc.transform(a)
        out.append(build_slice_graph(a, GraphConfig(scales=[1.0, 2.0], n_dir_bins=4), name=f"P{i}"))
    return out


@pytest.mark.parametrize("objective", ["masked", "contrastive"])
def test_pretraining_loss_decreases(objective, tmp_path, one_thread):
    cfg = _cfg(tmp_path, objective=objective, epochs=25, lr=3e-3)
    res = ssl.pretrain_stream(_graphs(), cfg.model, cfg.pretrain)
    first = np.mean([h["loss"] for h in res["history"][:3]])
    last = np.mean([h["loss"] for h in res["history"][-3:]])
    assert last < 0.95 * first, [round(h["loss"], 3) for h in res["history"]]


def test_pretraining_is_deterministic(tmp_path, one_thread):
    cfg = _cfg(tmp_path, objective="both", epochs=2)
    g = _graphs(2)
    a = ssl.pretrain_stream(g, cfg.model, cfg.pretrain)["state"]
    b = ssl.pretrain_stream(g, cfg.model, cfg.pretrain)["state"]
    c = ssl.pretrain_stream(g, cfg.model, cfg.pretrain.model_copy(update={"seed": 1}))["state"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_pretrained_weights_load_into_the_model_and_mismatch_is_clear(tmp_path):
    from spagraph.nn.model import SpaGraphNet
    cfg = _cfg(tmp_path, epochs=1)
    g = _graphs(1)
    st = ssl.pretrain_stream(g, cfg.model, cfg.pretrain)["state"]
    model = SpaGraphNet(0, g[0].x_gene.shape[1], 2, 4, cfg.model)
    ssl.load_pretrained(model, st)
    assert all(torch.equal(model.gene.state_dict()[k], st[k]) for k in st)
    wide = SpaGraphNet(0, g[0].x_gene.shape[1] + 1, 2, 4, cfg.model)
    with pytest.raises(ValueError, match="do not fit the model"):
        ssl.load_pretrained(wide, st)


def test_pretraining_cache_is_keyed_by_content(tmp_path, monkeypatch, one_thread):
    """Same fold inputs: one pretraining (memory, then disk in a fresh process); another
    excluded patient: another key."""
    root = _fake_pool(tmp_path)
    cfg = _cfg(root, cache_dir=str(tmp_path / "cache"), epochs=1)
    monkeypatch.setattr(pool_mod, "read_section", SpyReader())
    monkeypatch.setattr(ssl, "_CACHE", {})
    enc = _encoder()
    a = ssl.pretrain_fold(cfg, ["A1"], enc)
    b = ssl.pretrain_fold(cfg, ["A1"], enc)
    monkeypatch.setattr(ssl, "_CACHE", {})
    c = ssl.pretrain_fold(cfg, ["A1"], enc)
    d = ssl.pretrain_fold(cfg, ["B1"], enc)
    assert (a["cache"], b["cache"], c["cache"], d["cache"]) == ("miss", "memory", "disk", "miss")
    assert a["key"] == b["key"] == c["key"] != d["key"]
    assert all(torch.equal(a["state"][k], c["state"][k]) for k in a["state"])


def test_cache_key_ignores_what_the_stream_does_not_read(tmp_path):
    """The prior's C and smoothing (chosen per fold) do not force a new pretraining; a stream
    setting does; and STREAM_FIELDS is exactly what ``_Stream`` reads from the settings."""
    from spagraph.graph import GraphSettings, build_slice_graph
    from spagraph.nn.model import _Stream
    cfg = _cfg(_fake_pool(tmp_path))
    a = _slice("A2", 3)
    a.obsm["gene_emb"] = np.asarray(_encoder().transform(a), dtype=np.float32)
    graphs = {"A2": build_slice_graph(a, GraphSettings(scales=[1.0, 2.0], n_dir_bins=4), label_key="__none__", name="A2")}
    key = lambda ms: ssl.content_key(graphs, ms, cfg.pretrain, cfg.graph)
    base = key(cfg.model)
    assert key(cfg.model.model_copy(update={"linear_C": 3.0, "feature_smoothing": 0.5, "heads": 4})) == base
    assert key(cfg.model.model_copy(update={"hidden": 16})) != base
    assert key(cfg.model.model_copy(update={"n_modes": 3})) != base
    assert key(cfg.model.model_copy(update={"token_norm": True})) != base
    assert key(cfg.model.model_copy(update={"msfa_input": "input"})) != base

    class Spy:
        def __init__(self, s):
            self.s, self.read = s, set()

        def __getattr__(self, k):
            self.read.add(k)
            return getattr(self.s, k)
    spy = Spy(cfg.model)
    _Stream(6, spy, 2, 4)
    assert spy.read == set(ssl.STREAM_FIELDS)


def test_pretrain_config_defaults_off_and_checked(tmp_path):
    from spagraph.experiment.config import ConfigError, ExperimentConfig
    base = {"data": {"sources": [{"reader": "synthetic"}]}}
    cfg = ExperimentConfig.model_validate(base)
    assert cfg.pretrain.enabled is False
    # off by default: the config hash is the one of a config without the section
    assert cfg.config_hash() == ExperimentConfig.model_validate(base | {"pretrain": {"epochs": 30}}).config_hash()
    on = ExperimentConfig.model_validate(base | {"pretrain": {"enabled": True}})
    assert cfg.config_hash() != on.config_hash()
    assert on.config_hash() == ExperimentConfig.model_validate(
        base | {"pretrain": {"enabled": True, "cache_dir": "elsewhere"}}).config_hash()
    with pytest.raises(ConfigError, match="nested"):
        validate_config(base | {"pretrain": {"enabled": True}, "nested": {"grid": {}}})


@pytest.mark.realdata
def test_real_pool_minus_each_annotated_patient(her2st_unlabelled_root):
    """The 28 unannotated her2st sections: for each annotated test section, its patient's 2-5
    other sections are excluded and nothing else (listing only, no counts read)."""
    from spagraph.pretrain.pool import list_pool
    pool = list_pool(her2st_unlabelled_root)
    assert len(pool) == 28
    for test in ("A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1"):
        ok = allowed_sections([test], pool)
        assert not [n for n in ok if n[0] == test[0]]
        assert sorted(set(pool) - set(ok)) == [n for n in pool if n[0] == test[0]]
        assert len(ok) == (23 if test[0] in "ABCD" else 26)
