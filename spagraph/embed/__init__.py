"""Embedding stage: frozen image encoders and fitted-on-training-only gene encoders, cached.

Writes ``obsm["gene_emb"]``, ``obsm["img_emb"]`` (slices with an image) and
``uns["spagraph_embed"]`` (see docs/conventions.md).
"""
from __future__ import annotations

from pathlib import Path


def embed_slices(adatas: dict, fit_on: list[str], image_encoder: str | None = "handcrafted",
                 gene_encoder: str | None = "pca", settings: dict | None = None,
                 cache_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Embed every slice of ``adatas`` in place; fit gene statistics on ``fit_on`` slices only.

    Returns a report: genes kept after intersecting all slices, per-slice has_image, cache hits/misses.
    """
    from spagraph.embed.cache import EmbeddingCache, cache_key, slice_hash
    from spagraph.embed.gene import fit_gene_encoder, shared_genes
    from spagraph.embed.image import get_image_encoder
    settings = dict(settings or {})
    missing = [n for n in fit_on if n not in adatas]
    if missing or not fit_on:
        raise ValueError(f"fit_on must name slices of adatas; missing {missing or 'all (empty list)'}")
    names = list(adatas)
    genes = shared_genes([adatas[n] for n in names])
    n_union = len(set().union(*[set(adatas[n].var_names) for n in names]))
    if not genes:
        raise ValueError("the slices share no gene names: cannot build a common gene embedding")
    report = {"genes_shared": len(genes), "genes_union": n_union, "has_image": {}, "cache_hits": 0, "cache_misses": 0}
    enc = fit_gene_encoder(gene_encoder, [adatas[n] for n in fit_on], settings, genes=genes) if gene_encoder else None
    cache = EmbeddingCache(cache_dir) if cache_dir else None
    img_enc = None
    for n in names:
        a = adatas[n]
        if enc is not None:
            a.obsm["gene_emb"] = enc.transform(a)
        elif "gene_emb" in a.obsm:
            del a.obsm["gene_emb"]
        emb = None
        if image_encoder is not None:
            from spagraph.embed.patches import best_image
            if best_image(a)[0] is not None:
                key = None
                if cache is not None:
                    key = cache_key(slice_hash(a), image_encoder, {k: v for k, v in sorted(settings.items())})
                    emb = cache.get(key)
                    report["cache_hits" if emb is not None else "cache_misses"] += 1
                if emb is None:
                    img_enc = img_enc or get_image_encoder(image_encoder, settings | {"progress": progress})
                    emb = img_enc.encode(a)
                    if cache is not None and emb is not None:
                        cache.put(key, emb)
        if emb is not None:
            a.obsm["img_emb"] = emb.astype("float32")
        elif "img_emb" in a.obsm:
            del a.obsm["img_emb"]
        report["has_image"][n] = emb is not None
        a.uns["spagraph_embed"] = {"image_encoder": image_encoder or "none", "gene_encoder": gene_encoder or "none",
                                   "has_image": emb is not None, "fit_slices": list(fit_on),
                                   "n_genes_shared": len(genes)}
    report["gene_encoder_state"] = enc
    return report
