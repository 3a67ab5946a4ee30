"""Real data (../shared/data): `spagraph info`, her2st_unlabelled clusters and image memory.

(The her2st label totals and A1 conventions are in test_io_her2st.py.)
"""
from __future__ import annotations

import resource

import numpy as np
import pytest

from spagraph.io import read_her2st, read_slice
from spagraph.io.her2st import read_cluster_names

pytestmark = pytest.mark.realdata


def _cli(*args):
    from typer.testing import CliRunner
    from spagraph.cli import app
    return CliRunner().invoke(app, [str(a) for a in args])


def test_info_cli_prints_spots_and_labels(her2st_root):
    res = _cli("info", her2st_root, "--slice", "A1")
    assert res.exit_code == 0, res.output
    assert "346 spots" in res.output and "labelled spots: 346" in res.output
    assert "invasive cancer:" in res.output and "undetermined: 5" in res.output
    assert "image: hires" in res.output


def test_info_cli_unknown_slice_lists_present(her2st_root):
    res = _cli("info", her2st_root, "--slice", "Z9")
    assert res.exit_code == 2
    assert "Z9.tsv.gz" in res.output and "A1" in res.output and "Traceback" not in res.output


def test_read_slice_dispatch_needs_slice(her2st_root):
    with pytest.raises(ValueError, match="pass --slice"):
        read_slice(her2st_root)


def test_motivation_csv_names_with_commas(her2st_unlabelled_root):
    names = read_cluster_names(her2st_unlabelled_root / "clusters" / "motivation.csv")
    assert names[("B", 2)] == "immune : APC, myeloid"
    assert names[("C", 5)] == "immune : APC, B-cell, T-cell"
    assert names[("B", 0)] == "unknown" and names[("F", 0)] == "unknown"
    assert names[("A", 5)] == "cancer in situ"
    assert len(names) == 46   # 8 patients A-H, 4-7 clusters each


def test_unlabelled_b4_clusters_and_image(her2st_unlabelled_root):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    a = read_her2st(her2st_unlabelled_root, "B4")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    # no labels dir: every label column NA, no error
    assert a.obs["annotation"].isna().all() and a.obs["cancer"].isna().all()
    # clusters: patient B's names from motivation.csv, not cluster numbers; the file has 222 rows
    # for 283 count spots, so 61 spots stay NA
    cl = a.obs["cluster_annotation"]
    counts = cl.value_counts()
    assert counts["unknown"] == 108 and counts["cancer"] == 17 and counts["breast glands 1"] == 30
    assert counts["immune : APC, myeloid"] == 26
    assert int(cl.notna().sum()) == 222 and a.n_obs == 283
    # the full-res JPG (about 9274 x 9911) is kept as a <= 2000 px hires image, frame consistent
    from PIL import Image
    with Image.open(her2st_unlabelled_root / "images" / "B4.jpg") as im:
        full_w, full_h = im.size
    assert min(full_w, full_h) > 9000
    lib = a.uns["spatial"]["B4"]
    img, sf = lib["images"]["hires"], lib["scalefactors"]
    assert max(img.shape[:2]) == 2000 and img.shape[2] == 3
    assert img.shape[0] / img.shape[1] == pytest.approx(full_h / full_w, rel=2e-3)
    assert sf["tissue_hires_scalef"] == pytest.approx(img.shape[1] / full_w, rel=1e-6)
    assert a.uns["spagraph_slice"]["image_path"].endswith("B4.jpg")
    # a full-res RGB decode alone is ~275 MB; the draft decode stays far below
    assert grown_mb < 150, f"reading B4 grew peak memory by {grown_mb:.0f} MB (full-res decode?)"
    px = np.round(a.obsm["spatial"] * sf["tissue_hires_scalef"]).astype(int)
    assert (px >= 0).all() and (px[:, 0] < img.shape[1]).all() and (px[:, 1] < img.shape[0]).all()
    on_tissue = img[px[:, 1], px[:, 0]].astype(int).sum(1) < 700   # not the white slide background
    assert on_tissue.mean() > 0.8
