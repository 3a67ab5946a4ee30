"""One validation layer for every slice reader: :func:`check_slice`.

Every reader (her2st, Space Ranger, ``.h5ad``, and any new platform reader) builds an AnnData in
spagraph's convention (docs/conventions.md) and passes it through ``check_slice(adata, source=path)``
before returning it. It checks what the rest of spagraph silently relies on, and either raises a
``ValueError`` that names the file, the spot (or row) and what was expected, or applies a small,
documented repair that it logs:

counts
    ``layers['counts']`` is used as the raw counts when present (copied into ``X``, logged).
    Counts must be finite, non-negative integers. A non-integer or negative ``X`` is refused with
    "X looks log-normalised / scaled: spagraph needs raw counts in X or layers['counts']".
    Spots with zero counts in every gene are kept and reported (a warning).
spot ids
    unique.
labels
    ``obs['cancer']`` (and ``obs[label_key]``) may hold only 1 (cancer), 0 (non-cancer) or NA; it is
    stored as ``Int8`` with NA. Anything else (2, -1, 0.5, "yes") is an error naming the spot.
positions
    ``obsm['spatial']``: a numeric (n, 2) array of finite full-resolution pixel positions, spread out
    (a spot pitch exists).
scale factors
    every ``tissue_hires_scalef`` / ``tissue_lowres_scalef`` / ``spot_diameter_fullres`` present in
    ``uns['spatial'][library]['scalefactors']`` is a finite number > 0.
images
    (H, W) grey or (H, W, 3|4) colour. Bit depth: uint8 is kept; 16-bit (uint16, or integers up to
    65535) is rescaled to 8 bits by /257 (logged); float in [0, 1] (scanpy's convention) is scaled
    by 255; anything else is refused (never clipped: a 16-bit tissue clipped to 255 is all white).
    Every spot centre (x scale factor) lies inside the image, and a spot diameter covers at least
    ``MIN_SPOT_PX`` image pixels (a 1 x 1 px image, or a scale factor off by 1000, is refused).

Readers call it once at the end (``files=`` maps an aspect to the file it came from, so a count
problem names the count file and a position problem the positions file).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger("spagraph")

MIN_SPOT_PX = 2.0          # a spot diameter must cover at least this many image pixels
SCALE_KEYS = ("tissue_hires_scalef", "tissue_lowres_scalef", "spot_diameter_fullres")
IMAGE_SCALE = {"hires": "tissue_hires_scalef", "lowres": "tissue_lowres_scalef"}
RAW_HINT = "spagraph needs raw counts in X or layers['counts']"


def check_slice(adata, source: str | Path, *, label_key: str = "cancer", files: dict | None = None,
                outside_image: str = "error"):
    """Validate (and minimally repair, logged) one slice in spagraph's AnnData convention.

    Parameters
    ----------
    adata : AnnData with raw counts in ``X`` (or ``layers['counts']``), ``obsm['spatial']``,
        optional ``obs['cancer']`` and ``uns['spatial'][library]`` images / scale factors.
    source : the file or folder the slice was read from (named in every error).
    label_key : the binary label column checked besides ``cancer``.
    files : optional ``{"counts"|"positions"|"labels"|"image"|"scalefactors": path}``: the file each
        aspect came from, when a reader reads several files (default: ``source`` for all).
    outside_image : ``"error"`` (default) when a spot centre falls outside its image; ``"allow"``
        where an image may legitimately cover only part of the slice (an aligned H&E next to a
        Xenium panel; that reader warns itself).

    Returns the same AnnData (modified in place by the repairs listed in the module docstring).
    Raises ``ValueError`` naming the file, the spot and what was expected.
    """
    files = {k: str(v) for k, v in (files or {}).items() if v is not None}
    where = lambda aspect: files.get(aspect, str(source))  # noqa: E731
    if adata.n_obs == 0:
        raise ValueError(f"{where('counts')}: the slice has no spots")
    names = pd.Index(adata.obs_names.astype(str))
    dup = names[names.duplicated()]
    if len(dup):
        raise ValueError(f"{where('counts')}: duplicate spot ids {list(dup[:5])} ({len(dup)} duplicates); "
                         "each spot must appear once")
    _use_counts_layer(adata, where("counts"))
    check_counts_matrix(adata.X, where("counts"), names, adata.var_names)
    for key in dict.fromkeys(["cancer", label_key]):
        if key in adata.obs:
            adata.obs[key] = check_binary_labels(adata.obs[key], where("labels"), key)
    if outside_image not in ("error", "allow"):
        raise ValueError(f"outside_image must be 'error' or 'allow', got {outside_image!r}")
    xy = _check_spatial(adata, where("positions"))
    _check_images(adata, xy, where, outside_image == "allow")
    return adata


# ------------------------------------------------------------------ counts


def _use_counts_layer(adata, src: str) -> None:
    layer = adata.layers.get("counts") if hasattr(adata, "layers") else None
    if layer is None:
        return
    if layer.shape != adata.shape:
        raise ValueError(f"{src}: layers['counts'] has shape {layer.shape}, X has {adata.shape}")
    check_counts_matrix(layer, src, adata.obs_names, adata.var_names, what="layers['counts']")
    same = _matrices_equal(adata.X, layer)
    adata.X = sp.csr_matrix(layer, dtype=np.float32) if sp.issparse(layer) else sp.csr_matrix(np.asarray(layer, np.float32))
    if not same:
        log.info("%s: using layers['counts'] as the raw counts (X holds other values)", src)


def _matrices_equal(a, b) -> bool:
    try:
        if sp.issparse(a) or sp.issparse(b):
            d = sp.csr_matrix(a, dtype=np.float64) - sp.csr_matrix(b, dtype=np.float64)
            return d.nnz == 0 or not np.any(d.data)
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (ValueError, TypeError):
        return False


def check_counts_matrix(X, src: str, spots, genes=None, what: str = "X") -> None:
    """Raw counts: numeric, finite, >= 0 and integer. Errors name the first bad spot and gene.

    Works on dense and sparse matrices without densifying a sparse one. Spots with zero counts in
    every gene are kept and reported in a warning.
    """
    if X is None:
        raise ValueError(f"{src}: {what} is missing (no count matrix)")
    if sp.issparse(X):
        coo = X.tocoo()
        vals, rows, cols = np.asarray(coo.data), coo.row, coo.col
        shape = X.shape
    else:
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise ValueError(f"{src}: {what} must be a 2-d spots x genes matrix, got shape {arr.shape}")
        shape = arr.shape
        vals, rows, cols = arr.ravel(), None, None
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{src}: no spots or no genes in the count matrix {what} (shape {shape}; empty slice)")
    if not (np.issubdtype(vals.dtype, np.number) or vals.dtype == bool):
        raise ValueError(f"{src}: {what} holds non-numeric values (dtype {vals.dtype}); {RAW_HINT}")

    def at(mask) -> str:
        i = int(np.flatnonzero(mask)[0])
        r, c = (divmod(i, shape[1]) if rows is None else (int(rows[i]), int(cols[i])))
        gene = f", gene {str(genes[c])!r}" if genes is not None else ""
        return f"first at spot {str(spots[r])!r}{gene} (= {vals[i]!r})"

    bad = ~np.isfinite(vals.astype(np.float64, copy=False))
    if bad.any():
        raise ValueError(f"{src}: NaN/Inf counts in {what} ({int(bad.sum())} values), {at(bad)}; {RAW_HINT}")
    neg = vals < 0
    frac = vals != np.round(vals)
    if neg.any():
        kind = "looks scaled/centred (negative values)" if frac.any() else "holds negative counts"
        raise ValueError(f"{src}: {what} {kind}: negative counts ({int(neg.sum())} values), {at(neg)}; {RAW_HINT}")
    if frac.any():
        top = float(np.max(vals))
        looks = "looks log-normalised" if top < 50 else "holds non-integer values"
        raise ValueError(f"{src}: {what} {looks}: non-integer counts ({int(frac.sum())} values, max {top:.3g}), "
                         f"{at(frac)}; {RAW_HINT}")
    lib = np.asarray(X.sum(1)).ravel() if sp.issparse(X) else np.asarray(X).sum(1)
    zero = lib == 0
    if zero.any():
        # policy: zero-count spots are kept (real spots under tissue; the gene encoders normalise by
        # max(library size, 1)) and reported so the user can filter them.
        ids = [str(spots[i]) for i in np.flatnonzero(zero)[:5]]
        warnings.warn(f"{src}: {int(zero.sum())} spot(s) have zero counts in every gene, kept, e.g. {ids}")


# ------------------------------------------------------------------ labels


def check_binary_labels(col: pd.Series, src: str, key: str = "cancer") -> pd.arrays.IntegerArray:
    """``obs[key]`` as Int8 holding only 1 / 0 / NA; anything else is an error naming the spot."""
    s = pd.Series(col)
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(object)
    if s.dtype == bool:
        return pd.array(s.astype(int), dtype="Int8")
    num = pd.to_numeric(s.where(s.notna(), np.nan).astype(object).map(_as_number), errors="coerce")
    present = s.notna().to_numpy() & ~s.astype(object).map(lambda v: isinstance(v, str) and v.strip().lower() in ("", "na", "nan")).to_numpy()
    v = num.to_numpy(dtype=float, na_value=np.nan)
    bad = present & ~np.isin(v, (0.0, 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{src}: obs[{key!r}] must hold 1 (cancer), 0 (non-cancer) or NA (undetermined); "
                         f"spot {str(s.index[i])!r} has {s.iloc[i]!r} ({int(bad.sum())} spot(s) outside that range)")
    return pd.array(np.where(present, v, np.nan), dtype="Float64").astype("Int8")


def _as_number(v):
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    return np.nan if v is None else v


# ------------------------------------------------------------------ positions


def _check_spatial(adata, src: str) -> np.ndarray:
    from spagraph.io._checks import check_positions
    if "spatial" not in adata.obsm:
        raise ValueError(f"{src}: obsm['spatial'] (spot centres in full-res pixels) is missing")
    xy = np.asarray(adata.obsm["spatial"])
    if xy.ndim != 2 or xy.shape[1] < 2 or not np.issubdtype(xy.dtype, np.number):
        raise ValueError(f"{src}: obsm['spatial'] must be a numeric (n, 2) array of spot centres, "
                         f"got shape {xy.shape} dtype {xy.dtype}")
    xy = xy[:, :2].astype(np.float64)
    check_positions(xy, src, adata.obs_names)
    return xy


# ------------------------------------------------------------------ images and scale factors


def _check_images(adata, xy: np.ndarray, where, allow_outside: bool = False) -> None:
    spatial = adata.uns.get("spatial", {}) or {}
    if not isinstance(spatial, dict):
        raise ValueError(f"{where('scalefactors')}: uns['spatial'] must be a mapping library -> images/scalefactors")
    for lib, entry in spatial.items():
        if not isinstance(entry, dict):
            continue
        sf = entry.get("scalefactors", {}) or {}
        for k in SCALE_KEYS:
            if k in sf:
                sf[k] = _positive(sf[k], f"{where('scalefactors')}: uns['spatial'][{lib!r}]['scalefactors'][{k!r}]")
        images = entry.get("images", {}) or {}
        for key in list(images):
            img = images[key]
            if img is None or np.size(img) == 0:
                continue
            what = f"{where('image')}: {key} image"
            img = to_rgb8(np.asarray(img), what)
            images[key] = img
            skey = IMAGE_SCALE.get(key)
            if skey is None:
                continue
            if skey not in sf:
                raise ValueError(f"{what} has no scale factor {skey!r} to place spots on it "
                                 f"(uns['spatial'][{lib!r}]['scalefactors'])")
            check_image_fits(img, xy, float(sf[skey]), sf.get("spot_diameter_fullres"), what, adata.obs_names,
                             allow_outside)


def _positive(v, what: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} = {v!r}: expected a number > 0") from None
    if not np.isfinite(f) or f <= 0:
        raise ValueError(f"{what} = {v!r}: expected a finite number > 0 (0 would put every spot at pixel (0, 0))")
    return f


def to_rgb8(img: np.ndarray, what: str) -> np.ndarray:
    """(H, W, 3) uint8 from a grey / RGB / RGBA image of 8 or 16 bits or float in [0, 1] (rescaled,
    never clipped: a 16-bit image clipped to 255 would be all white)."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ValueError(f"{what}: expected (H, W) grey or (H, W, 3|4) colour pixels, got shape {img.shape}")
    if img.dtype == np.uint8:
        out = img
    elif img.dtype == bool:
        raise ValueError(f"{what}: a 1-bit (boolean) image is not an H&E image")
    elif np.issubdtype(img.dtype, np.floating):
        finite = np.isfinite(img)
        if not finite.all():
            raise ValueError(f"{what}: {int((~finite).sum())} NaN/Inf pixel values")
        lo, hi = float(img.min()), float(img.max())
        if lo < 0 or hi > 1.0:
            raise ValueError(f"{what}: float pixels must lie in [0, 1] (got {lo:.3g}..{hi:.3g}); "
                             "save the image as 8-bit")
        out = np.rint(img * 255).astype(np.uint8)
    elif np.issubdtype(img.dtype, np.integer):
        lo, hi = int(img.min()), int(img.max())
        if lo < 0:
            raise ValueError(f"{what}: negative pixel values ({lo})")
        if img.dtype.itemsize == 1 or hi <= 255 and img.dtype != np.uint16:
            out = img.astype(np.uint8)
        elif hi <= 65535:
            log.info("%s: 16-bit image rescaled to 8 bits (value / 257)", what)
            out = np.rint(img.astype(np.float64) / 257.0).astype(np.uint8)
        else:
            raise ValueError(f"{what}: pixel values up to {hi} (more than 16 bits); save the image as 8-bit")
    else:
        raise ValueError(f"{what}: unsupported pixel type {img.dtype}")
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return np.ascontiguousarray(out[..., :3])


def check_image_fits(img: np.ndarray, xy: np.ndarray, scale: float, spot_diameter, what: str, spots,
                     allow_outside: bool = False) -> None:
    """Every spot centre (x ``scale``) inside the image (unless ``allow_outside``); a spot diameter
    covers >= MIN_SPOT_PX image px."""
    h, w = img.shape[:2]
    p = np.asarray(xy, np.float64) * scale
    outside = (p[:, 0] < 0) | (p[:, 1] < 0) | (p[:, 0] >= w) | (p[:, 1] >= h)
    if outside.all() and len(p) > 1:
        raise ValueError(f"{what} is {w}x{h} px but every spot centre x scale factor {scale:g} falls outside it; "
                         "expected the spots on the image (wrong image, or wrong scale factor?)")
    if outside.any() and not allow_outside:
        ids = [str(s) for s in np.asarray(spots)[outside][:3]]
        raise ValueError(f"{what} is {w}x{h} px but {int(outside.sum())} spot centre(s) x scale factor {scale:g} "
                         f"fall outside it, e.g. {ids}; expected every spot inside the image "
                         "(wrong image, or wrong scale factor?)")
    if spot_diameter is None:
        from scipy.spatial import cKDTree
        d, _ = cKDTree(np.unique(p, axis=0)).query(np.unique(p, axis=0), k=2)
        diam_px = 0.5 * float(np.median(d[:, 1])) if len(p) > 1 else float(min(h, w))
    else:
        diam_px = float(spot_diameter) * scale
    if diam_px < MIN_SPOT_PX:
        raise ValueError(f"{what} is {w}x{h} px: a spot diameter covers only {diam_px:.3g} px of it (scale factor "
                         f"{scale:g}); expected >= {MIN_SPOT_PX:g} px per spot, or there is nothing to see "
                         "(a thumbnail or placeholder image, or a wrong scale factor?)")


def read_image_rgb8(path: str | Path, draft_size: tuple[int, int] | None = None):
    """Open an image file as a PIL RGB image, rescaling 16-bit / 32-bit grey modes to 8 bits
    (PIL's own ``convert('RGB')`` clips them: a 16-bit tissue becomes white). ``draft_size`` lets
    a JPEG decode at a reduced scale. Errors name the file."""
    from PIL import Image, UnidentifiedImageError
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            if draft_size is not None:
                im.draft("RGB", draft_size)
            if im.mode in ("RGB",):
                return im.convert("RGB")
            if im.mode.startswith("I") or im.mode == "F":
                arr = np.asarray(im)
                if im.mode.startswith("I;16") or arr.dtype == np.uint16:
                    arr = arr.astype(np.uint16)
                return Image.fromarray(to_rgb8(arr, f"{path}"))
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: not a readable image: {e}") from None
