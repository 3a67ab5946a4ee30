"""Xenium, Visium HD and SpatialData readers on fixtures written in each vendor's layout
(tests/fixtures_platforms.py) from a synthetic tissue whose truth is known; transfer runs from
legacy-ST-like synthetic slices to a Xenium slice binned at 50 um and a Visium HD slice at 16 um."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_platforms import (CONTROL_TYPES, HD_MICRONS_PER_PIXEL, XENIUM_PIXEL_UM, Tissue,  # noqa: E402
                                write_visium_hd, write_xenium)

from spagraph.io import describe_slice, read_slice  # noqa: E402
from spagraph.io.visium_hd import read_visium_hd  # noqa: E402
from spagraph.io.xenium import bin_points, read_xenium  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def xenium(tmp_path_factory):
    root = tmp_path_factory.mktemp("xe") / "xenium_run"
    truth = write_xenium(root, extent_um=(1500.0, 1200.0), seed=5, matrix="h5", cells="parquet")
    return root, truth


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    outs = tmp_path_factory.mktemp("hd") / "hd_run" / "outs"
    truth = write_visium_hd(outs, extent_um=(880.0, 720.0), bin_sizes=(16,), seed=6)
    return outs, truth


# ----------------------------------------------------------------------------- Xenium
def test_xenium_bins_match_truth_and_controls_are_counted(xenium):
    root, truth = xenium
    a = read_xenium(root, bin_um=50, annotation=truth["annotation"])
    cells = truth["cells"]
    meta = a.uns["spagraph_slice"]
    assert meta["platform"] == "xenium" and meta["grid"] == "square" and meta["bin_um"] == 50.0
    assert a.obs["n_cells"].sum() == len(cells) == meta["n_cells"]             # every cell in exactly one spot
    assert {t: (d["features"], d["counts"]) for t, d in meta["dropped_features"].items()} == truth["controls"]
    assert set(CONTROL_TYPES) == set(meta["dropped_features"])
    assert not any(g.startswith(("NegControl", "Unassigned", "Deprecated")) for g in a.var_names)
    # summed counts: the spot total equals the sum over its cells' gene counts (recomputed from the truth)
    r, c, _ = bin_points(cells[["x_um", "y_um"]].to_numpy(), 50, "square")
    name = pd.Series([f"square50um_{i}_{j}" for i, j in zip(r, c)])
    assert set(name) == set(a.obs_names)
    assert a.X.dtype == np.float32 and (a.X.data == np.round(a.X.data)).all()
    # positions: centres of the 50 um grid, in morphology pixels
    um = a.obsm["spatial"] * XENIUM_PIXEL_UM
    assert np.allclose((um - 25.0) / 50.0, np.round((um - 25.0) / 50.0), atol=1e-6)
    sf = a.uns["spatial"][meta["library_id"]]["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(50 / XENIUM_PIXEL_UM)
    # labels: majority of cell labels; spots well inside a region agree with the tissue truth
    tum = truth["tissue"].is_tumour(um)
    pure = a.obs["annotation_frac"].to_numpy() == 1.0
    lab = a.obs["cancer"].to_numpy(dtype=float, na_value=np.nan)
    assert pure.sum() > 0.5 * a.n_obs
    assert (lab[pure & (np.abs(truth["tissue"].field(um)) > 0.3)] == tum[pure & (np.abs(truth["tissue"].field(um)) > 0.3)]).all()


def test_xenium_hex_and_cells_and_csv_mtx_variants(tmp_path):
    root = tmp_path / "xe"
    truth = write_xenium(root, extent_um=(400.0, 300.0), seed=2, matrix="mtx", cells="csv")
    hexa = read_xenium(root, bin_um=40, grid="hex", annotation=truth["annotation"])
    xy = hexa.obsm["spatial"] * XENIUM_PIXEL_UM
    from scipy.spatial import cKDTree
    d, _ = cKDTree(xy).query(xy, k=2)
    assert np.median(d[:, 1]) == pytest.approx(40.0, rel=1e-6)                 # hex pitch = bin size
    assert hexa.obs["n_cells"].sum() == len(truth["cells"])
    # every cell went to its nearest hex centre
    cxy = truth["cells"][["x_um", "y_um"]].to_numpy()
    r, c, cen = bin_points(cxy, 40, "hex")
    all_c = np.array([[(cc + 0.5 * (rr % 2)) * 40, rr * 40 * np.sqrt(3) / 2]
                      for rr in range(-1, 12) for cc in range(-1, 14)])
    best = all_c[cKDTree(all_c).query(cxy)[1]]
    assert np.allclose(best, cen)
    cells = read_xenium(root, grid="cells", annotation=truth["annotation"])
    assert cells.n_obs == len(truth["cells"]) and cells.uns["spagraph_slice"]["grid"] == "cells"
    assert np.allclose(cells.obsm["spatial"] * XENIUM_PIXEL_UM, cxy)
    assert (cells.obs["cancer"].to_numpy(dtype=float) == truth["cells"]["tumour"].to_numpy()).all()


def test_xenium_images_dapi_and_aligned_he(tmp_path):
    root = tmp_path / "xe"
    truth = write_xenium(root, extent_um=(360.0, 300.0), seed=3, morphology=True, he=True, he_angle_deg=12.0)
    a = read_xenium(root, bin_um=30, annotation=truth["annotation"])
    assert a.uns["spagraph_slice"]["image_kind"] == "dapi" and a.uns["spagraph_slice"]["has_image"]
    b = read_xenium(root, bin_um=30, annotation=truth["annotation"], he_image=truth["he_image"],
                    he_alignment=truth["he_alignment"])
    meta = b.uns["spagraph_slice"]
    assert meta["image_kind"] == "he" and meta["pixel_size_um"] == pytest.approx(XENIUM_PIXEL_UM * 2)
    lib = meta["library_id"]
    img, sf = b.uns["spatial"][lib]["images"]["hires"], b.uns["spatial"][lib]["scalefactors"]
    # H&E pixel -> morphology pixel -> microns gives back the grid centres
    M = truth["alignment"]
    back = (np.c_[b.obsm["spatial"], np.ones(b.n_obs)] @ M.T)[:, :2] * XENIUM_PIXEL_UM
    assert np.allclose((back - 15) / 30, np.round((back - 15) / 30), atol=1e-6)
    # and the spot centres land on the H&E where the tissue truth says: purple in tumour, pink elsewhere
    px = np.round(b.obsm["spatial"] * sf["tissue_hires_scalef"]).astype(int)
    ok = (px[:, 0] >= 0) & (px[:, 1] >= 0) & (px[:, 0] < img.shape[1]) & (px[:, 1] < img.shape[0])
    f = truth["tissue"].field(back)
    inside = truth["tissue"].in_tissue(back)
    sure = ok & inside & (np.abs(f) > 0.3)
    red = img[px[sure, 1], px[sure, 0], 0].astype(int)
    assert sure.sum() > 20
    assert ((red < 200) == (f[sure] > 0)).mean() > 0.95
    assert sf["spot_diameter_fullres"] == pytest.approx(30 / XENIUM_PIXEL_UM / 2)


def test_xenium_bad_inputs_name_the_file(tmp_path):
    root = tmp_path / "xe"
    write_xenium(root, extent_um=(200.0, 200.0), seed=4)
    (root / "x.csv").write_text("1,0\n0,1\n")
    with pytest.raises(ValueError, match="3x3"):
        read_xenium(root, he_image=root / "x.csv", he_alignment=root / "x.csv")
    with pytest.raises(ValueError, match="bin_um"):
        read_xenium(root, bin_um=-5)
    exp = json.loads((root / "experiment.xenium").read_text())
    del exp["pixel_size"]
    (root / "experiment.xenium").write_text(json.dumps(exp))
    with pytest.raises(ValueError, match="pixel_size"):
        read_xenium(root)
    assert read_xenium(root, pixel_size=0.2125).n_obs > 0
    (root / "cells.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="cells.parquet"):
        read_xenium(root, pixel_size=0.2125)


# ----------------------------------------------------------------------------- Visium HD
def test_visium_hd_reads_chosen_bin_size(hd, tmp_path):
    outs, truth = hd
    a = read_visium_hd(outs, bin_um=16, annotation=truth[16]["annotation"])
    meta = a.uns["spagraph_slice"]
    assert meta["platform"] == "visium_hd" and meta["bin_um"] == 16.0 and a.n_obs == truth[16]["n_bins"]
    assert a.obs_names[0].startswith("s_016um_")
    um = a.obsm["spatial"] * HD_MICRONS_PER_PIXEL
    assert np.allclose((um - 8) / 16, np.round((um - 8) / 16), atol=1e-6)
    lab = a.obs["cancer"].to_numpy(dtype=float)
    assert (lab == truth["tissue"].is_tumour(um)).all()
    from scipy import sparse
    assert sparse.isspmatrix_csr(a.X) and a.X.dtype == np.float32
    # the run folder and the square_016um folder read the same; a missing bin size names what exists
    b = read_visium_hd(outs.parent, bin_um=16)
    c = read_visium_hd(outs / "binned_outputs" / "square_016um")
    assert (b.obs_names == a.obs_names).all() and (c.X != a.X).nnz == 0
    with pytest.raises(FileNotFoundError, match=r"bin sizes present: \[16\]"):
        read_visium_hd(outs, bin_um=8)


def test_info_prints_platform_bin_spots_genes_image(xenium, hd):
    from typer.testing import CliRunner
    from spagraph.cli import app
    root, _ = xenium
    res = CliRunner().invoke(app, ["info", str(root), "--bin-um", "50"])
    assert res.exit_code == 0, res.output
    assert "(xenium)" in res.output and "50 um square pseudo-spots" in res.output and "genes" in res.output
    assert "Negative Control Probe: 6 features" in res.output and "image: none" in res.output
    outs, _ = hd
    res = CliRunner().invoke(app, ["info", str(outs)])
    assert res.exit_code == 0, res.output
    assert "(visium_hd)" in res.output and "16 um square bins" in res.output and "image: hires" in res.output
    res = CliRunner().invoke(app, ["info", str(outs), "--grid", "hex"])
    assert res.exit_code != 0 and "Xenium only" in res.output


# ----------------------------------------------------------------------------- end to end
RUN = """\
name: platforms_transfer
data:
  sources:
    - {reader: synthetic, n_slices: 3, n_spots: 400, seed: 7, grid: square, with_image: false, group: st}
    - {reader: xenium, path: %(xe)s, bin_um: 50, bins: square, annotation: %(xe_ann)s, name: xenium50, group: new}
    - {reader: visium_hd, path: %(hd)s, bin_um: 16, annotation: %(hd_ann)s, name: hd16, group: new}
  source_group: st
  target_group: new
embed:
  image_encoder: null
  gene_encoder: pca
  settings: {n_pcs: 20}
graph: {scales: [1.0, 2.0], n_dir_bins: 8}
model: {hidden: 32, heads: 4}
train: {epochs: 25, patience: 50, seeds: [0]}
protocol: {kind: transfer, n_val: 1}
track: {mode: disabled}
"""


def test_spagraph_run_transfers_to_xenium_50um_and_visium_hd_16um(xenium, hd, tmp_path, one_thread):
    from typer.testing import CliRunner
    from spagraph.cli import app
    root, xt = xenium
    outs, ht = hd
    cfg = tmp_path / "run.yaml"
    cfg.write_text(RUN % {"xe": root, "xe_ann": xt["annotation"], "hd": outs, "hd_ann": ht[16]["annotation"]})
    res = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress", "--threads", "1"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    auc = {r["slice"]: r["auc"] for r in m["per_slice"]}
    assert set(auc) == {"xenium50", "hd16"}
    print("transfer AUC", auc)
    assert auc["xenium50"] > 0.9 and auc["hd16"] > 0.9, auc


# ----------------------------------------------------------------------------- cards and transfer YAMLs
SETTINGS = {"sthbc_to_vihbc": ("her2st", "vihbc"), "sthbc_to_xehbc": ("her2st", "xehbc"),
            "xehbc_to_vihbc": ("xehbc", "vihbc"), "sthbc_to_ducis": ("her2st", "ducis"),
            "crc_to_st_colon": ("crc", "st_colon"), "vihbc_to_sthbc": ("vihbc", "her2st")}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_transfer_yaml_validates_and_points_at_cards(setting):
    from spagraph.experiment.config import load_config
    from spagraph.io.cards import load_card
    cfg = load_config(REPO / "experiments" / "transfer" / f"{setting}.yaml")
    assert cfg.protocol.kind == "transfer"
    by_group = {s.group: s.card for s in cfg.data.sources}
    assert (by_group[cfg.data.source_group], by_group[cfg.data.target_group]) == SETTINGS[setting]
    for s in cfg.data.sources:
        card = load_card(s.card)
        assert card.slices and card.files and card.reader and card.label_mapping is not None


def test_cards_have_sources_and_unverified_checksums_say_so():
    from spagraph.io.cards import load_card
    for name in ("vihbc", "xehbc", "ducis", "crc", "st_colon"):
        text = (REPO / "datasets" / f"{name}.yaml").read_text()
        card = load_card(name)
        assert "verified" in text.lower()
        assert all(f.sha256 is None for f in card.files)                      # nothing verified here
        assert all(f.url or f.instructions for f in card.files if not f.optional), name
    assert load_card("xehbc").reader == "xenium" and load_card("xehbc").reader_options["bin_um"] == 100


def test_fetch_prints_manual_steps_and_unpacks(tmp_path):
    """A card whose archive comes from a directory mirror and whose annotation has no URL: fetch
    unpacks the archive into the reader's layout, then stops naming the manual file and its place."""
    import tarfile
    from spagraph.io.fetch import fetch_dataset
    mirror = tmp_path / "mirror"
    (mirror / "spatial").mkdir(parents=True)
    (mirror / "spatial" / "scalefactors_json.json").write_text("{}")
    with tarfile.open(mirror / "S_spatial.tar.gz", "w:gz") as t:
        t.add(mirror / "spatial", arcname="spatial")
    card = {"name": "mini", "reader": "spaceranger", "slices": ["S"], "base_url": "https://example.invalid/",
            "files": [{"path": "_archives/S_spatial.tar.gz", "url": "S_spatial.tar.gz", "unpack": "S/spatial"},
                      {"path": "S/annotation.csv", "url": None, "instructions": "ask the authors for labels.csv"}]}
    p = tmp_path / "mini.yaml"
    p.write_text(yaml.safe_dump(card))
    dest = tmp_path / "dest"
    with pytest.warns(UserWarning, match="no sha256"):
        with pytest.raises(ValueError) as e:
            fetch_dataset(p, dest, mirror=str(mirror), progress=False)
    msg = str(e.value)
    assert str(dest / "S" / "annotation.csv") in msg and "ask the authors for labels.csv" in msg
    assert (dest / "S" / "spatial" / "scalefactors_json.json").exists()


# ----------------------------------------------------------------------------- SpatialData
def test_spatialdata_round_trip_keeps_every_spot_and_result_key(tmp_path, one_thread):
    """slice -> SpatialData .zarr -> slice (same spots, counts, positions, labels) -> a saved model's
    predictions -> written back as a table annotating the same circles -> read again by spatialdata."""
    sd = pytest.importorskip("spatialdata")
    from spagraph.experiment.config import validate_config
    from spagraph.experiment.runner import run_experiment
    from spagraph.io.spatialdata import read_spatialdata, write_slice_spatialdata, write_spatialdata_predictions
    from spagraph.io.synthetic import make_synthetic_slice
    cfg = validate_config({"name": "sd", "data": {"sources": [{"reader": "synthetic", "n_slices": 3, "n_spots": 150,
                                                               "seed": 11, "with_image": False}]},
                           "embed": {"image_encoder": None, "gene_encoder": "pca", "settings": {"n_pcs": 10}},
                           "graph": {"scales": [1.0], "n_dir_bins": 4}, "model": {"hidden": 16, "heads": 2},
                           "train": {"epochs": 2, "patience": 5, "seeds": [0]}, "protocol": {"kind": "loso"},
                           "track": {"mode": "disabled"}})
    run_experiment(cfg, tmp_path / "run", progress=False, write_maps=False, save_models=True)
    model_dir = sorted((tmp_path / "run" / "models").iterdir())[0]
    a = make_synthetic_slice(n_spots=180, seed=99, library_id="target")
    z = tmp_path / "target.zarr"
    write_slice_spatialdata(a, z)
    b = read_spatialdata(z, label_key="annotation")
    assert b.n_obs == a.n_obs and b.n_vars == a.n_vars
    assert list(b.obs_names) == list(a.obs_names)
    assert np.allclose(b.obsm["spatial"], a.obsm["spatial"]) and (b.X != a.X).nnz == 0
    assert (b.obs["cancer"].to_numpy(dtype=float, na_value=-1) == a.obs["cancer"].to_numpy(dtype=float, na_value=-1)).all()
    assert b.uns["spagraph_slice"]["has_image"] and b.uns["spagraph_slice"]["platform"] == "synthetic"
    (sa,), (sb,) = a.uns["spatial"].values(), b.uns["spatial"].values()
    assert sb["images"]["hires"].shape == sa["images"]["hires"].shape
    for k in ("tissue_hires_scalef", "spot_diameter_fullres"):
        assert sb["scalefactors"][k] == pytest.approx(sa["scalefactors"][k]), k
    import anndata as ad
    from typer.testing import CliRunner
    from spagraph.cli import app
    res = CliRunner().invoke(app, ["predict", str(model_dir), str(z), "--out", str(tmp_path / "p.h5ad"),
                                   "--mc-passes", "2", "--no-plot", "--sdata-table", "spagraph"])
    assert res.exit_code == 0, res.output
    b = ad.read_h5ad(tmp_path / "p.h5ad")                    # what predict wrote into the slice
    keys = [c for c in b.obs.columns if c.startswith("spagraph_")]
    assert {"spagraph_score", "spagraph_pred", "spagraph_region", "spagraph_risk", "spagraph_uncertainty"} <= set(keys)
    write_spatialdata_predictions(b, z)                       # overwrite in place, still one table
    s = sd.read_zarr(z)
    assert set(s.tables) == {"table", "spagraph"}
    t = s.tables["spagraph"]
    attrs = t.uns["spatialdata_attrs"]
    assert attrs["region"] == "spots" and t.n_obs == b.n_obs
    inst = t.obs[attrs["instance_key"]].to_numpy()
    assert sorted(inst) == sorted(s.shapes["spots"].index)   # every circle annotated once
    order = pd.Index(b.obs["sd_instance_id"]).get_indexer(inst)
    for k in keys:
        got, want = t.obs[k].to_numpy(), b.obs[k].to_numpy()[order]
        if pd.api.types.is_numeric_dtype(t.obs[k]):
            assert np.allclose(got.astype(float), want.astype(float), equal_nan=True), k
        else:
            assert (got.astype(str) == want.astype(str)).all(), k
    assert set(t.uns["spagraph"]) == set(k for k, v in b.uns["spagraph"].items() if v is not None)


def test_visium_hd_bad_inputs_name_the_file(tmp_path):
    import h5py
    outs = tmp_path / "run" / "outs"
    write_visium_hd(outs, extent_um=(160.0, 160.0), bin_sizes=(16,), seed=1, image=False)
    d = outs / "binned_outputs" / "square_016um"
    pos = pd.read_parquet(d / "spatial" / "tissue_positions.parquet")
    pos.drop(columns=["pxl_col_in_fullres"]).to_parquet(d / "spatial" / "tissue_positions.parquet")
    with pytest.raises(ValueError, match=r"tissue_positions.parquet.*pxl_col_in_fullres"):
        read_visium_hd(outs)
    pos.iloc[5:].to_parquet(d / "spatial" / "tissue_positions.parquet")
    in_t = pos["in_tissue"].to_numpy()[:5].any()
    if in_t:
        with pytest.raises(ValueError, match="have no position"):
            read_visium_hd(outs)
    pos.to_parquet(d / "spatial" / "tissue_positions.parquet")
    with h5py.File(d / "filtered_feature_bc_matrix.h5", "r+") as f:
        data = f["matrix/data"][:]
        data[0] = -3
        f["matrix/data"][...] = data
    with pytest.raises(ValueError, match=r"filtered_feature_bc_matrix.h5: .*negative counts.*first at spot .s_016um_"):
        read_visium_hd(outs)


def test_spatialdata_errors_are_clear(tmp_path):
    pytest.importorskip("spatialdata")
    from spagraph.io.spatialdata import read_spatialdata, write_spatialdata_predictions
    from spagraph.io.synthetic import make_synthetic_slice
    a = make_synthetic_slice(n_spots=60, seed=5, with_image=False)
    with pytest.raises(ValueError, match="not read from a SpatialData store"):
        write_spatialdata_predictions(a, tmp_path / "x.zarr")
    from spagraph.io.spatialdata import write_slice_spatialdata
    write_slice_spatialdata(a, tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="no table 'nope'"):
        read_spatialdata(tmp_path / "s.zarr", table="nope")
    b = read_spatialdata(tmp_path / "s.zarr")
    assert not b.uns["spagraph_slice"]["has_image"] and b.n_obs == 60
    from typer.testing import CliRunner
    from spagraph.cli import app
    res = CliRunner().invoke(app, ["info", str(tmp_path / "s.zarr")])
    assert res.exit_code == 0 and "60 spots x 300 genes" in res.output and "image: none" in res.output, res.output
    with pytest.raises(ValueError, match="no prediction columns"):
        write_spatialdata_predictions(b, tmp_path / "s.zarr")


def test_read_card_with_the_xenium_reader(tmp_path):
    """A card with reader xenium + reader_options reads a fetched root laid out as the xehbc card says."""
    import shutil
    from spagraph.io.cards import read_card
    root = tmp_path / "data"
    truth = write_xenium(root / "rep1", extent_um=(300.0, 250.0), seed=8, he=True)
    shutil.move(truth["annotation"], root / "rep1" / "annotation.csv")
    shutil.move(truth["he_image"], root / "rep1" / "he_image.ome.tif")
    shutil.move(truth["he_alignment"], root / "rep1" / "he_alignment.csv")
    card = yaml.safe_load((REPO / "datasets" / "xehbc.yaml").read_text())
    card.update(name="xe_mini", reader_options=dict(card["reader_options"], bin_um=50),
                label_mapping={"cancer": ["invasive cancer"], "non_cancer": None})
    p = tmp_path / "xe_mini.yaml"
    p.write_text(yaml.safe_dump(card))
    a = read_card(p, root)["rep1"]
    meta = a.uns["spagraph_slice"]
    assert meta["platform"] == "xenium" and meta["bin_um"] == 50 and meta["image_kind"] == "he"
    assert meta["library_id"] == "rep1" and a.obs["cancer"].notna().all() and (a.obs["cancer"] == 1).any()


def test_spatialdata_reads_what_spatialdata_io_writes_for_visium(tmp_path):
    """spatialdata-io's own Visium converter -> .zarr -> read_spatialdata gives the slice read_spaceranger
    gives (same barcodes, counts, full-resolution positions, hires scale factor)."""
    sdio = pytest.importorskip("spatialdata_io")
    from test_io_spaceranger import write_outs
    from spagraph.io import read_spaceranger
    from spagraph.io.spatialdata import read_spatialdata, _quiet
    outs = write_outs(tmp_path / "vis", fmt="h5", n=40)
    a = read_spaceranger(outs)
    with _quiet():
        sdio.visium(outs, dataset_id="vis").write(tmp_path / "v.zarr")
    b = read_spatialdata(tmp_path / "v.zarr")
    assert b.uns["spagraph_slice"]["sd_coordinate_system"] == "vis"
    a = a[b.obs_names]
    assert (b.X != a.X).nnz == 0 and np.allclose(b.obsm["spatial"], a.obsm["spatial"])
    (sa,), (sb,) = a.uns["spatial"].values(), b.uns["spatial"].values()
    assert sb["scalefactors"]["tissue_hires_scalef"] == pytest.approx(sa["scalefactors"]["tissue_hires_scalef"])
    assert sb["scalefactors"]["spot_diameter_fullres"] == pytest.approx(sa["scalefactors"]["spot_diameter_fullres"])
    assert sb["images"]["hires"].shape == sa["images"]["hires"].shape


def test_morphology_pyramid_level_is_read_not_full_resolution(tmp_path):
    """A pyramidal OME-TIFF (as Xenium writes its morphology images): the reader takes the smallest
    level that is still >= 2000 px, never the full-resolution one."""
    import tifffile
    from spagraph.io._tenx import read_tiff_level
    full = np.zeros((5000, 6000), np.uint16)
    full[1000:2000, 1000:3000] = 3000
    p = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(p, bigtiff=True) as tw:
        tw.write(full, subifds=2, photometric="minisblack", metadata={"axes": "YX"}, tile=(256, 256))
        tw.write(full[::2, ::2], subfiletype=1, photometric="minisblack", tile=(256, 256))
        tw.write(full[::4, ::4], subfiletype=1, photometric="minisblack", tile=(256, 256))
    seen = []
    orig = tifffile.TiffPageSeries.asarray

    def spy(self, *a, **k):
        arr = orig(self, *a, **k)
        seen.append(arr.shape)
        return arr
    tifffile.TiffPageSeries.asarray = spy
    try:
        img, (w, h), s = read_tiff_level(p)
    finally:
        tifffile.TiffPageSeries.asarray = orig
    assert seen == [(2500, 3000)]                      # only the 3000-px level was decoded
    assert (w, h) == (6000, 5000) and img.shape[1:] == (2000, 3) and abs(img.shape[0] - 1667) <= 1
    assert s == pytest.approx(2000 / 6000)
    # the bright block lands where level-0 coordinates x scale say
    assert img[int(1500 * s), int(2000 * s)].min() > 200 and img[int(3000 * s), int(4000 * s)].max() < 50


def test_region_polygons_label_spots_geojson_and_xenium_explorer_csv(tmp_path):
    """Labels from drawn regions: a Xenium Explorer selection CSV (microns) on a slice whose frame is a
    rotated H&E, and a QuPath-style GeoJSON (full-resolution pixels) on a Visium HD slice; the smallest
    containing polygon wins, spots outside every polygon are NA."""
    root = tmp_path / "xe"
    truth = write_xenium(root, extent_um=(400.0, 300.0), seed=9, he=True, he_angle_deg=20.0)
    sel = tmp_path / "selections.csv"
    sel.write_text("#Selection name,Area (um^2)\n#Tumour,6000\nSelection,X,Y\n"
                   "tissue,0,0\ntissue,400,0\ntissue,400,300\ntissue,0,300\n"
                   "invasive cancer,100,100\ninvasive cancer,250,100\ninvasive cancer,250,200\ninvasive cancer,100,200\n")
    a = read_xenium(root, bin_um=25, annotation=sel, he_image=truth["he_image"], he_alignment=truth["he_alignment"],
                    label_schema={"cancer": ["invasive cancer"], "non_cancer": None})
    um = (np.c_[a.obsm["spatial"], np.ones(a.n_obs)] @ truth["alignment"].T)[:, :2] * XENIUM_PIXEL_UM
    in_box = (um[:, 0] > 100) & (um[:, 0] < 250) & (um[:, 1] > 100) & (um[:, 1] < 200)
    assert in_box.sum() >= 15
    assert (a.obs["cancer"].to_numpy(dtype=float) == in_box).all()
    outs = tmp_path / "hd" / "outs"
    write_visium_hd(outs, extent_um=(320.0, 240.0), bin_sizes=(16,), seed=2, image=False)
    px = lambda x, y: [x / HD_MICRONS_PER_PIXEL, y / HD_MICRONS_PER_PIXEL]  # noqa: E731
    gj = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "invasive cancer"}},
         "geometry": {"type": "Polygon", "coordinates": [[px(64, 64), px(160, 64), px(160, 160), px(64, 160), px(64, 64)],
                                                          [px(96, 96), px(128, 96), px(128, 128), px(96, 128), px(96, 96)]]}}]}
    g = tmp_path / "regions.geojson"
    g.write_text(json.dumps(gj))
    b = read_visium_hd(outs, annotation=g)
    bum = b.obsm["spatial"] * HD_MICRONS_PER_PIXEL
    inside = ((bum > 64) & (bum < 160)).all(1) & ~((bum > 96) & (bum < 128)).all(1)
    assert inside.sum() == 36 - 4
    assert (b.obs["cancer"].to_numpy(dtype=float, na_value=0) == inside).all() and b.obs["cancer"].isna().sum() == b.n_obs - 32


def test_predict_inputs_pass_the_bin_size_to_the_xenium_reader(xenium, tmp_path):
    """`spagraph predict --bin-um` reaches the reader (it was always 50 µm); h5ad inputs refuse it."""
    import spagraph.tl as tl
    root, _ = xenium
    a = tl.read_inputs([root], bin_um=100.0)[root.name]()
    assert a.uns["spagraph_slice"]["bin_um"] == 100.0
    assert a.n_obs < read_xenium(root, bin_um=50).n_obs
    h5 = tmp_path / "s.h5ad"
    a.write_h5ad(h5)
    with pytest.raises(ValueError, match="Xenium and Visium HD only"):
        tl.read_inputs([h5], bin_um=100.0)["s"]()
