"""Pieces shared by the 10x platform readers (Xenium, Visium HD): the feature-barcode matrix with its
feature types, count checks that never densify the matrix, JSON files, and image downscaling."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger("spagraph")

#: longest side of the ``hires`` image a reader stores in ``uns["spatial"][lib]["images"]``
HIRES_MAX_PX = 2000


def read_10x_matrix(path: Path) -> ad.AnnData:
    """A 10x feature-barcode matrix (``.h5`` or an mtx folder) as sparse AnnData with
    ``var["feature_types"]``; scanpy does the parsing (``gex_only=False`` keeps control features so
    that the caller can count what it drops)."""
    import scanpy as sc
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # "Variable names are not unique" (handled by the caller)
            if path.is_dir():
                a = sc.read_10x_mtx(path, var_names="gene_symbols", make_unique=False, gex_only=False)
            else:
                a = sc.read_10x_h5(path, gex_only=False)
    except FileNotFoundError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: cannot read the 10x feature-barcode matrix: {e}") from None
    if "feature_types" not in a.var:
        a.var["feature_types"] = "Gene Expression"
    a.obs_names = a.obs_names.astype(str)
    a.var_names = a.var_names.astype(str)
    if not sp.issparse(a.X):
        a.X = sp.csr_matrix(a.X)
    return a


def check_sparse_counts(X: sp.spmatrix, path: Path, spots, genes=None) -> sp.csr_matrix:
    """Raw counts as CSR float32, checked by the common validation layer
    (:func:`spagraph.io.validate.check_counts_matrix`, which never densifies a sparse matrix) so an
    error names this file, the spot and the gene. Used on matrices that are transformed before the
    slice exists (Xenium cells are checked before they are summed into pseudo-spots)."""
    from spagraph.io.validate import check_counts_matrix
    check_counts_matrix(X, str(path), spots, genes)
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sum_duplicates()
    return X


def find_10x_matrix(folder: Path, stem: str) -> Path:
    """``folder/<stem>.h5`` if present, else the mtx folder ``folder/<stem>/``; an error naming both
    when neither exists (Space Ranger, Visium HD and Xenium all ship one or the other)."""
    h5, mtx = folder / f"{stem}.h5", folder / stem
    if h5.exists():
        return h5
    if mtx.is_dir():
        return mtx
    raise FileNotFoundError(f"{folder}: neither {stem}.h5 nor {stem}/ found")


def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path`` (:func:`spagraph.utils.read_json`), refusing anything else."""
    from spagraph.utils import read_json as _read
    d = _read(path, what)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: {what} must be a JSON object, got {type(d).__name__}")
    return d


def read_parquet_or_csv(path: Path, required: list[str], what: str) -> pd.DataFrame:
    """A parquet file (pandas + pyarrow) or a (gzipped) CSV, with the required columns checked."""
    from spagraph.io._checks import read_table
    path = Path(path)
    if path.suffix == ".parquet":
        if not path.exists():
            raise FileNotFoundError(f"{what} not found: {path}")
        try:
            df = pd.read_parquet(path)
        except ImportError as e:
            raise ImportError(f"{path}: reading parquet needs pyarrow (pip install pyarrow): {e}") from None
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError variants on corrupt files
            raise ValueError(f"{path}: cannot read {what} (corrupt parquet?): {e}") from None
        missing = [c for c in required if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: {what} lacks column(s) {missing}; found {list(df.columns)[:12]}")
        return df
    return read_table(path, required, what=what)


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """An (H, W), (H, W, C) or (C, H, W) image of any integer/float type as (H, W, 3) uint8; grey
    images (fluorescence) are contrast-stretched between their 1st and 99.5th percentiles."""
    img = np.asarray(img)
    img = np.squeeze(img)
    if img.ndim == 3 and img.shape[0] in (1, 3, 4) and img.shape[-1] not in (3, 4):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        lo, hi = np.percentile(img, [1, 99.5]) if img.size else (0, 1)
        g = np.clip((img.astype(np.float32) - lo) / max(float(hi - lo), 1e-6), 0, 1)
        return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"image of shape {img.shape} is neither grey nor RGB(A)")
    img = img[..., :3]
    if img.dtype != np.uint8:
        top = 255.0 if img.max() <= 255 else float(np.iinfo(img.dtype).max if np.issubdtype(img.dtype, np.integer) else img.max())
        img = np.clip(img.astype(np.float32) / top * 255, 0, 255).astype(np.uint8)
    return img


def downscale(img: np.ndarray, max_px: int = HIRES_MAX_PX) -> tuple[np.ndarray, float]:
    """Resize so the longest side is at most ``max_px``; returns the image and the scale factor."""
    h, w = img.shape[:2]
    s = min(1.0, max_px / max(h, w))
    if s >= 1.0:
        return img, 1.0
    from PIL import Image
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    out = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.LANCZOS))
    return out, nw / w


def read_tiff_level(path: Path, max_px: int = HIRES_MAX_PX) -> tuple[np.ndarray, tuple[int, int], float]:
    """The smallest pyramid level of an (OME-)TIFF whose longest side is >= ``max_px`` (or the full
    image), downscaled to ``max_px``: ``(RGB uint8 image, (full width, full height), scale factor)``.
    tifffile reads OME-TIFF pyramids level by level, so a 50k-pixel morphology image is never loaded
    at full resolution when a smaller level exists."""
    import tifffile
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            levels = getattr(series, "levels", None) or [series]
            axes = series.axes

            def wh(lv):
                shp = dict(zip(axes, lv.shape))
                return int(shp.get("X", lv.shape[-1])), int(shp.get("Y", lv.shape[-2]))
            full_w, full_h = wh(levels[0])
            pick = levels[0]
            for lv in levels[1:]:
                if max(wh(lv)) >= max_px:
                    pick = lv
            arr = pick.asarray()
            lw, _ = wh(pick)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except Exception as e:  # tifffile raises TiffFileError / ValueError variants
        raise ValueError(f"{path}: not a readable TIFF image: {e}") from None
    ax = axes
    if "C" in ax and ax.index("C") not in (0, len(ax) - 1):
        arr = np.moveaxis(arr, ax.index("C"), 0)
    for extra in ("Z", "T", "Q"):
        if extra in ax and arr.ndim > 3:
            arr = arr.take(0, axis=ax.index(extra))
    if arr.ndim == 3 and "C" in ax and arr.shape[0] > 4:      # many channels: keep the first (DAPI)
        arr = arr[0]
    elif arr.ndim == 3 and arr.shape[0] not in (1, 3, 4) and arr.shape[-1] not in (3, 4):
        arr = arr[0]
    rgb = to_rgb_uint8(arr)
    small, s = downscale(rgb, max_px)
    return small, (full_w, full_h), (lw / full_w) * s
