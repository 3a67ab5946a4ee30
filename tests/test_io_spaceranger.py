"""Space Ranger outs/ (h5 and mtx), .h5ad validation, read_slice dispatch, describe_slice.
Each test writes a tiny fake outs/ folder in tmp."""
from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spagraph.io import describe_slice, read_h5ad, read_slice, read_spaceranger

GENES = ["ERBB2", "KRT19", "COL1A1", "PTPRC", "ACTB"]


def _counts(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(3.0, size=(n, len(GENES))).astype(np.int32)


def _barcodes(n):
    return [f"AAAC{i:04d}-1" for i in range(n)]


def write_outs(root: Path, fmt: str = "mtx", n: int = 12, genes=GENES, positions: str = "new",
               image: bool = True, X=None) -> Path:
    """A minimal Space Ranger outs/: matrix (h5 or mtx), spatial/ positions, scale factors, image."""
    outs = root / "outs"
    (outs / "spatial").mkdir(parents=True)
    X = _counts(n) if X is None else X
    bcs = _barcodes(n)
    if fmt == "mtx":
        m = outs / "filtered_feature_bc_matrix"
        m.mkdir()
        with gzip.open(m / "barcodes.tsv.gz", "wt") as f:
            f.write("\n".join(bcs) + "\n")
        with gzip.open(m / "features.tsv.gz", "wt") as f:
            f.write("".join(f"ENSG{i:05d}\t{g}\tGene Expression\n" for i, g in enumerate(genes)))
        coo = sp.coo_matrix(X.T)   # features x barcodes
        with gzip.open(m / "matrix.mtx.gz", "wt") as f:
            f.write("%%MatrixMarket matrix coordinate integer general\n")
            f.write(f"{len(genes)} {n} {coo.nnz}\n")
            f.write("".join(f"{r + 1} {c + 1} {v}\n" for r, c, v in zip(coo.row, coo.col, coo.data)))
    else:
        import h5py
        csc = sp.csc_matrix(X.T)   # features x barcodes, one column per barcode
        with h5py.File(outs / "filtered_feature_bc_matrix.h5", "w") as f:
            g = f.create_group("matrix")
            g["barcodes"] = np.array(bcs, dtype="S")
            g["data"] = csc.data.astype(np.int32)
            g["indices"] = csc.indices.astype(np.int64)
            g["indptr"] = csc.indptr.astype(np.int64)
            g["shape"] = np.array([len(genes), n], dtype=np.int32)
            ft = g.create_group("features")
            ft["id"] = np.array([f"ENSG{i:05d}" for i in range(len(genes))], dtype="S")
            ft["name"] = np.array(genes, dtype="S")
            ft["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
            ft["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")
            ft["_all_tag_keys"] = np.array([b"genome"])
    rows, cols = np.divmod(np.arange(n), 4)
    pos = pd.DataFrame({"barcode": bcs + ["TTTT0000-1"], "in_tissue": 1,
                        "array_row": list(rows) + [9], "array_col": list(cols * 2) + [9],
                        "pxl_row_in_fullres": list(1000 + 200 * rows) + [5000],
                        "pxl_col_in_fullres": list(800 + 200 * cols) + [5000]})
    if positions == "new":
        pos.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    else:
        pos.to_csv(outs / "spatial" / "tissue_positions_list.csv", index=False, header=False)
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(
        {"tissue_hires_scalef": 0.1, "tissue_lowres_scalef": 0.03, "spot_diameter_fullres": 90.0,
         "fiducial_diameter_fullres": 140.0}))
    if image:
        from PIL import Image
        Image.fromarray(np.full((300, 250, 3), 200, np.uint8)).save(outs / "spatial" / "tissue_hires_image.png")
    return outs


@pytest.mark.parametrize("fmt,positions", [("mtx", "old"), ("h5", "new")])
def test_read_spaceranger_convention(tmp_path, fmt, positions):
    outs = write_outs(tmp_path / "s1", fmt=fmt, positions=positions)
    ann = tmp_path / "ann.csv"
    labels = ["Invasive cancer", "connective tissue ", "undetermined"] * 4
    pd.DataFrame({"barcode": _barcodes(12), "label": labels}).to_csv(ann, index=False)
    a = read_spaceranger(outs, annotation_csv=ann)
    assert a.shape == (12, 5) and list(a.obs_names) == _barcodes(12) and list(a.var_names) == GENES
    assert a.X.format == "csr" and a.X.dtype == np.float32
    assert np.array_equal(a.X.toarray(), _counts(12))
    xy = a.obsm["spatial"]
    assert xy.dtype == np.float64
    rows, cols = np.divmod(np.arange(12), 4)
    assert np.array_equal(xy, np.c_[800 + 200 * cols, 1000 + 200 * rows])      # (x, y) = (col, row) pixels
    lib = a.uns["spatial"][a.uns["spagraph_slice"]["library_id"]]
    assert lib["images"]["hires"].shape == (300, 250, 3)
    assert lib["scalefactors"] == {"tissue_hires_scalef": 0.1, "tissue_lowres_scalef": 0.03,
                                   "spot_diameter_fullres": 90.0}
    assert a.uns["spagraph_slice"]["platform"] == "visium"
    assert a.obs["cancer"].dtype == "Int8"
    assert a.obs["cancer"].tolist()[:3] == [1, 0, pd.NA]
    assert list(a.obs["label_class"][:2]) == ["invasive cancer", "connective tissue"]


def test_spaceranger_without_image_or_labels(tmp_path):
    outs = write_outs(tmp_path / "s", image=False)
    a = read_spaceranger(outs)
    assert a.uns["spagraph_slice"]["has_image"] is False
    assert a.obs["cancer"].isna().all()


@pytest.mark.parametrize("fmt", ["h5", "mtx"])
def test_duplicate_gene_names_summed_with_warning(tmp_path, fmt):
    genes = ["ERBB2", "KRT19", "ERBB2", "PTPRC", "ACTB"]
    outs = write_outs(tmp_path / "s", fmt=fmt, genes=genes)
    with pytest.warns(UserWarning, match="duplicated gene name.*ERBB2"):
        a = read_spaceranger(outs)       # anndata's own "not unique" warning may come too
    X = _counts(12)
    assert a.var_names.is_unique and list(a.var_names) == ["ERBB2", "KRT19", "PTPRC", "ACTB"]
    assert np.array_equal(a[:, "ERBB2"].X.toarray().ravel(), X[:, 0] + X[:, 2])


def test_annotation_csv_sharing_no_spot(tmp_path):
    outs = write_outs(tmp_path / "s")
    ann = tmp_path / "ann.csv"
    pd.DataFrame({"barcode": ["GGGG-1", "CCCC-1"], "label": ["invasive cancer"] * 2}).to_csv(ann, index=False)
    with pytest.raises(ValueError, match=r"ann\.csv.*no barcode matches"):
        read_spaceranger(outs, annotation_csv=ann)


def test_read_slice_dispatch_and_describe(tmp_path, synthetic_slice):
    outs = write_outs(tmp_path / "vis")
    a = read_slice(tmp_path / "vis")                  # the folder holding outs/
    b = read_slice(outs)
    assert a.shape == b.shape == (12, 5)
    p = tmp_path / "syn.h5ad"
    synthetic_slice.write_h5ad(p)
    c = read_slice(p)
    assert c.shape == synthetic_slice.shape and c.obs["cancer"].dtype == "Int8"
    assert c.obs["cancer"].equals(synthetic_slice.obs["cancer"])
    text = describe_slice(c)
    n_canc = int((synthetic_slice.obs["cancer"] == 1).sum())
    assert "300 spots" in text and f"cancer: {n_canc}" in text and "hires" in text
    assert "labels: none" in describe_slice(read_spaceranger(outs))
    with pytest.raises(ValueError, match="not a recognised slice"):
        read_slice(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothere"):
        read_slice(tmp_path / "nothere")


def test_read_h5ad_unreadable_or_missing(tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match=r"bad\.h5ad.*not a readable"):
        read_h5ad(bad)
    with pytest.raises(FileNotFoundError, match="missing.h5ad"):
        read_h5ad(tmp_path / "missing.h5ad")
