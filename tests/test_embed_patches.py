"""Patch extraction: centring, border padding, scale factors, full-res image path, no image."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spagraph.embed.patches import (PAD_VALUE, crop, extract_patches, has_image, iter_patch_batches,
                                    load_slice_image, patch_side)


def _slice(pos_fullres, image=None, scalef=1.0, diameter=10.0, image_path=None):
    n = len(pos_fullres)
    a = ad.AnnData(sp.csr_matrix(np.ones((n, 3), np.float32)), obs=pd.DataFrame(index=[f"s{i}" for i in range(n)]),
                   var=pd.DataFrame(index=["G1", "G2", "G3"]))
    a.obsm["spatial"] = np.asarray(pos_fullres, np.float64)
    imgs = {"hires": image} if image is not None else {}
    a.uns["spatial"] = {"lib": {"images": imgs, "scalefactors": {"tissue_hires_scalef": scalef,
                                                                 "tissue_lowres_scalef": scalef,
                                                                 "spot_diameter_fullres": diameter}}}
    a.uns["spagraph_slice"] = {"library_id": "lib", "platform": "synthetic", "source": "test",
                               "has_image": image is not None or image_path is not None,
                               **({"image_path": str(image_path)} if image_path else {})}
    return a


def _marker_image(h=60, w=80, at=(30, 20)):
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (120, 60, 140)
    img[at[1], at[0]] = (255, 0, 0)          # marker at (x, y)
    return img


def test_crop_centres_marker_inside_image():
    img = _marker_image(at=(30, 20))
    c = crop(img, 30, 20, 11)
    assert c.shape == (11, 11, 3)
    assert tuple(c[5, 5]) == (255, 0, 0)
    assert (c[..., 0] == 255).sum() == 1


@pytest.mark.parametrize("x,y", [(0, 0), (79, 59), (2, 57), (78, 1)])
def test_crop_at_border_is_padded_not_shifted(x, y):
    img = _marker_image(at=(x, y))
    side = 15
    c = crop(img, x, y, side)
    assert tuple(c[7, 7]) == (255, 0, 0), "spot must stay at the crop centre"
    pad = np.all(c == PAD_VALUE, axis=-1)
    inside = np.all(c == (120, 60, 140), axis=-1)
    assert pad.any() and inside.any()
    assert pad.sum() + inside.sum() + 1 == side * side
    # padded rows/cols are exactly those off the image
    x0, y0 = x - 7, y - 7
    cols_off = [(x0 + j) < 0 or (x0 + j) >= 80 for j in range(side)]
    rows_off = [(y0 + i) < 0 or (y0 + i) >= 60 for i in range(side)]
    for i in range(side):
        for j in range(side):
            assert pad[i, j] == (rows_off[i] or cols_off[j])


def test_crop_fully_outside_is_all_background():
    c = crop(_marker_image(), -100, -100, 9)
    assert (c == PAD_VALUE).all()


def test_hires_scale_factor_places_spots_and_sizes_crops():
    scalef = 0.25
    img = _marker_image(h=100, w=100, at=(40, 30))          # hires px
    a = _slice([[160.0, 120.0], [0.0, 0.0]], img, scalef=scalef, diameter=20.0)   # full-res = hires / scalef
    im = load_slice_image(a)
    assert im.source == "hires" and im.scale == scalef
    assert patch_side(a, im, patch_scale=2.2) == round(2.2 * 20 * scalef)
    p = extract_patches(a, patch_scale=2.2, out_size=11)
    assert p.shape == (2, 11, 11, 3) and p.dtype == np.uint8
    assert tuple(p[0, 5, 5]) == (255, 0, 0)
    assert (p[1, :5, :5] == PAD_VALUE).all()                 # top-left spot: padded up-left quadrant
    # patch_px overrides patch_scale (full-res px)
    assert patch_side(a, im, patch_scale=2.2, patch_px=60) == 15


def test_resize_to_encoder_size_keeps_centre():
    img = np.full((200, 200, 3), 200, np.uint8)
    img[95:106, 95:106] = (10, 10, 10)                        # dark 11x11 square at (100, 100)
    a = _slice([[100.0, 100.0]], img, diameter=20.0)
    p = extract_patches(a, patch_scale=2.0, out_size=80)[0]   # 40 px crop -> 80 px
    assert p[40, 40].max() < 50 and p[5, 5].min() > 150
    assert p.shape == (80, 80, 3)


def test_full_resolution_image_path_preferred(tmp_path):
    from PIL import Image
    full = _marker_image(h=120, w=160, at=(100, 50))
    Image.fromarray(full).save(tmp_path / "full.png")
    small = np.zeros((30, 40, 3), np.uint8)                  # a hires that would give different crops
    a = _slice([[100.0, 50.0]], small, scalef=0.25, diameter=5.0, image_path=tmp_path / "full.png")
    im = load_slice_image(a)
    assert im.source == "image_path" and im.scale == 1.0 and im.pixels.shape == (120, 160, 3)
    p = extract_patches(a, patch_scale=1.0, out_size=5)
    assert tuple(p[0, 2, 2]) == (255, 0, 0)
    a.uns["spagraph_slice"]["image_path"] = str(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_slice_image(a)


def test_no_image_and_float_hires():
    a = _slice([[1.0, 1.0]])
    assert not has_image(a) and load_slice_image(a) is None
    with pytest.raises(ValueError, match="no image"):
        extract_patches(a)
    b = _slice([[10.0, 10.0]], np.full((20, 20, 3), 0.5, np.float32))       # scanpy-style float hires
    im = load_slice_image(b)
    assert im.pixels.dtype == np.uint8 and int(im.pixels[0, 0, 0]) == 128


def test_batches_match_single_extraction_and_order():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    pos = rng.uniform(0, 64, (23, 2))
    a = _slice(pos, img, diameter=6.0)
    batches = list(iter_patch_batches(a, out_size=16, patch_scale=2.0, batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    whole = np.concatenate(batches)
    np.testing.assert_array_equal(whole, extract_patches(a, patch_scale=2.0, out_size=16))
    np.testing.assert_array_equal(whole[[7, 3]], extract_patches(a, 2.0, 16, idx=np.array([7, 3])))


def test_best_image_picks_hires_with_its_scale_factor():
    from spagraph.embed.patches import best_image
    hires = _marker_image(h=50, w=40, at=(10, 20))
    a = _slice([[40.0, 80.0]], hires, scalef=0.25)
    lib = a.uns["spatial"]["lib"]
    lib["images"]["lowres"] = np.zeros((5, 4, 3), np.uint8)
    lib["scalefactors"]["tissue_lowres_scalef"] = 0.025
    img, scale = best_image(a)
    assert img.shape == (50, 40, 3) and scale == 0.25
    x, y = (np.asarray(a.obsm["spatial"][0]) * scale).astype(int)
    assert tuple(img[y, x]) == (255, 0, 0)                     # spot position lands on the marker
    del lib["images"]["hires"]
    img, scale = best_image(a)
    assert img.shape == (5, 4, 3) and scale == 0.025           # falls back to lowres
    lib["images"] = {}
    assert best_image(a) == (None, 1.0)
    b = _slice([[1.0, 1.0]], hires)
    del b.uns["spatial"]["lib"]["scalefactors"]["tissue_hires_scalef"]
    with pytest.raises(ValueError, match="tissue_hires_scalef"):
        best_image(b)
