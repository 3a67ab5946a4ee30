"""Validation helpers shared by the readers: every failure names the file and what is wrong."""
from __future__ import annotations

import gzip
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp


def read_table(path: Path, required: list[str] | None = None, what: str = "table", **kw) -> pd.DataFrame:
    """Read a delimited text file (gz or plain) with errors that name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        df = pd.read_csv(path, **kw)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise ValueError(f"{path}: cannot read {what} (corrupt or truncated file?): {e}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot parse {what}: {e}") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: {what} is empty") from None
    if required:
        missing = [c for c in required if c not in df.columns]
        if missing:
            sep = kw.get("sep", ",")
            hint = (f" (the file has a single column {df.columns[0]!r}: is it {'tab' if sep == chr(9) else repr(sep)}-separated?)"
                    if df.shape[1] == 1 else "")
            raise ValueError(f"{path}: {what} lacks column(s) {missing}; found {list(df.columns)[:10]}{hint}")
    return df


def check_counts(X: np.ndarray, path: Path, spots, values: bool = True, genes=None) -> sp.csr_matrix:
    """A numeric, non-empty count matrix as CSR float32. With ``values`` also finite, non-negative
    integers (:func:`spagraph.io.validate.check_counts_matrix`; readers leave that to ``check_slice``)."""
    X = np.asarray(X)
    if X.size == 0 or X.shape[0] == 0:
        raise ValueError(f"{path}: no spots in the count matrix (empty slice)")
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{path}: count matrix holds non-numeric values")
    if values:
        from spagraph.io.validate import check_counts_matrix
        check_counts_matrix(X, str(path), spots, genes)
    return sp.csr_matrix(X.astype(np.float32))


def unique_spots(ids: pd.Index, path: Path) -> None:
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ValueError(f"{path}: duplicate spot ids {list(dup[:5])} ({len(dup)} duplicates)")


def sum_duplicate_genes(X: sp.csr_matrix, genes: pd.Index, path: Path) -> tuple[sp.csr_matrix, pd.Index]:
    """Sum columns of duplicated gene names (logged)."""
    genes = pd.Index(genes.astype(str))
    if not genes.duplicated().any():
        return X, genes
    dups = sorted(set(genes[genes.duplicated()]))
    warnings.warn(f"{path}: {len(dups)} duplicated gene name(s) summed, e.g. {dups[:5]}")
    codes, uniq = pd.factorize(genes)
    M = sp.csr_matrix((np.ones(len(codes), np.float32), (np.arange(len(codes)), codes)), shape=(len(codes), len(uniq)))
    return (X @ M).tocsr(), pd.Index(uniq)


def check_positions(xy: np.ndarray, path: Path, spots) -> float:
    """Spot centres must be finite and spread out; returns the spot pitch (median nearest-neighbour
    distance between distinct centres)."""
    from scipy.spatial import cKDTree
    xy = np.asarray(xy, dtype=np.float64)
    bad = ~np.isfinite(xy).all(1)
    if bad.any():
        raise ValueError(f"{path}: spot(s) {[spots[i] for i in np.flatnonzero(bad)[:5]]} have NaN/Inf "
                         "pixel coordinates")
    if len(xy) < 2:
        raise ValueError(f"{path}: the slice has only {len(xy)} spot ({list(spots)}); spagraph needs at least 2 "
                         "spots (spot pitch, spatial graph)")
    distinct = np.unique(xy, axis=0)
    if len(distinct) < 2:
        raise ValueError(f"{path}: all {len(xy)} spots share the same pixel coordinates {tuple(xy[0])}: "
                         "positions are missing or zeroed (cannot define a spot pitch)")
    if len(distinct) < 0.5 * len(xy):
        raise ValueError(f"{path}: only {len(distinct)} distinct pixel positions for {len(xy)} spots: "
                         "positions look broken (many spots stacked on one point)")
    d, _ = cKDTree(distinct).query(distinct, k=2)
    return float(np.median(d[:, 1]))


_SPOT_RE = re.compile(r"^(\d+)x(\d+)$")


def parse_array_ids(ids, path: Path) -> np.ndarray:
    """Parse legacy-ST spot ids ``<x>x<y>`` into (n, 2) ints."""
    out = np.zeros((len(ids), 2), dtype=np.int64)
    for i, s in enumerate(ids):
        m = _SPOT_RE.match(str(s))
        if not m:
            raise ValueError(f"{path}: spot id {s!r} (row {i + 2}) does not parse as <x>x<y> array coordinates")
        out[i] = int(m.group(1)), int(m.group(2))
    return out
