"""embed_cohort: gene encoder fitted once on the driver (fit_on slides only), one task per slide;
same embeddings as embed_slices on the same slides."""
import anndata as ad
import numpy as np
import pytest


def test_embed_cohort_matches_embed_slices(tmp_path, one_thread):
    from spagraph.embed import embed_slices
    from spagraph.embed.cohort import embed_cohort
    from spagraph.io import read_slice
    from spagraph.io.synthetic import make_synthetic_slice
    paths = []
    for s in (1, 2, 3):
        make_synthetic_slice(n_spots=80, seed=s).write_h5ad(tmp_path / f"s{s}.h5ad")
        paths.append((tmp_path / f"s{s}.h5ad", None))
    settings = {"n_hvg": 60, "n_pcs": 6}
    rows = embed_cohort(paths, tmp_path / "out", fit_on=["s1", "s2"], image_encoder="handcrafted",
                        gene_encoder="pca", settings=settings)
    assert [r["slice"] for r in rows] == ["s1", "s2", "s3"] and all(r["d_gene"] == 6 for r in rows)
    ref = {f"s{s}": read_slice(tmp_path / f"s{s}.h5ad") for s in (1, 2, 3)}
    embed_slices(ref, fit_on=["s1", "s2"], image_encoder="handcrafted", gene_encoder="pca", settings=settings,
                 progress=False)
    for n in ("s1", "s2", "s3"):
        got = ad.read_h5ad(tmp_path / "out" / f"{n}.h5ad")
        np.testing.assert_allclose(got.obsm["gene_emb"], ref[n].obsm["gene_emb"], rtol=1e-5, atol=1e-5)
        if "img_emb" in ref[n].obsm:
            np.testing.assert_allclose(got.obsm["img_emb"], ref[n].obsm["img_emb"], rtol=1e-5, atol=1e-5)
        assert list(got.uns["spagraph_embed"]["fit_slices"]) == ["s1", "s2"]


def test_embed_cohort_fit_on_must_name_cohort_slides(tmp_path):
    from spagraph.embed.cohort import embed_cohort
    with pytest.raises(ValueError, match="fit_on"):
        embed_cohort([(tmp_path / "a.h5ad", None)], tmp_path / "out", fit_on=["zz"])
