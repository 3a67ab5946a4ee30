"""Bad slices through the one validation layer (spagraph.io.validate.check_slice) that every reader
uses: .h5ad, Space Ranger outs/ and the her2st layout. Each case is refused with a message naming
the file, the spot (or row) and what was expected, or repaired in a documented, logged way."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spagraph.io import read_h5ad, read_her2st, read_spaceranger
from spagraph.io.validate import check_slice

pytestmark = pytest.mark.bad_input


# ------------------------------------------------------------------ fixtures


def raw_slice(n=60, g=12, seed=0, image=True):
    """A small valid slice in spagraph's convention (integer counts, labels, positions, image)."""
    rng = np.random.default_rng(seed)
    X = rng.poisson(4.0, size=(n, g)).astype(np.float32)
    side = int(np.ceil(np.sqrt(n)))
    xy = np.array([(100 + 50 * (i % side), 100 + 50 * (i // side)) for i in range(n)], float)
    a = ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame(index=[f"s{i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"G{j}" for j in range(g)]))
    a.obsm["spatial"] = xy
    a.obs["cancer"] = pd.array(rng.integers(0, 2, n), dtype="Int8")
    sf = {"tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1, "spot_diameter_fullres": 25.0}
    imgs = {"hires": np.full((400, 400, 3), 180, np.uint8)} if image else {}
    a.uns["spatial"] = {"lib": {"images": imgs, "scalefactors": sf}}
    return a


def write_h5ad(tmp_path, a, name="bad.h5ad") -> Path:
    p = tmp_path / name
    a.write_h5ad(p)
    return p


def lognorm(X):
    X = np.asarray(X.toarray() if sp.issparse(X) else X, np.float64)
    return np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)


# ------------------------------------------------------------------ the valid slice reads


def test_valid_slice_passes_unchanged(tmp_path):
    a = raw_slice()
    b = read_h5ad(write_h5ad(tmp_path, a))
    assert b.n_obs == a.n_obs and (b.X != a.X).nnz == 0
    assert b.obs["cancer"].dtype == "Int8"


# ------------------------------------------------------------------ counts


def test_h5ad_lognormalised_X_is_refused(tmp_path):
    a = raw_slice()
    a.X = lognorm(a.X)
    p = write_h5ad(tmp_path, a)
    with pytest.raises(ValueError, match=r"bad\.h5ad: X looks log-normalised.*spot 's\d+', gene 'G\d+'.*"
                                         r"spagraph needs raw counts in X or layers\['counts'\]"):
        read_h5ad(p)


def test_h5ad_lognormalised_sparse_X_is_refused(tmp_path):
    a = raw_slice()
    a.X = sp.csr_matrix(lognorm(a.X))
    with pytest.raises(ValueError, match=r"X looks log-normalised"):
        read_h5ad(write_h5ad(tmp_path, a))


def test_h5ad_scaled_X_is_refused(tmp_path):
    a = raw_slice()
    L = lognorm(a.X)
    a.X = (L - L.mean(0)) / (L.std(0) + 1e-6)
    with pytest.raises(ValueError, match=r"X looks scaled/centred.*negative counts.*raw counts"):
        read_h5ad(write_h5ad(tmp_path, a))


def test_h5ad_negative_count_in_dense_X_names_spot(tmp_path):
    a = raw_slice()
    X = a.X.toarray()
    X[7, 3] = -2
    a.X = X
    with pytest.raises(ValueError, match=r"bad\.h5ad: X holds negative counts.*spot 's7', gene 'G3'"):
        read_h5ad(write_h5ad(tmp_path, a))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_h5ad_nonfinite_sparse_count_names_spot(tmp_path, value):
    a = raw_slice()
    X = a.X.toarray()
    X[11, 2] = value
    a.X = sp.csr_matrix(X)
    with pytest.raises(ValueError, match=r"NaN/Inf counts.*spot 's11', gene 'G2'"):
        read_h5ad(write_h5ad(tmp_path, a))


def test_layers_counts_used_when_X_is_lognormalised(tmp_path, caplog):
    a = raw_slice()
    raw = a.X.copy()
    a.layers["counts"] = raw
    a.X = lognorm(raw)
    with caplog.at_level("INFO", logger="spagraph"):
        b = read_h5ad(write_h5ad(tmp_path, a))
    assert (sp.csr_matrix(b.X) != raw).nnz == 0, "X must now hold the raw counts from layers['counts']"
    assert "layers['counts']" in caplog.text


def test_bad_layers_counts_is_named(tmp_path):
    a = raw_slice()
    a.layers["counts"] = lognorm(a.X)
    with pytest.raises(ValueError, match=r"layers\['counts'\] looks log-normalised"):
        read_h5ad(write_h5ad(tmp_path, a))


def test_h5ad_non_numeric_X(tmp_path):
    a = raw_slice()
    with pytest.raises(ValueError, match=r"src\.x: X holds non-numeric values"):
        a2 = a.copy()
        a2.X = np.full(a.shape, "3", dtype=object)
        check_slice(a2, source="src.x")


def test_h5ad_duplicate_spot_ids(tmp_path):
    a = raw_slice()
    a.obs_names = ["s0"] + list(a.obs_names[1:-1]) + ["s0"]
    with pytest.raises(ValueError, match=r"bad\.h5ad: duplicate spot ids \['s0'\]"):
        read_h5ad(write_h5ad(tmp_path, a))


def test_zero_count_spot_kept_and_reported():
    a = raw_slice()
    X = a.X.toarray()
    X[4] = 0
    a.X = sp.csr_matrix(X)
    with pytest.warns(UserWarning, match=r"z\.h5ad: 1 spot\(s\) have zero counts.*'s4'"):
        check_slice(a, source="z.h5ad")
    assert a.n_obs == 60


# ------------------------------------------------------------------ labels


@pytest.mark.parametrize("value", [2, -1, 0.5, "yes"])
def test_h5ad_cancer_out_of_range_names_spot(tmp_path, value):
    a = raw_slice()
    c = a.obs["cancer"].astype(object).to_numpy()
    c[9] = value
    if isinstance(value, str):
        c = np.array([str(v) for v in c], dtype=object)      # a text column: "1", "0", ..., "yes"
    a.obs["cancer"] = pd.Series(c, index=a.obs_names).astype(type(value) if not isinstance(value, str) else object)
    with pytest.raises(ValueError, match=r"bad\.h5ad: obs\['cancer'\] must hold 1 \(cancer\), 0 \(non-cancer\) or NA.*"
                                         r"spot 's9' has"):
        read_h5ad(write_h5ad(tmp_path, a))


def test_h5ad_float_and_bool_labels_accepted(tmp_path):
    a = raw_slice()
    f = a.obs["cancer"].astype(float).to_numpy()
    f[3] = np.nan
    a.obs["cancer"] = f
    b = read_h5ad(write_h5ad(tmp_path, a))
    assert b.obs["cancer"].dtype == "Int8" and b.obs["cancer"].isna().sum() == 1
    a.obs["cancer"] = np.arange(a.n_obs) % 2 == 0
    b = read_h5ad(write_h5ad(tmp_path, a, "b.h5ad"))
    assert int(b.obs["cancer"].sum()) == 30


# ------------------------------------------------------------------ positions


def test_h5ad_nan_positions_name_spot(tmp_path):
    a = raw_slice()
    a.obsm["spatial"][5] = np.nan
    with pytest.raises(ValueError, match=r"bad\.h5ad: spot\(s\) \['s5'\] have NaN/Inf pixel coordinates"):
        read_h5ad(write_h5ad(tmp_path, a))


def test_h5ad_positions_wrong_shape(tmp_path):
    a = raw_slice()
    a.obsm["spatial"] = a.obsm["spatial"][:, :1]
    with pytest.raises(ValueError, match=r"obsm\['spatial'\] must be a numeric \(n, 2\) array"):
        read_h5ad(write_h5ad(tmp_path, a))


def test_positions_outside_image(tmp_path):
    a = raw_slice()
    a.obsm["spatial"][2] = [5000.0, 100.0]      # x 0.5 -> px 2500 in a 400 px image
    a.obsm["spatial"][3] = [100.0, 100.0]
    with pytest.raises(ValueError, match=r"bad\.h5ad: hires image is 400x400 px but 1 spot centre.*'s2'.*inside the image"):
        read_h5ad(write_h5ad(tmp_path, a))


# ------------------------------------------------------------------ scale factors


@pytest.mark.parametrize("key,value", [("tissue_hires_scalef", 0), ("tissue_hires_scalef", -0.5),
                                       ("tissue_lowres_scalef", float("nan")), ("spot_diameter_fullres", 0.0)])
def test_h5ad_scale_factor_not_positive(tmp_path, key, value):
    a = raw_slice()
    a.uns["spatial"]["lib"]["scalefactors"][key] = value
    with pytest.raises(ValueError, match=rf"bad\.h5ad: uns\['spatial'\]\['lib'\]\['scalefactors'\]\['{key}'\].*"
                                         r"expected a finite number > 0"):
        read_h5ad(write_h5ad(tmp_path, a))


def test_scale_factor_not_a_number():
    a = raw_slice()
    a.uns["spatial"]["lib"]["scalefactors"]["tissue_hires_scalef"] = "half"
    with pytest.raises(ValueError, match=r"s\.h5ad: .*tissue_hires_scalef'\] = 'half': expected a number > 0"):
        check_slice(a, source="s.h5ad")


def test_image_without_its_scale_factor():
    a = raw_slice()
    del a.uns["spatial"]["lib"]["scalefactors"]["tissue_hires_scalef"]
    with pytest.raises(ValueError, match=r"hires image has no scale factor 'tissue_hires_scalef'"):
        check_slice(a, source="s.h5ad")


# ------------------------------------------------------------------ images


def test_16bit_image_rescaled_not_clipped(tmp_path):
    a = raw_slice()
    img16 = np.full((400, 400, 3), 30000, np.uint16)
    img16[:200] = 60000
    a.uns["spatial"]["lib"]["images"]["hires"] = img16
    b = read_h5ad(write_h5ad(tmp_path, a))
    out = b.uns["spatial"]["lib"]["images"]["hires"]
    assert out.dtype == np.uint8
    assert out[300, 0, 0] == round(30000 / 257) and out[0, 0, 0] == round(60000 / 257), "16-bit must be /257, not clipped"


def test_float_image_in_unit_range_scaled():
    a = raw_slice()
    a.uns["spatial"]["lib"]["images"]["hires"] = np.full((400, 400, 3), 0.5, np.float32)
    check_slice(a, source="f.h5ad")
    assert a.uns["spatial"]["lib"]["images"]["hires"][0, 0, 0] == 128


@pytest.mark.parametrize("img,needle", [
    (np.full((400, 400, 3), 2.0, np.float32), r"float pixels must lie in \[0, 1\]"),
    (np.full((400, 400, 3), 70000, np.int64), r"more than 16 bits"),
    (np.zeros((400, 400, 2), np.uint8), r"expected \(H, W\) grey or \(H, W, 3\|4\) colour"),
    (np.ones((400, 400), bool), r"1-bit"),
])
def test_bad_image_pixels_refused(img, needle):
    a = raw_slice()
    a.uns["spatial"]["lib"]["images"]["hires"] = img
    with pytest.raises(ValueError, match=rf"i\.h5ad: hires image: .*{needle}|i\.h5ad: hires image.*{needle}"):
        check_slice(a, source="i.h5ad")


def test_one_pixel_image_refused(tmp_path):
    a = raw_slice()
    a.uns["spatial"]["lib"]["images"] = {"hires": np.full((1, 1, 3), 200, np.uint8)}
    a.uns["spatial"]["lib"]["scalefactors"]["tissue_hires_scalef"] = 1e-4   # every spot inside the one pixel
    with pytest.raises(ValueError, match=r"bad\.h5ad: hires image is 1x1 px: a spot diameter covers only .* px"):
        read_h5ad(write_h5ad(tmp_path, a))


# ------------------------------------------------------------------ Space Ranger outs/


def write_outs(root: Path, n=12, sf=None, image=None, annotation=None) -> Path:
    outs = root / "outs"
    m = outs / "filtered_feature_bc_matrix"
    m.mkdir(parents=True)
    (outs / "spatial").mkdir()
    genes = ["ERBB2", "KRT19", "COL1A1", "PTPRC"]
    X = np.random.default_rng(0).poisson(3.0, (n, len(genes))) + 1
    bcs = [f"AAAC{i:04d}-1" for i in range(n)]
    with gzip.open(m / "barcodes.tsv.gz", "wt") as f:
        f.write("\n".join(bcs) + "\n")
    with gzip.open(m / "features.tsv.gz", "wt") as f:
        f.write("".join(f"ENSG{i:05d}\t{g}\tGene Expression\n" for i, g in enumerate(genes)))
    coo = sp.coo_matrix(X.T)
    with gzip.open(m / "matrix.mtx.gz", "wt") as f:
        f.write(f"%%MatrixMarket matrix coordinate integer general\n{len(genes)} {n} {coo.nnz}\n")
        f.write("".join(f"{r + 1} {c + 1} {v}\n" for r, c, v in zip(coo.row, coo.col, coo.data)))
    rows, cols = np.divmod(np.arange(n), 4)
    pd.DataFrame({"barcode": bcs, "in_tissue": 1, "array_row": rows, "array_col": cols * 2,
                  "pxl_row_in_fullres": 1000 + 200 * rows, "pxl_col_in_fullres": 800 + 200 * cols}).to_csv(
        outs / "spatial" / "tissue_positions.csv", index=False)
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(
        sf or {"tissue_hires_scalef": 0.1, "tissue_lowres_scalef": 0.03, "spot_diameter_fullres": 90.0}))
    if image is not None:
        from PIL import Image
        Image.fromarray(image).save(outs / "spatial" / "tissue_hires_image.png")
    if annotation is not None:
        (root / "ann.csv").write_text(annotation)
    return outs


def test_spaceranger_zero_scale_factor_names_json(tmp_path):
    outs = write_outs(tmp_path, sf={"tissue_hires_scalef": 0, "spot_diameter_fullres": 90.0})
    with pytest.raises(ValueError, match=r"scalefactors_json\.json: tissue_hires_scalef = 0: expected a finite number > 0"):
        read_spaceranger(outs)


def test_spaceranger_scale_factor_string(tmp_path):
    outs = write_outs(tmp_path, sf={"tissue_hires_scalef": "0.1x", "spot_diameter_fullres": 90.0})
    with pytest.raises(ValueError, match=r"scalefactors_json\.json: tissue_hires_scalef = '0\.1x'"):
        read_spaceranger(outs)


def test_spaceranger_scalefactors_not_an_object(tmp_path):
    outs = write_outs(tmp_path)
    (outs / "spatial" / "scalefactors_json.json").write_text("[0.1, 90]")
    with pytest.raises(ValueError, match=r"scalefactors_json\.json: expected a JSON object"):
        read_spaceranger(outs)


def test_spaceranger_16bit_grey_png_not_white(tmp_path):
    img = np.full((300, 250), 20000, np.uint16)
    img[:, :100] = 50000
    outs = write_outs(tmp_path, image=img)
    a = read_spaceranger(outs)
    hires = a.uns["spatial"][next(iter(a.uns["spatial"]))]["images"]["hires"]
    assert hires.dtype == np.uint8 and hires.shape == (300, 250, 3)
    assert hires[0, 200, 0] == round(20000 / 257) and hires[0, 0, 0] == round(50000 / 257)
    assert (hires < 255).all(), "a 16-bit image clipped to 8 bits turns white"


def test_spaceranger_one_pixel_image_refused(tmp_path):
    outs = write_outs(tmp_path, image=np.full((1, 1, 3), 200, np.uint8),
                      sf={"tissue_hires_scalef": 1e-4, "spot_diameter_fullres": 90.0})
    with pytest.raises(ValueError, match=r"tissue_hires_image\.png: hires image is 1x1 px"):
        read_spaceranger(outs)


def test_spaceranger_spots_outside_hires_image(tmp_path):
    outs = write_outs(tmp_path, image=np.full((120, 120, 3), 200, np.uint8))   # spots at 80..140 px
    with pytest.raises(ValueError, match=r"tissue_hires_image\.png: hires image is 120x120 px but \d+ spot centre"):
        read_spaceranger(outs)
    outs = write_outs(tmp_path / "b", image=np.full((50, 50, 3), 200, np.uint8))
    with pytest.raises(ValueError, match=r"hires image is 50x50 px but every spot centre"):
        read_spaceranger(outs)


def test_headerless_annotation_keeps_first_row(tmp_path):
    rows = [f"AAAC{i:04d}-1,{'invasive cancer' if i < 6 else 'connective tissue'}" for i in range(12)]
    outs = write_outs(tmp_path, annotation="\n".join(rows) + "\n")
    a = read_spaceranger(outs, annotation_csv=tmp_path / "ann.csv")
    assert a.obs["annotation"].notna().all(), "the first row of a headerless CSV is a spot, not a header"
    assert a.obs.loc["AAAC0000-1", "cancer"] == 1 and int((a.obs["cancer"] == 1).sum()) == 6


def test_annotation_with_header_still_reads(tmp_path):
    rows = ["Barcode,Pathology"] + [f"AAAC{i:04d}-1,{'invasive cancer' if i < 6 else 'connective tissue'}"
                                    for i in range(12)]
    a = read_spaceranger(write_outs(tmp_path, annotation="\n".join(rows) + "\n"), annotation_csv=tmp_path / "ann.csv")
    assert a.obs["annotation"].notna().all() and int((a.obs["cancer"] == 1).sum()) == 6


def test_annotation_barcode_twice_with_different_labels(tmp_path):
    rows = [f"AAAC{i:04d}-1,connective tissue" for i in range(12)] + ["AAAC0003-1,invasive cancer"]
    outs = write_outs(tmp_path, annotation="\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"ann\.csv: barcode 'AAAC0003-1' is listed twice with different labels: "
                                         r"lines 4 .* and 13"):
        read_spaceranger(outs, annotation_csv=tmp_path / "ann.csv")


# ------------------------------------------------------------------ her2st layout


SPOTS = [(x, y) for y in range(10, 13) for x in range(5, 9)]


def her2st_root(tmp: Path, selection: str | None = None, image=None) -> Path:
    root = tmp / "st"
    for d in ("counts", "spots"):
        (root / d).mkdir(parents=True, exist_ok=True)
    genes = ["ERBB2", "KRT19", "COL1A1"]
    with gzip.open(root / "counts" / "S1.tsv.gz", "wt") as f:
        f.write("\t".join([""] + genes) + "\n")
        f.write("".join("\t".join([f"{x}x{y}"] + [str((i + j) % 4 + 1) for j in range(3)]) + "\n"
                        for i, (x, y) in enumerate(SPOTS)))
    if selection is None:
        selection = "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n" + "".join(
            f"{x}\t{y}\t{x}\t{y}\t{100 * x}\t{100 * y}\t1\n" for x, y in SPOTS)
    (root / "spots" / "S1_selection.tsv").write_text(selection)
    if image is not None:
        from PIL import Image
        (root / "images").mkdir()
        Image.fromarray(image).save(root / "images" / "S1.png")
    return root


def selection(rows):
    return "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows)


def test_her2st_unselected_spots_dropped_and_logged(tmp_path):
    rows = [(x, y, x, y, 100 * x, 100 * y, 0 if (x, y) in SPOTS[:2] else 1) for x, y in SPOTS]
    with pytest.warns(UserWarning, match=r"S1_selection\.tsv: 2 spot\(s\) marked selected = 0 dropped.*'5x10'"):
        a = read_her2st(her2st_root(tmp_path, selection(rows)), "S1")
    assert a.n_obs == len(SPOTS) - 2 and "5x10" not in a.obs_names and "6x10" not in a.obs_names


def test_her2st_selected_flag_out_of_range(tmp_path):
    rows = [(x, y, x, y, 100 * x, 100 * y, 2 if i == 4 else 1) for i, (x, y) in enumerate(SPOTS)]
    with pytest.raises(ValueError, match=r"S1_selection\.tsv: row 6: selected = '2'; expected 1 .* or 0"):
        read_her2st(her2st_root(tmp_path, selection(rows)), "S1")


def test_her2st_spot_listed_twice_with_different_positions(tmp_path):
    rows = [(x, y, x, y, 100 * x, 100 * y, 1) for x, y in SPOTS] + [(6, 11, 6, 11, 999, 1111, 1)]
    with pytest.raises(ValueError, match=r"S1_selection\.tsv: spot 6x11 is listed twice with different pixel "
                                         r"positions: rows 7 \(600, 1100\) and 14 \(999, 1111\)"):
        read_her2st(her2st_root(tmp_path, selection(rows)), "S1")


def test_her2st_spot_listed_twice_identically_is_fine(tmp_path):
    rows = [(x, y, x, y, 100 * x, 100 * y, 1) for x, y in SPOTS] + [(6, 11, 6, 11, 600, 1100, 1)]
    a = read_her2st(her2st_root(tmp_path, selection(rows)), "S1")
    assert a.n_obs == len(SPOTS)


def test_her2st_16bit_grey_image_not_white(tmp_path):
    img = np.full((1400, 1000), 25000, np.uint16)
    a = read_her2st(her2st_root(tmp_path, image=img), "S1")
    hires = a.uns["spatial"]["S1"]["images"]["hires"]
    assert hires.dtype == np.uint8 and int(hires[0, 0, 0]) == round(25000 / 257)


def test_her2st_one_pixel_image_refused(tmp_path):
    with pytest.raises(ValueError, match=r"S1\.png.*outside the image"):
        read_her2st(her2st_root(tmp_path, image=np.full((1, 1, 3), 200, np.uint8)), "S1")


def test_her2st_all_spots_unselected(tmp_path):
    rows = [(x, y, x, y, 100 * x, 100 * y, 0) for x, y in SPOTS]
    with pytest.raises(ValueError, match=r"every spot is marked selected = 0"), pytest.warns(UserWarning):
        read_her2st(her2st_root(tmp_path, selection(rows)), "S1")


# ------------------------------------------------------------------ through the CLI: one clear line


def test_cli_info_on_lognormalised_h5ad(tmp_path):
    from typer.testing import CliRunner
    from spagraph.cli import app
    a = raw_slice()
    a.X = lognorm(a.X)
    p = write_h5ad(tmp_path, a)
    res = CliRunner().invoke(app, ["info", str(p)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "X looks log-normalised" in res.output and "bad.h5ad" in res.output
