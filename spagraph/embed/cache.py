"""On-disk cache of image embeddings (the expensive part).

Key = sha256 of {slice content hash, encoder name, encoder settings, ``spagraph.__version__``}:
a changed count matrix, coordinate, image byte, setting or package version gives a new key,
so stale entries are never read (they are left on disk; delete the folder to reclaim space).
Values are ``<key>.npy`` float32 matrices written atomically (temporary name in the same
folder, then ``os.replace``); an unreadable or wrongly shaped entry counts as a miss.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from spagraph.utils import atomic_path

_CHUNK = 1 << 22


def _file_digest(path: Path, h) -> None:
    with open(path, "rb") as fh:
        while True:
            b = fh.read(_CHUNK)
            if not b:
                break
            h.update(b)


def slice_hash(adata) -> str:
    """Content hash of a slice: counts, spot ids, coordinates, in-memory images, scale factors and
    the bytes of a full-resolution image file named in ``uns["spagraph_slice"]["image_path"]``.

    About 0.1 s per 100 MB hashed (sha256); no decoding of images.
    """
    h = hashlib.sha256()
    X = adata.X
    if sp.issparse(X):
        X = X.tocsr()
        h.update(f"csr{X.shape}{X.dtype}".encode())
        for arr in (X.data, X.indices, X.indptr):
            h.update(np.ascontiguousarray(arr).tobytes())
    else:
        X = np.ascontiguousarray(X)
        h.update(f"dense{X.shape}{X.dtype}".encode())
        h.update(X.tobytes())
    h.update("\n".join(map(str, adata.var_names)).encode())
    h.update("\n".join(map(str, adata.obs_names)).encode())
    h.update(np.ascontiguousarray(np.asarray(adata.obsm["spatial"], np.float64)).tobytes())
    for lib_id, lib in sorted((adata.uns.get("spatial", {}) or {}).items()):
        h.update(str(lib_id).encode())
        for k, img in sorted((lib.get("images", {}) or {}).items()):
            img = np.ascontiguousarray(img)
            h.update(f"{k}{img.shape}{img.dtype}".encode())
            h.update(img.tobytes())
        h.update(json.dumps(lib.get("scalefactors", {}), sort_keys=True, default=str).encode())
    p = (adata.uns.get("spagraph_slice", {}) or {}).get("image_path")
    if p:
        h.update(b"image_path")
        if Path(p).is_file():
            _file_digest(Path(p), h)
        else:
            h.update(str(p).encode())
    return h.hexdigest()[:24]


def cache_key(slice_digest: str, encoder: str, settings: dict) -> str:
    """Key of one (slice, encoder, settings) embedding under the installed spagraph version."""
    from spagraph import __version__
    blob = json.dumps({"slice": slice_digest, "encoder": encoder, "settings": settings, "version": __version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class EmbeddingCache:
    """A folder of ``<key>.npy`` embeddings; ``hits`` / ``misses`` count lookups."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get(self, key: str, n_rows: int | None = None) -> np.ndarray | None:
        """The cached matrix, or None (absent, unreadable, or not ``n_rows`` rows)."""
        p = self.path(key)
        val = None
        if p.exists():
            try:
                val = np.load(p, allow_pickle=False)
            except (ValueError, OSError, EOFError):   # truncated / foreign file: recompute
                val = None
            if val is not None and (val.ndim != 2 or (n_rows is not None and val.shape[0] != n_rows)):
                val = None
        if val is None:
            self.misses += 1
        else:
            self.hits += 1
        return val

    def put(self, key: str, value: np.ndarray, meta: dict | None = None) -> Path:
        """Store ``value`` atomically (and a small ``<key>.json`` describing it, when ``meta``)."""
        p = self.path(key)
        with atomic_path(p) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(value, dtype=np.float32))
        if meta is not None:
            with atomic_path(p.with_suffix(".json")) as tmp:
                Path(tmp).write_text(json.dumps(meta, sort_keys=True, default=str, indent=1))
        return p
