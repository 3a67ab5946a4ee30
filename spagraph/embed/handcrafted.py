"""Hand-crafted morphology features of H&E patches (no weights needed; the offline default).

Per patch, computed on a working copy block-averaged to at most ``WORK_SIDE`` px:

* stain: hematoxylin and eosin optical density from colour deconvolution (the
  ``skimage.color.rgb2hed`` Ruifrok-Johnston matrix, evaluated through a uint8 look-up table
  so a batch costs one table lookup and a 3x3 product per pixel): mean, std, 10/50/90th
  percentiles over tissue pixels;
* tissue fraction (not white glass, not black mask / padding);
* colour: hue (8 bins) and saturation (4 bins) histograms of tissue pixels;
* nuclei: nucleus-like blobs (hematoxylin OD above ``NUCLEUS_H_THRESHOLD``, connected
  components by ``scipy.ndimage.label``): count per 1000 tissue px, mean and std of blob area,
  nuclear fraction of tissue;
* texture on a further 2x-downsampled grey patch: GLCM contrast / homogeneity / energy /
  correlation (8 grey levels, offsets right and down, symmetric; same definitions as
  ``skimage.feature.graycoprops``), a 9-bin local-binary-pattern histogram (number of the 8
  neighbours at least as bright as the centre), gradient magnitude mean / std.

Everything is vectorised over the batch (one ``ndimage.label`` call per batch with no
connectivity across patches, GLCM by ``np.bincount``), and a patch's features never depend
on the other patches of its batch.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

NUCLEUS_H_THRESHOLD = 0.05   # hematoxylin OD (rgb2hed units) above which a pixel is nucleus-like
WORK_SIDE = 112              # pixel statistics are computed at most at this side length
GLCM_LEVELS = 8

FEATURE_NAMES: tuple[str, ...] = tuple(
    [f"{s}_{q}" for s in ("h", "e") for q in ("mean", "std", "p10", "p50", "p90")]
    + ["tissue_frac"] + [f"hue{i}" for i in range(8)] + [f"sat{i}" for i in range(4)]
    + ["nuclei_density", "nuclei_area_mean", "nuclei_area_std", "nuclei_frac"]
    + ["glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation"]
    + [f"lbp{i}" for i in range(9)] + ["grad_mean", "grad_std"])


def _od_lut() -> np.ndarray:
    """(256,) float32: skimage's per-channel optical density term ``log(max(v/255, 1e-6)) / log(1e-6)``."""
    v = np.maximum(np.arange(256, dtype=np.float64) / 255.0, 1e-6)
    return (np.log(v) / np.log(1e-6)).astype(np.float32)


_LUT = _od_lut()


def stain_density(batch: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 2) float32 hematoxylin and eosin density.

    Identical (to float32 rounding) to ``skimage.color.rgb2hed(rgb)[..., :2]``.
    """
    from skimage.color import hed_from_rgb
    m = hed_from_rgb.astype(np.float32)
    od = _LUT[batch]                                    # (..., 3) float32
    out = od @ m[:, :2]
    return np.maximum(out, 0.0, out=out)


def _block_mean(x: np.ndarray, f: int) -> np.ndarray:
    """Average (n, S, S, ...) over f x f blocks (S cropped to a multiple of f); float32 out."""
    if f == 1:
        return x.astype(np.float32, copy=False)
    s = (x.shape[1] // f) * f
    acc_t = np.uint32 if x.dtype == np.uint8 and f * f > 256 else (np.uint16 if x.dtype == np.uint8 else np.float32)
    acc = np.zeros((x.shape[0], s // f, s // f) + x.shape[3:], acc_t)
    for dy in range(f):
        for dx in range(f):
            acc += x[:, dy:s:f, dx:s:f]
    return acc.astype(np.float32) * np.float32(1.0 / (f * f))


def downsample(batch: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    """(n, S, S, 3) uint8 -> (n, S/f, S/f, 3) uint8 box-filtered by the smallest integer f with S/f <= side."""
    f = max(1, int(np.ceil(batch.shape[1] / side)))
    if f == 1:
        return batch
    return np.rint(_block_mean(batch, f)).astype(np.uint8)


def _hue_sat(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 3) float in [0, 1] -> hue in [0, 1), saturation in [0, 1] (HSV definitions)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    d = mx - mn
    inv = np.float32(1.0) / np.maximum(d, np.float32(1e-12))
    h = np.where(mx == r, (g - b) * inv, np.where(mx == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    h = np.where(h < 0, h + np.float32(6.0), h)
    h = np.where(d > 0, h * np.float32(1 / 6.0), 0.0)
    s = np.where(mx > 0, d / np.maximum(mx, np.float32(1e-12)), 0.0)
    return h.astype(np.float32, copy=False), s.astype(np.float32, copy=False)


def _masked_quantiles(v: np.ndarray, w: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Per-row quantiles of ``v`` (n, m) over entries with ``w`` True; rows without any: 0."""
    n, m = v.shape
    vv = np.where(w, v, np.inf)
    vv.sort(axis=1)
    cnt = w.sum(1)
    out = np.zeros((len(qs), n), np.float32)
    rows = np.arange(n)
    for k, q in enumerate(qs):
        pos = np.clip(np.floor(q * (cnt - 1)).astype(int), 0, m - 1)
        out[k] = np.where(cnt > 0, vv[rows, pos], 0.0)
    return out


def _weighted_mean_std(v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ws = np.maximum(w.sum(1), 1.0)
    mu = (v * w).sum(1) / ws
    var = ((v - mu[:, None]) ** 2 * w).sum(1) / ws
    return mu, np.sqrt(var)


def _nuclei_stats(nuc: np.ndarray, tissue_px: np.ndarray) -> np.ndarray:
    """(n, S, S) bool nucleus mask -> (4, n): density, area mean, area std, nuclear fraction."""
    n = nuc.shape[0]
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)      # 4-connectivity inside a patch only
    lab, k = ndimage.label(nuc, structure=structure)
    # labels are assigned in raster order, so patch i owns a contiguous label range
    top = np.maximum.accumulate(lab.reshape(n, -1).max(1))
    count = np.diff(np.concatenate([[0], top]))
    if k:
        sizes = np.bincount(lab.ravel(), minlength=k + 1)[1:].astype(np.float64)
        owner = np.searchsorted(top, np.arange(1, k + 1), side="left")
        s1 = np.bincount(owner, sizes, minlength=n)
        s2 = np.bincount(owner, sizes ** 2, minlength=n)
    else:
        s1 = s2 = np.zeros(n)
    c = np.maximum(count, 1)
    mean = s1 / c
    std = np.sqrt(np.maximum(s2 / c - mean ** 2, 0.0))
    tp = np.maximum(tissue_px, 1.0)
    return np.stack([count / tp * 1e3, mean, std, nuc.reshape(n, -1).sum(1) / tp])


def _glcm_props(q: np.ndarray, levels: int) -> np.ndarray:
    """(n, s, s) int grey levels -> (4, n): GLCM contrast, homogeneity, energy, correlation."""
    n = q.shape[0]
    L = levels
    base = (np.arange(n) * L * L)[:, None]
    pairs = [(q[:, :, :-1], q[:, :, 1:]), (q[:, :-1, :], q[:, 1:, :])]
    P = np.zeros(n * L * L)
    for a, b in pairs:
        a, b = a.reshape(n, -1), b.reshape(n, -1)
        P += np.bincount((base + a * L + b).ravel(), minlength=n * L * L)
        P += np.bincount((base + b * L + a).ravel(), minlength=n * L * L)   # symmetric
    P = P.reshape(n, L, L)
    P /= np.maximum(P.sum((1, 2), keepdims=True), 1.0)
    i, j = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    d2 = (i - j) ** 2
    contrast = (P * d2).sum((1, 2))
    homog = (P / (1.0 + d2)).sum((1, 2))
    energy = np.sqrt((P ** 2).sum((1, 2)))
    mi = (P * i).sum((1, 2))
    mj = (P * j).sum((1, 2))
    si = np.sqrt((P * (i - mi[:, None, None]) ** 2).sum((1, 2)))
    sj = np.sqrt((P * (j - mj[:, None, None]) ** 2).sum((1, 2)))
    cov = (P * (i - mi[:, None, None]) * (j - mj[:, None, None])).sum((1, 2))
    den = si * sj
    corr = np.where(den > 1e-12, cov / np.where(den > 1e-12, den, 1.0), 1.0)   # flat patch: skimage gives 1
    return np.stack([contrast, homog, energy, corr])


def _lbp_hist(g: np.ndarray) -> np.ndarray:
    """(n, s, s) float grey -> (9, n): histogram of #neighbours (of 8) >= centre, interior pixels."""
    n, s = g.shape[0], g.shape[1]
    c = g[:, 1:-1, 1:-1]
    cnt = np.zeros(c.shape, np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                cnt += g[:, 1 + dy:s - 1 + dy, 1 + dx:s - 1 + dx] >= c
    base = (np.arange(n) * 9)[:, None]
    h = np.bincount((base + cnt.reshape(n, -1)).ravel(), minlength=9 * n).reshape(n, 9)
    return (h / max(c.shape[1] * c.shape[2], 1)).T


def patch_features(batch: np.ndarray) -> np.ndarray:
    """Hand-crafted features of a batch of RGB patches.

    Parameters
    ----------
    batch : (n, S, S, 3) uint8 patches.

    Returns
    -------
    (n, len(FEATURE_NAMES)) float32 features; a patch's row does not depend on the batch.
    """
    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.shape[1] != batch.shape[2]:
        raise ValueError(f"patches must be (n, S, S, 3) RGB, got shape {batch.shape}")
    if batch.dtype != np.uint8:
        raise ValueError(f"patches must be uint8, got {batch.dtype}")
    n = batch.shape[0]
    if n == 0:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32)
    small = downsample(batch)                                     # box filter to <= WORK_SIDE px
    hed = stain_density(small)                                    # (n, s, s, 2)
    rgb = small.astype(np.float32) * np.float32(1 / 255.0)        # (n, s, s, 3)
    s = rgb.shape[1]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    bright = (r + g + b) * np.float32(1 / 3.0)
    mx = np.maximum(np.maximum(r, g), b)
    sat_full = (mx - np.minimum(np.minimum(r, g), b)) / np.maximum(mx, np.float32(1e-6))
    tissue = ((bright < 0.86) | (sat_full > 0.12)) & (mx > 0.06)   # not glass, not black mask / padding
    wf = tissue.reshape(n, -1).astype(np.float32)
    tpx = wf.sum(1)
    feats: list[np.ndarray] = []
    sub = (slice(None), slice(None, None, 2), slice(None, None, 2))   # every 2nd pixel: quantiles, colour, texture
    for ch in (0, 1):
        mu, sd = _weighted_mean_std(hed[..., ch].reshape(n, -1), wf)
        q = _masked_quantiles(hed[..., ch][sub].reshape(n, -1), tissue[sub].reshape(n, -1), (0.1, 0.5, 0.9))
        feats += [mu, sd, *q]
    feats.append(tpx / (s * s))
    hue, sat = _hue_sat(rgb[sub])                       # colour histograms at half the working resolution
    wc = tissue[sub].reshape(n, -1).astype(np.float32)
    wcs = np.maximum(wc.sum(1), 1.0)[:, None]
    hb = np.minimum((hue.reshape(n, -1) * 8).astype(np.int64), 7)
    sb = np.minimum((sat.reshape(n, -1) * 4).astype(np.int64), 3)
    base = np.arange(n)[:, None]
    hh = np.bincount((base * 8 + hb).ravel(), wc.ravel(), minlength=8 * n).reshape(n, 8) / wcs
    sh = np.bincount((base * 4 + sb).ravel(), wc.ravel(), minlength=4 * n).reshape(n, 4) / wcs
    feats += list(hh.T) + list(sh.T)
    feats += list(_nuclei_stats((hed[..., 0] > NUCLEUS_H_THRESHOLD) & tissue, tpx))
    grey = _block_mean(bright, 2) if s >= 32 else bright
    qg = np.minimum((grey * GLCM_LEVELS).astype(np.int64), GLCM_LEVELS - 1)
    feats += list(_glcm_props(qg, GLCM_LEVELS))
    feats += list(_lbp_hist(grey))
    gy, gx = np.gradient(grey, axis=(1, 2))
    gm = np.sqrt(gx ** 2 + gy ** 2).reshape(n, -1)
    feats += [gm.mean(1), gm.std(1)]
    out = np.stack([np.asarray(x, np.float64) for x in feats], 1)
    return np.nan_to_num(out).astype(np.float32)
