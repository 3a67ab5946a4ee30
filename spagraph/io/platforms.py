"""One entry point for the platform readers, used by experiments (``reader: xenium`` ...) and
dataset cards: ``read_platform("xenium", path, bin_um=50)``."""
from __future__ import annotations

from pathlib import Path

import anndata as ad

#: reader name -> (module, function); the modules import lazily (spatialdata is an optional extra)
PLATFORM_READERS = {
    "xenium": ("spagraph.io.xenium", "read_xenium"),
    "visium_hd": ("spagraph.io.visium_hd", "read_visium_hd"),
    "spatialdata": ("spagraph.io.spatialdata", "read_spatialdata"),
}


def read_platform(reader: str, path: str | Path, **options) -> ad.AnnData:
    """Read one slice with the named platform reader; ``None`` options are left to the reader's default."""
    import importlib
    if reader not in PLATFORM_READERS:
        raise ValueError(f"unknown platform reader {reader!r}; one of {sorted(PLATFORM_READERS)}")
    mod, fn = PLATFORM_READERS[reader]
    return getattr(importlib.import_module(mod), fn)(Path(path), **{k: v for k, v in options.items() if v is not None})
