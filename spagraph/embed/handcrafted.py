"""Hand-crafted morphology features of H&E patches (no weights needed; the offline default).

Per patch: hematoxylin / eosin channel statistics from colour deconvolution
(``skimage.color.rgb2hed``), tissue fraction, hue/saturation histograms of tissue pixels,
nucleus-like blob count and size (thresholded hematoxylin), grey-level co-occurrence
texture (contrast, homogeneity, energy, correlation) and gradient energy.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

NUCLEUS_H_THRESHOLD = 0.05   # hematoxylin optical density above which a pixel is nucleus-like

FEATURE_NAMES = (["h_mean", "h_std", "h_p10", "h_p50", "h_p90", "e_mean", "e_std", "e_p10", "e_p50", "e_p90",
                  "tissue_frac"] + [f"hue{i}" for i in range(8)] + [f"sat{i}" for i in range(4)] +
                 ["nuclei_density", "nuclei_mean_area", "nuclei_frac",
                  "glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation", "grad_mean", "grad_std"])


def _hsv(batch: np.ndarray):
    from skimage.color import rgb2hsv
    return rgb2hsv(batch.reshape(-1, batch.shape[2], 3)).reshape(batch.shape)


def patch_features(batch: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) uint8 patches -> (n, F) float32 features (F = len(FEATURE_NAMES))."""
    from skimage.color import rgb2hed
    from skimage.feature import graycomatrix, graycoprops
    n, S = batch.shape[0], batch.shape[1]
    rgb = batch.astype(np.float32) / 255.0
    hed = rgb2hed(rgb.reshape(-1, S, 3)).reshape(n, S, S, 3)
    bright = rgb.mean(-1)
    tissue = (bright < 0.88) & (bright > 0.05)          # not white background, not black mask
    tfrac = tissue.mean((1, 2))
    feats = []
    for ch in (0, 1):
        c = hed[..., ch].reshape(n, -1)
        feats += [c.mean(1), c.std(1), *np.percentile(c, [10, 50, 90], axis=1)]
    feats.append(tfrac)
    hsv = _hsv(rgb)
    w = tissue.reshape(n, -1).astype(np.float32)
    wsum = np.maximum(w.sum(1, keepdims=True), 1.0)
    hue = np.minimum((hsv[..., 0].reshape(n, -1) * 8).astype(int), 7)
    sat = np.minimum((hsv[..., 1].reshape(n, -1) * 4).astype(int), 3)
    hh = np.stack([(w * (hue == k)).sum(1) for k in range(8)], 1) / wsum
    sh = np.stack([(w * (sat == k)).sum(1) for k in range(4)], 1) / wsum
    feats += list(hh.T) + list(sh.T)
    hch = hed[..., 0]
    nuc = (hch > NUCLEUS_H_THRESHOLD) & tissue   # fixed: features of a patch never depend on its batch
    grey = (bright * 7).astype(np.uint8)
    small = grey[:, ::2, ::2] if S >= 64 else grey
    dens, area, frac, glcm, grad = [], [], [], [], []
    for i in range(n):
        lab, k = ndimage.label(nuc[i])
        dens.append(k / (S * S) * 1e3)
        area.append(nuc[i].sum() / max(k, 1))
        frac.append(nuc[i].mean())
        m = graycomatrix(small[i], [1], [0, np.pi / 2], levels=8, symmetric=True, normed=True)
        glcm.append([graycoprops(m, p).mean() for p in ("contrast", "homogeneity", "energy", "correlation")])
    gy, gx = np.gradient(bright, axis=(1, 2))
    g = np.sqrt(gx ** 2 + gy ** 2).reshape(n, -1)
    feats += [np.array(dens), np.array(area), np.array(frac)]
    glcm = np.nan_to_num(np.array(glcm, dtype=np.float64).reshape(n, 4))
    feats += list(glcm.T)
    feats += [g.mean(1), g.std(1)]
    return np.stack(feats, 1).astype(np.float32)
