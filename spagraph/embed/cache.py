"""On-disk embedding cache keyed by slice content + encoder + settings + package version."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from spagraph.utils import atomic_path


def slice_hash(adata) -> str:
    """Cheap content hash: counts, coordinates and image bytes."""
    h = hashlib.sha256()
    X = adata.X
    if sp.issparse(X):
        X = X.tocsr()
        for arr in (X.data, X.indices, X.indptr):
            h.update(np.ascontiguousarray(arr).tobytes())
    else:
        h.update(np.ascontiguousarray(X).tobytes())
    h.update(np.ascontiguousarray(np.asarray(adata.obsm["spatial"], np.float64)).tobytes())
    h.update("\n".join(map(str, adata.obs_names)).encode())
    for lib in adata.uns.get("spatial", {}).values():
        for k, img in sorted(lib.get("images", {}).items()):
            h.update(k.encode()); h.update(np.ascontiguousarray(img).tobytes())
        h.update(json.dumps(lib.get("scalefactors", {}), sort_keys=True, default=str).encode())
    p = adata.uns.get("spagraph_slice", {}).get("image_path")
    if p:
        h.update(str(p).encode()); h.update(str(Path(p).stat().st_size if Path(p).exists() else 0).encode())
    return h.hexdigest()[:20]


def cache_key(slice_digest: str, encoder: str, settings: dict) -> str:
    from spagraph import __version__
    blob = json.dumps({"slice": slice_digest, "encoder": encoder, "settings": settings, "version": __version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class EmbeddingCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            return np.load(p)
        except (ValueError, OSError):   # unreadable leftovers are recomputed
            return None

    def put(self, key: str, value: np.ndarray) -> None:
        with atomic_path(self.path(key)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, value)
