"""her2st legacy-ST reader on the real data (skipped when /work/shared/data is absent)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from spagraph.io import read_her2st

ANNOTATED = ["A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1"]


@pytest.fixture(scope="module")
def annotated(her2st_root):
    out, caught = {}, {}
    for s in ANNOTATED:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            out[s] = read_her2st(her2st_root, s)
        caught[s] = [str(x.message) for x in w]
    return out, caught


@pytest.mark.realdata
def test_all_annotated_slices_label_totals(annotated):
    slices, _ = annotated
    n_lab = sum(int(a.obs["annotation"].notna().sum()) for a in slices.values())
    n_und = sum(int((a.obs["annotation"] == "undetermined").sum()) for a in slices.values())
    assert n_lab == 3481
    assert n_und == 324
    for s, a in slices.items():
        assert a.obs["cancer"].dtype == "Int8"
        und = (a.obs["annotation"] == "undetermined").to_numpy()
        assert a.obs["cancer"][und].isna().all(), s
        canc = a.obs["annotation"].isin(["invasive cancer", "cancer in situ"]).to_numpy()
        assert (a.obs["cancer"][canc] == 1).all() and (a.obs["cancer"][~canc & ~und].fillna(-1) == 0).all(), s


@pytest.mark.realdata
def test_a1_convention(annotated):
    slices, caught = annotated
    a = slices["A1"]
    assert a.n_obs == 346
    assert a.obs_names.is_unique and a.var_names.is_unique
    assert "10x13" in a.obs_names or all("x" in s for s in a.obs_names)
    X = a.X
    assert X.dtype == np.float32 and X.format == "csr"
    assert np.array_equal(X.data, np.round(X.data)) and (X.data >= 0).all()
    xy = a.obsm["spatial"]
    assert xy.dtype == np.float64 and xy.shape == (346, 2)
    # positions come from the selection file (full-res pixels), not the label file
    sel = pd.read_csv(a.uns["spagraph_slice"]["source"] + "/spots/A1_selection.tsv", sep="\t")
    sel.index = sel["x"].astype(str) + "x" + sel["y"].astype(str)
    assert np.allclose(xy, sel.loc[a.obs_names, ["pixel_x", "pixel_y"]].to_numpy())
    lib = a.uns["spatial"]["A1"]
    img = lib["images"]["hires"]
    assert img.shape == (2138, 2000, 3) and img.dtype == np.uint8
    sf = lib["scalefactors"]
    assert sf["tissue_hires_scalef"] == pytest.approx(2000 / 6954)
    # legacy ST: diameter = half the centre-to-centre pitch; ~100 um spots at ~0.92 um/px
    assert 90 < sf["spot_diameter_fullres"] < 125
    # spot centres land on tissue (the PNG's background is masked black)
    pix = np.round(xy * sf["tissue_hires_scalef"]).astype(int)
    assert img[pix[:, 1], pix[:, 0]].mean() > 2 * img.mean()
    meta = a.uns["spagraph_slice"]
    assert meta["platform"] == "legacy_st" and meta["has_image"] and meta["library_id"] == "A1"
    assert "image_path" not in meta       # the PNG is a downscale, not the full-res image
    assert any("no count row" in m for m in caught["A1"])


@pytest.mark.realdata
def test_na_coordinates_reported(annotated):
    _, caught = annotated
    n = 0
    for s in ("F1", "G2"):
        for m in caught[s]:
            if "NA coordinates" in m:
                n += int(m.split(": ")[1].split()[0])
    assert n == 9


@pytest.mark.realdata
def test_unlabelled_slice_with_fullres_jpg(her2st_unlabelled_root):
    a = read_her2st(her2st_unlabelled_root, "B4")
    assert a.obs["cancer"].isna().all() and a.obs["annotation"].isna().all()
    img = a.uns["spatial"]["B4"]["images"]["hires"]
    assert max(img.shape[:2]) == 2000
    sf = a.uns["spatial"]["B4"]["scalefactors"]["tissue_hires_scalef"]
    assert sf == pytest.approx(img.shape[1] / 9274, rel=1e-3)
    assert a.uns["spagraph_slice"]["image_path"].endswith("B4.jpg")
    cl = a.obs["cluster_annotation"]
    rows = pd.read_csv(her2st_unlabelled_root / "clusters" / "B4-cluster-annotation.tsv.gz", sep="\t")
    assert int(cl.notna().sum()) == len(rows) == 222     # every cluster row matches a spot
    assert not any(str(c).isdigit() for c in cl.cat.categories)   # names from motivation.csv


@pytest.mark.realdata
def test_unknown_slice_lists_available(her2st_root):
    with pytest.raises(FileNotFoundError, match="Z9.*slices present.*A1"):
        read_her2st(her2st_root, "Z9")
