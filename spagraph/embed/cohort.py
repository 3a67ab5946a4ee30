"""Embed many slides: the gene encoder fitted once on the driver, then one task per slide.

``embed_cohort(slides, out_dir, fit_on=..., executor=...)``: the driver reads the ``fit_on``
slides, fits the gene encoder on them (HVGs, scaling, PCA: :func:`spagraph.embed.gene.fit_gene_encoder`)
and ships its ``state_dict`` (plain Python) to every task; each task reads its slide, writes
``obsm["gene_emb"]`` with the shipped encoder and ``obsm["img_emb"]`` with the image encoder, and
writes ``<slide>.h5ad`` atomically. Image tasks ask Ray for one GPU when the cluster has GPUs
(``num_gpus=1``; ignored on CPU-only clusters and by the local executor). ``cache_dir`` is shared:
a slide whose image embedding is cached is not encoded again.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from spagraph.utils import atomic_path

log = logging.getLogger("spagraph")


def _name(path, sl) -> str:
    return str(sl or Path(path).stem)


def embed_one(job: dict) -> dict:
    """One slide (an executor task): read, gene + image embedding, write ``out`` (.h5ad)."""
    from spagraph.embed import _uns_safe
    from spagraph.embed.cache import EmbeddingCache, cache_key, slice_hash
    from spagraph.embed.gene import from_state_dict
    from spagraph.embed.image import get_image_encoder
    from spagraph.embed.patches import has_image
    from spagraph.io import read_slice
    t0 = time.perf_counter()
    a = read_slice(job["path"], slice_name=job["slice"])
    enc = from_state_dict(job["gene_state"]) if job["gene_state"] is not None else None
    if enc is not None:
        a.obsm["gene_emb"] = np.asarray(enc.transform(a), dtype=np.float32)
    emb = None
    if job["image_encoder"] and has_image(a):
        img = get_image_encoder(job["image_encoder"], job["settings"] | {"progress": False})
        cache = EmbeddingCache(job["cache_dir"]) if job["cache_dir"] else None
        key = cache_key(slice_hash(a), job["image_encoder"], img.settings()) if cache else None
        emb = cache.get(key, n_rows=a.n_obs) if cache else None
        if emb is None:
            emb = img.encode(a)
            if cache is not None and emb is not None:
                cache.put(key, emb, meta={"slice": job["name"], "encoder": job["image_encoder"], "settings": img.settings()})
    if emb is not None:
        a.obsm["img_emb"] = np.asarray(emb, dtype=np.float32)
    a.uns["spagraph_embed"] = {"image_encoder": job["image_encoder"] or "none",
                               "gene_encoder": job["gene_encoder"] or "none", "has_image": emb is not None,
                               "settings": _uns_safe(job["settings"]), "fit_slices": list(job["fit_on"])}
    with atomic_path(job["out"]) as tmp:
        a.write_h5ad(tmp)
    return {"slice": job["name"], "spots": int(a.n_obs), "d_gene": int(a.obsm["gene_emb"].shape[1]) if enc else 0,
            "d_img": int(emb.shape[1]) if emb is not None else 0, "seconds": round(time.perf_counter() - t0, 3)}


def embed_cohort(slides: list[tuple[str | Path, str | None]], out_dir: str | Path, fit_on: list[str],
                 image_encoder: str | None = "handcrafted", gene_encoder: str | None = "pca",
                 settings: dict | None = None, cache_dir: str | Path | None = None, executor=None) -> list[dict]:
    """Embed every ``(path, slice_name)`` into ``out_dir/<slice>.h5ad``; gene encoder fitted on the
    slides named in ``fit_on`` only (once, on the driver). Returns one summary row per slide, in order."""
    from spagraph.embed import check_settings
    from spagraph.embed.gene import fit_gene_encoder, shared_genes
    from spagraph.experiment.executor import map_tasks
    from spagraph.io import read_slice
    settings = dict(settings or {})
    check_settings(settings)
    names = [_name(p, s) for p, s in slides]
    if len(set(names)) != len(names):
        raise ValueError(f"two slides share a name: {sorted(n for n in names if names.count(n) > 1)}")
    missing = [n for n in fit_on if n not in names]
    if missing or not fit_on:
        raise ValueError(f"fit_on must name slides of the cohort ({names}); missing: {missing or 'all (empty list)'}")
    state = None
    if gene_encoder:
        train = [read_slice(p, slice_name=s) for (p, s), n in zip(slides, names) if n in fit_on]
        enc = fit_gene_encoder(gene_encoder, train, settings, genes=shared_genes(train))
        state = enc.state_dict()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [{"path": str(p), "slice": s, "name": n, "out": str(out / f"{n}.h5ad"), "gene_state": state,
             "gene_encoder": gene_encoder, "image_encoder": image_encoder, "settings": settings,
             "cache_dir": str(cache_dir) if cache_dir else None, "fit_on": list(fit_on)}
            for (p, s), n in zip(slides, names)]
    gpu = 1 if image_encoder not in (None, "handcrafted") else 0
    return map_tasks(embed_one, jobs, names=[f"embed {n}" for n in names], executor=executor, num_gpus=gpu)
