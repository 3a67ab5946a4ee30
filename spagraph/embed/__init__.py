"""Embedding stage: frozen image encoders and fitted-on-training-only gene encoders, cached.

Writes ``obsm["gene_emb"]``, ``obsm["img_emb"]`` (slices with an image) and
``uns["spagraph_embed"]`` (see docs/conventions.md). Heavy libraries (torch, timm,
sentence-transformers) are imported only when an encoder needs them.

Public API
----------
``embed_slices(adatas, fit_on, image_encoder, gene_encoder, settings, cache_dir, progress) -> report``
``spagraph.embed.gene.fit_gene_encoder(name, train_adatas, settings) -> encoder``
``spagraph.embed.image.get_image_encoder(name, settings) -> encoder``
``spagraph.embed.patches.extract_patches(adata, patch_scale, out_size)``
"""
from __future__ import annotations

import time
from pathlib import Path


def _uns_safe(v):
    """A settings value h5ad can store (no None, no objects)."""
    if v is None:
        return "none"
    if isinstance(v, dict):
        return {str(k): _uns_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_uns_safe(x) for x in v]
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def check_settings(settings: dict) -> None:
    """Raise ValueError naming unknown keys of an embed ``settings`` block (typo guard)."""
    from spagraph.embed.gene import GENE_SETTINGS
    from spagraph.embed.image import IMAGE_SETTINGS
    known = GENE_SETTINGS | IMAGE_SETTINGS
    bad = sorted(k for k in settings if k not in known)
    if bad:
        raise ValueError(f"unknown embed setting(s) {bad}; known: {', '.join(sorted(known))}")


def embed_slices(adatas: dict, fit_on: list[str], image_encoder: str | None = "handcrafted",
                 gene_encoder: str | None = "pca", settings: dict | None = None,
                 cache_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Embed every slice of ``adatas`` in place; fit gene statistics on ``fit_on`` slices only.

    Parameters
    ----------
    adatas : slice name -> AnnData (raw counts in X, ``obsm["spatial"]`` in full-res px); modified in place.
    fit_on : names of the training slices: HVG choice, scaling and PCA are fitted on them only;
        every other slice is transformed with the fitted statistics, never fitted on.
    image_encoder : "handcrafted" | "uni2h" | "timm:<name>" | None (no image modality).
    gene_encoder : "hvg" | "pca" | "sentence" | "omiclip" | None (no gene modality).
    settings : one block for both encoders, e.g. ``{"n_hvg": 2000, "n_pcs": 50, "patch_scale": 2.8,
        "batch_size": 32, "weights": path}`` (see spagraph.embed.gene / spagraph.embed.image).
    cache_dir : folder caching image embeddings (keyed by slice content + encoder + settings +
        version); None: no cache.
    progress : show a progress bar while encoding patches.

    Returns
    -------
    dict: ``genes_shared`` (kept after intersecting all slices), ``genes_union``, ``genes_used``
    (the encoder's input genes), ``has_image`` {slice: bool}, ``cache_hits``, ``cache_misses``,
    ``d_gene``, ``d_img``, ``seconds`` {"gene", "image"}, ``gene_encoder`` (the fitted encoder object).

    Writes ``obsm["gene_emb"]`` (float32, every slice), ``obsm["img_emb"]`` (float32, slices with
    an image) and ``uns["spagraph_embed"] = {"image_encoder", "gene_encoder", "has_image",
    "settings", "fit_slices", "n_genes_shared"}``.
    """
    import numpy as np
    from spagraph.embed.cache import EmbeddingCache, cache_key, slice_hash
    from spagraph.embed.gene import fit_gene_encoder, shared_genes
    from spagraph.embed.image import get_image_encoder
    from spagraph.embed.patches import has_image

    if not isinstance(adatas, dict) or not adatas:
        raise ValueError("adatas must be a non-empty dict {slice name: AnnData}")
    settings = dict(settings or {})
    check_settings(settings)
    fit_on = list(fit_on or [])
    missing = [n for n in fit_on if n not in adatas]
    if missing or not fit_on:
        raise ValueError(f"fit_on must name slices of adatas ({sorted(adatas)}); missing: {missing or 'all (empty list)'}")
    for n, a in adatas.items():
        if "spatial" not in a.obsm:
            raise ValueError(f"slice {n!r} has no obsm['spatial'] (spot centres in full-res px)")
    names = list(adatas)
    genes = shared_genes([adatas[n] for n in names])
    n_union = len(set().union(*[set(adatas[n].var_names) for n in names]))
    if gene_encoder and not genes:
        raise ValueError("the slices share no gene names: cannot build a common gene embedding")
    report: dict = {"genes_shared": len(genes), "genes_union": n_union, "has_image": {}, "cache_hits": 0,
                    "cache_misses": 0, "d_gene": 0, "d_img": 0, "seconds": {"gene": 0.0, "image": 0.0}}
    t0 = time.perf_counter()
    enc = fit_gene_encoder(gene_encoder, [adatas[n] for n in fit_on], settings, genes=genes) if gene_encoder else None
    report["genes_used"] = len(getattr(enc, "genes", []) or [])
    cache = EmbeddingCache(cache_dir) if cache_dir else None
    img_enc = None
    for n in names:
        a = adatas[n]
        t1 = time.perf_counter()
        if enc is not None:
            a.obsm["gene_emb"] = np.asarray(enc.transform(a), dtype=np.float32)
            report["d_gene"] = int(a.obsm["gene_emb"].shape[1])
        elif "gene_emb" in a.obsm:
            del a.obsm["gene_emb"]
        t2 = time.perf_counter()
        report["seconds"]["gene"] += t2 - t1
        emb = None
        if image_encoder is not None and has_image(a):
            img_enc = img_enc or get_image_encoder(image_encoder, settings | {"progress": progress})
            key = None
            if cache is not None:
                key = cache_key(slice_hash(a), image_encoder, img_enc.settings())
                emb = cache.get(key, n_rows=a.n_obs)
            if emb is None:
                emb = img_enc.encode(a)
                if cache is not None and emb is not None:
                    cache.put(key, emb, meta={"slice": n, "encoder": image_encoder, "settings": img_enc.settings()})
        if emb is not None:
            a.obsm["img_emb"] = np.asarray(emb, dtype=np.float32)
            report["d_img"] = int(emb.shape[1])
        elif "img_emb" in a.obsm:
            del a.obsm["img_emb"]
        report["seconds"]["image"] += time.perf_counter() - t2
        report["has_image"][n] = emb is not None
        a.uns["spagraph_embed"] = {"image_encoder": image_encoder or "none", "gene_encoder": gene_encoder or "none",
                                   "has_image": emb is not None, "settings": _uns_safe(settings),
                                   "fit_slices": list(fit_on), "n_genes_shared": len(genes)}
    if cache is not None:
        report["cache_hits"], report["cache_misses"] = cache.hits, cache.misses
    report["seconds"]["total"] = time.perf_counter() - t0
    report["gene_encoder"] = enc
    return report


__all__ = ["embed_slices", "check_settings"]
