"""benchmarks/deep_ideas.py: the pretrain and combo variants, the patient rule per outer fold, and
that one fit (with pretrained weights) is deterministic and really starts from those weights."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from spagraph.experiment.config import load_config, validate_config
from spagraph.io.synthetic import make_synthetic_slice
from spagraph.pretrain import pool as pool_mod
from spagraph.pretrain import ssl
from spagraph.pretrain.pool import PatientLeak, patient_of

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("deep_ideas", ROOT / "benchmarks/deep_ideas.py")
di = importlib.util.module_from_spec(spec)
spec.loader.exec_module(di)

POOL = ["A2", "A3", "B2", "C2", "C3"]


def _slice(name: str, seed: int):
    return make_synthetic_slice(n_spots=100, seed=seed, n_genes=50, with_image=False, library_id=name)


def _cfg(pool_root: Path, **over):
    d = {"name": "di", "data": {"sources": [{"reader": "synthetic", "n_slices": 4, "n_spots": 100}]},
         "embed": {"image_encoder": None, "gene_encoder": "pca", "settings": {"n_hvg": 40, "n_pcs": 6}},
         "graph": {"scales": [1.0, 2.0], "n_dir_bins": 4},
         "model": {"hidden": 8, "heads": 2, "contrastive_weight": 0.0, "linear_path": True},
         "train": {"epochs": 3, "patience": 3, "min_epochs": 1, "seeds": [0]},
         "threshold": {"method": "fixed"}}
    cfg = validate_config(d)
    from spagraph.experiment.tune import apply_params
    return apply_params(cfg, {**di.VARIANTS["pretrain"], "pretrain.pool": str(pool_root), "pretrain.epochs": 2,
                              **over})


def _pool(tmp_path: Path) -> Path:
    root = tmp_path / "pool"
    (root / "counts").mkdir(parents=True)
    for n in POOL:
        (root / "counts" / f"{n}.tsv.gz").write_bytes(b"")
    return root


def _read(root, name):
    return _slice(name, seed=200 + sum(map(ord, name)))


def test_pretrain_variant_is_the_yaml_section():
    """The variant sets exactly the pretrain section of experiments/her2st_loso_pretrain.yaml
    (cache_dir aside): a change to either side fails here."""
    import yaml
    raw = yaml.safe_load((ROOT / "experiments/her2st_loso_pretrain.yaml").read_text())
    assert raw["extends"] == "her2st_loso.yaml" and set(raw) == {"extends", "name", "pretrain"}
    want = {f"pretrain.{k}": v for k, v in raw["pretrain"].items() if k != "cache_dir"}
    assert di.VARIANTS["pretrain"] == want
    # and the variant on her2st_loso.yaml is the pretrain YAML's config (name and cache aside)
    from spagraph.experiment.tune import apply_params
    a = apply_params(load_config(ROOT / "experiments/her2st_loso.yaml"), di.VARIANTS["pretrain"])
    b = load_config(ROOT / "experiments/her2st_loso_pretrain.yaml")
    assert a.config_hash() == b.model_copy(update={"name": a.name}).config_hash()


def test_combo_is_nval2_adabn_orient():
    assert di.VARIANTS["combo"] == {**di.VARIANTS["nval2"], **di.VARIANTS["adabn"], **di.VARIANTS["orient"]}


def _fold(tmp_path, monkeypatch, test="A1"):
    from spagraph.experiment.data import plan_folds
    from spagraph.experiment.runner import embed_and_graph
    monkeypatch.setattr(pool_mod, "read_section", _read)
    monkeypatch.setattr(ssl, "_CACHE", {})
    cfg = _cfg(_pool(tmp_path))
    slices = {n: _slice(n, i) for i, n in enumerate(["A1", "B1", "C1", "D1"])}
    fold = next(f for f in plan_folds(cfg, list(slices), {n: n[0] for n in slices}) if f.test == [test])
    graphs, report = embed_and_graph(cfg, slices, fold)
    return cfg, graphs, fold, report["gene_encoder"]


def test_fold_pretraining_excludes_the_test_patient_and_refuses_a_leak(tmp_path, monkeypatch, one_thread):
    cfg, graphs, fold, enc = _fold(tmp_path, monkeypatch, "A1")
    pt = di.fold_pretraining(cfg, "A1", enc)
    assert pt["sections"] == ["B2", "C2", "C3"]
    assert all(patient_of(n) != "A" for n in pt["sections"])
    orig = ssl.pretrain_fold

    def leaky(cfg, test_slices, encoder, base_dir=None):   # a pool filter that forgot the rule
        return orig(cfg, test_slices, encoder, base_dir) | {"sections": ["A2", "B2", "C2", "C3"]}
    monkeypatch.setattr(ssl, "pretrain_fold", leaky)
    with pytest.raises(PatientLeak, match="A2"):
        di.fold_pretraining(cfg, "A1", enc)


def test_fit_all_ways_starts_from_the_pretrained_stream_and_is_deterministic(tmp_path, monkeypatch, one_thread):
    cfg, graphs, fold, enc = _fold(tmp_path, monkeypatch, "B1")
    pt = di.fold_pretraining(cfg, "B1", enc)
    assert "B2" not in pt["sections"]
    seen = []
    orig = ssl.load_pretrained

    def spy(model, state):
        orig(model, state)
        seen.append({k: v.clone() for k, v in model.gene.state_dict().items()})
    monkeypatch.setattr(ssl, "load_pretrained", spy)
    a = di.fit_all_ways(cfg, graphs, fold, 0, pretrained=pt["state"])
    assert len(seen) == 1 and all(torch.equal(seen[0][k], pt["state"][k]) for k in pt["state"])
    b = di.fit_all_ways(cfg, graphs, fold, 0, pretrained=pt["state"])
    drop = ("fit_seconds",)
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    c = di.fit_all_ways(cfg, graphs, fold, 0)
    assert len(seen) == 2                              # no weights given: nothing loaded
    assert c["test_prior"] == a["test_prior"]          # the linear prior ignores the gene stream's start


def test_tokens_variant_is_the_token_tasks_two_options_and_nothing_else():
    """The ``tokens`` variant sets exactly the scale-token options of the synthetic token task's
    model (TOKEN_MODEL, spagraph/io/graph_task.py) and changes nothing else of her2st_loso.yaml."""
    from spagraph.experiment.tune import apply_params
    from spagraph.io.graph_task import TASK_MODEL, TOKEN_MODEL
    token_opts = {k: v for k, v in TOKEN_MODEL.items() if k not in TASK_MODEL}
    assert di.VARIANTS["tokens"] == {f"model.{k}": v for k, v in token_opts.items()}
    base = load_config(ROOT / "experiments/her2st_loso.yaml")
    tok = apply_params(base, di.VARIANTS["tokens"])
    assert tok.model.msfa_input == "input" and tok.model.token_norm is True
    assert tok.config_hash() != base.config_hash()
    back = tok.model_copy(update={"model": tok.model.model_copy(update={"msfa_input": base.model.msfa_input,
                                                                          "token_norm": base.model.token_norm})})
    assert back.config_hash() == base.config_hash()


def test_tokens_combo_is_combo_plus_tokens():
    assert di.VARIANTS["tokens_combo"] == {**di.VARIANTS["combo"], **di.VARIANTS["tokens"]}
