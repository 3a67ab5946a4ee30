"""Patch extraction: one square crop per spot, centred on its full-resolution position.

Side (full-res px) = ``patch_scale`` x ``spot_diameter_fullres``, or exactly ``patch_px``
full-res pixels when that is given. Crops come from the best image the slice has: the
full-resolution file named in ``uns["spagraph_slice"]["image_path"]`` when present, else
``hires`` (coordinates x ``tissue_hires_scalef``), else ``lowres``. At image borders the crop
is padded with white background (``PAD_VALUE``), never shifted, so the spot stays at the
centre. Crops are resized (PIL bilinear, antialiased when shrinking) to the encoder's input size.

Default ``patch_scale`` = 2.8: on 10x Visium (55 um spots, ``spot_diameter_fullres`` ~ 89 px at
~0.62 um/px) that is a 250 full-res px (~150 um) crop, SpaCancer's patch; on legacy ST (100 um
spots, 200 um pitch) it covers 280 um, about 1.4 pitches. Pass ``patch_px=250`` to reproduce
SpaCancer's fixed crop size on any platform.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD_VALUE = 255
DEFAULT_PATCH_SCALE = 2.8


@dataclass
class SliceImage:
    """An RGB image of a slice and the factor from full-resolution px to its px."""
    pixels: np.ndarray      # (H, W, 3) uint8
    scale: float            # image px per full-resolution px
    source: str             # "image_path" | "hires" | "lowres"


def _as_rgb_uint8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and np.nanmax(img) <= 1.0:   # scanpy reads hires as float [0, 1]
            img = np.rint(np.clip(np.nan_to_num(img), 0, 1) * 255)
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"slice image must be (H, W) grey or (H, W, 3|4) colour, got shape {img.shape}")
    return np.ascontiguousarray(img[..., :3])


def load_slice_image(adata) -> SliceImage | None:
    """The best image of a slice (module docstring), or None when it has none."""
    meta = adata.uns.get("spagraph_slice", {}) or {}
    path = meta.get("image_path")
    if path:
        from pathlib import Path
        from PIL import Image
        if not Path(path).exists():
            raise FileNotFoundError(f"full-resolution image named in uns['spagraph_slice']['image_path'] not found: {path}")
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            return SliceImage(_as_rgb_uint8(np.asarray(im.convert("RGB"))), 1.0, "image_path")
    for lib in (adata.uns.get("spatial", {}) or {}).values():
        imgs, sf = lib.get("images", {}) or {}, lib.get("scalefactors", {}) or {}
        for key, skey in (("hires", "tissue_hires_scalef"), ("lowres", "tissue_lowres_scalef")):
            img = imgs.get(key)
            if img is not None and np.size(img):
                if skey not in sf:
                    raise ValueError(f"slice has a {key} image but no scalefactors[{skey!r}] to place spots on it")
                return SliceImage(_as_rgb_uint8(img), float(sf[skey]), key)
    return None


def has_image(adata) -> bool:
    """True when the slice carries an image (without decoding a full-resolution file)."""
    meta = adata.uns.get("spagraph_slice", {}) or {}
    if meta.get("image_path"):
        return True
    for lib in (adata.uns.get("spatial", {}) or {}).values():
        for key in ("hires", "lowres"):
            img = (lib.get("images", {}) or {}).get(key)
            if img is not None and np.size(img):
                return True
    return False


def best_image(adata) -> tuple[np.ndarray | None, float]:
    """(RGB image, scale from full-res px to image px), or (None, 1.0) without an image."""
    im = load_slice_image(adata)
    return (None, 1.0) if im is None else (im.pixels, im.scale)


def spot_diameter(adata) -> float:
    """``spot_diameter_fullres`` from the scale factors, else half the spot pitch (full-res px)."""
    for lib in (adata.uns.get("spatial", {}) or {}).values():
        d = (lib.get("scalefactors", {}) or {}).get("spot_diameter_fullres")
        if d:
            return float(d)
    from spagraph.graph.neighbours import spot_pitch
    return 0.5 * spot_pitch(np.asarray(adata.obsm["spatial"]))


def crop(img: np.ndarray, cx: float, cy: float, side: int) -> np.ndarray:
    """A (side, side, 3) crop whose centre pixel is (cx, cy), padded with ``PAD_VALUE`` off the image.

    The crop covers pixels ``round(c - side / 2) .. round(c - side / 2) + side - 1`` on each axis.
    """
    h, w = img.shape[:2]
    x0 = int(np.floor(cx - side / 2 + 0.5)); y0 = int(np.floor(cy - side / 2 + 0.5))
    out = np.full((side, side, 3), PAD_VALUE, dtype=np.uint8)
    xs, ys = max(x0, 0), max(y0, 0)
    xe, ye = min(x0 + side, w), min(y0 + side, h)
    if xe > xs and ye > ys:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = img[ys:ye, xs:xe]
    return out


def patch_side(adata, image: SliceImage, patch_scale: float = DEFAULT_PATCH_SCALE,
               patch_px: float | None = None) -> int:
    """Crop side in the image's pixels (>= 2)."""
    full = float(patch_px) if patch_px else float(patch_scale) * spot_diameter(adata)
    if not np.isfinite(full) or full <= 0:
        raise ValueError(f"patch size must be positive, got patch_scale={patch_scale}, patch_px={patch_px}")
    return max(2, int(round(full * image.scale)))


class PatchDataset:
    """``torch.utils.data.Dataset``-style: item i = the (out_size, out_size, 3) uint8 crop of spot i."""

    def __init__(self, image: SliceImage, positions: np.ndarray, side: int, out_size: int):
        self.image, self.side, self.out_size = image, int(side), int(out_size)
        self.pos = np.asarray(positions, dtype=np.float64) * image.scale

    def __len__(self) -> int:
        return len(self.pos)

    def __getitem__(self, i: int) -> np.ndarray:
        c = crop(self.image.pixels, self.pos[i, 0], self.pos[i, 1], self.side)
        if self.side == self.out_size:
            return c
        from PIL import Image
        return np.asarray(Image.fromarray(c).resize((self.out_size, self.out_size), Image.BILINEAR))


def _collate(items: list) -> np.ndarray:
    return np.stack(items)


def iter_patch_batches(adata, out_size: int, patch_scale: float = DEFAULT_PATCH_SCALE, patch_px: float | None = None,
                       batch_size: int = 32, num_workers: int = 0, image: SliceImage | None = None,
                       progress: bool = False, description: str = "patches"):
    """Yield (b, out_size, out_size, 3) uint8 batches of spot crops in spot order (torch DataLoader)."""
    from torch.utils.data import DataLoader
    image = image or load_slice_image(adata)
    if image is None:
        raise ValueError("slice has no image to extract patches from")
    ds = PatchDataset(image, adata.obsm["spatial"], patch_side(adata, image, patch_scale, patch_px), out_size)
    dl = DataLoader(ds, batch_size=max(1, int(batch_size)), shuffle=False, num_workers=int(num_workers),
                    collate_fn=_collate)
    if not progress:
        yield from dl
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task(description, total=len(ds))
        for b in dl:
            yield b
            bar.advance(task, len(b))


def extract_patches(adata, patch_scale: float = DEFAULT_PATCH_SCALE, out_size: int = 64,
                    idx: np.ndarray | None = None, patch_px: float | None = None,
                    image: SliceImage | None = None) -> np.ndarray:
    """(n, out_size, out_size, 3) uint8 patches for the spots ``idx`` (default all), spot order."""
    image = image or load_slice_image(adata)
    if image is None:
        raise ValueError("slice has no image to extract patches from")
    ds = PatchDataset(image, adata.obsm["spatial"], patch_side(adata, image, patch_scale, patch_px), out_size)
    idx = np.arange(len(ds)) if idx is None else np.asarray(idx)
    if len(idx) == 0:
        return np.zeros((0, out_size, out_size, 3), np.uint8)
    return np.stack([ds[int(i)] for i in idx])
