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


def check_counts(X: np.ndarray, path: Path, spots) -> sp.csr_matrix:
    """Counts must be finite, non-negative integers; returns CSR float32."""
    X = np.asarray(X)
    if X.size == 0 or X.shape[0] == 0:
        raise ValueError(f"{path}: no spots in the count matrix (empty slice)")
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{path}: count matrix holds non-numeric values")
    bad = ~np.isfinite(X)
    if bad.any():
        r = int(np.argwhere(bad)[0, 0])
        raise ValueError(f"{path}: NaN/Inf counts ({int(bad.sum())} values), first at spot {spots[r]!r}")
    if (X < 0).any():
        r = int(np.argwhere(X < 0)[0, 0])
        raise ValueError(f"{path}: negative counts ({int((X < 0).sum())} values), first at spot {spots[r]!r}")
    frac = X != np.round(X)
    if frac.any():
        r = int(np.argwhere(frac)[0, 0])
        raise ValueError(f"{path}: non-integer counts ({int(frac.sum())} values), first at spot {spots[r]!r}; "
                         "spagraph expects raw UMI counts")
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
