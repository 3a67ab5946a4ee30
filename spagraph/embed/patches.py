"""Patch extraction: one square crop per spot, centred on its full-resolution position.

Side (full-res px) = ``patch_scale`` x ``spot_diameter_fullres``. Crops come from the best
image the slice has: the full-resolution file named in ``uns["spagraph_slice"]["image_path"]``
when present, else ``hires`` (coordinates x ``tissue_hires_scalef``), else ``lowres``. At
image borders the crop is padded with white background, never shifted, so the spot stays
at the centre. Crops are resized to ``out_size`` pixels.

Default ``patch_scale``: 4.5 x a Visium spot (55 um) ~ 250 um, SpaCancer's 250-px patch at
~1 um/px; on legacy ST (100 um spots) the same setting covers 450 um (about 2 pitches).
"""
from __future__ import annotations

import numpy as np

PAD_VALUE = 255


def best_image(adata) -> tuple[np.ndarray | None, float]:
    """(RGB image, scale from full-res px to image px) or (None, 1.0)."""
    meta = adata.uns.get("spagraph_slice", {})
    path = meta.get("image_path")
    if path:
        from PIL import Image
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")), 1.0
    for lib in adata.uns.get("spatial", {}).values():
        imgs, sf = lib.get("images", {}), lib.get("scalefactors", {})
        for key, skey in (("hires", "tissue_hires_scalef"), ("lowres", "tissue_lowres_scalef")):
            if key in imgs and imgs[key] is not None and np.size(imgs[key]):
                img = np.asarray(imgs[key])
                if img.dtype != np.uint8:
                    img = (np.clip(img, 0, 1) * 255).astype(np.uint8) if img.max() <= 1.0 else img.astype(np.uint8)
                if img.ndim == 2:
                    img = np.repeat(img[..., None], 3, axis=2)
                return img[..., :3], float(sf.get(skey, 1.0))
    return None, 1.0


def spot_diameter(adata) -> float:
    for lib in adata.uns.get("spatial", {}).values():
        d = lib.get("scalefactors", {}).get("spot_diameter_fullres")
        if d:
            return float(d)
    from spagraph.graph.neighbours import spot_pitch
    return 0.5 * spot_pitch(np.asarray(adata.obsm["spatial"]))


def crop(img: np.ndarray, cx: float, cy: float, side: int) -> np.ndarray:
    """A (side, side, 3) crop centred on (cx, cy), padded with background at the borders."""
    h, w = img.shape[:2]
    x0 = int(round(cx - side / 2)); y0 = int(round(cy - side / 2))
    out = np.full((side, side, 3), PAD_VALUE, dtype=np.uint8)
    xs, ys = max(x0, 0), max(y0, 0)
    xe, ye = min(x0 + side, w), min(y0 + side, h)
    if xe > xs and ye > ys:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = img[ys:ye, xs:xe]
    return out


def extract_patches(adata, patch_scale: float = 4.5, out_size: int = 64, idx: np.ndarray | None = None) -> np.ndarray:
    """(n, out_size, out_size, 3) uint8 patches for the spots ``idx`` (default all)."""
    from PIL import Image
    img, scale = best_image(adata)
    if img is None:
        raise ValueError("slice has no image to extract patches from")
    pos = np.asarray(adata.obsm["spatial"], dtype=np.float64) * scale
    side = max(2, int(round(patch_scale * spot_diameter(adata) * scale)))
    idx = np.arange(adata.n_obs) if idx is None else idx
    out = np.empty((len(idx), out_size, out_size, 3), np.uint8)
    for k, i in enumerate(idx):
        c = crop(img, pos[i, 0], pos[i, 1], side)
        out[k] = c if side == out_size else np.asarray(Image.fromarray(c).resize((out_size, out_size), Image.BILINEAR))
    return out
