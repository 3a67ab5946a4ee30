"""Write small Xenium / Visium HD / SpatialData fixtures in each vendor's documented layout, from
one synthetic tissue whose truth (tumour or not, at every point in microns) is known.

Layouts written (file names, columns, units, h5 structure as 10x Genomics documents them):

Xenium output bundle (Xenium Onboard Analysis 2.x)::

    experiment.xenium              JSON; "pixel_size" = microns per morphology-image pixel (0.2125)
    cell_feature_matrix.h5         10x feature-barcode h5: matrix/{barcodes,data,indices,indptr,shape},
                                   matrix/features/{_all_tag_keys,feature_type,genome,id,name};
                                   feature_type in "Gene Expression", "Negative Control Probe",
                                   "Negative Control Codeword", "Unassigned Codeword", "Deprecated Codeword"
    cell_feature_matrix/           the same matrix as barcodes.tsv.gz / features.tsv.gz / matrix.mtx.gz
    cells.parquet, cells.csv.gz    cell_id (bytes in parquet), x_centroid, y_centroid (microns), transcript_counts,
                                   control_probe_counts, genomic_control_counts, control_codeword_counts,
                                   unassigned_codeword_counts, deprecated_codeword_counts, total_counts,
                                   cell_area, nucleus_area (square microns), nucleus_count, segmentation_method
    morphology_focus/ch0000_dapi.ome.tif   (optional) uint16 DAPI, pixel = pixel_size microns
    <name>_he_image.ome.tif + <name>_he_imagealignment.csv   (optional) post-Xenium H&E and the 3x3
                                   affine mapping H&E pixels to morphology-image pixels

Visium HD Space Ranger ``outs/binned_outputs/square_{002,008,016}um/``::

    filtered_feature_bc_matrix.h5  10x h5 (barcodes ``s_016um_00012_00034-1``)
    spatial/tissue_positions.parquet   barcode, in_tissue, array_row, array_col,
                                   pxl_row_in_fullres, pxl_col_in_fullres (every bin of the grid)
    spatial/scalefactors_json.json spot_diameter_fullres, bin_size_um, microns_per_pixel,
                                   tissue_hires_scalef, tissue_lowres_scalef, fiducial_diameter_fullres,
                                   regist_target_img_scalef
    spatial/tissue_hires_image.png, spatial/tissue_lowres_image.png

Truth: ``Tissue.is_tumour(xy_um)``; cell labels (``cell_id,label``) and bin labels
(``barcode,label``) are written as annotation CSVs from it.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spagraph.io.synthetic import HOUSEKEEPING, IMMUNE_GENES, STROMA_GENES, TUMOUR_GENES, _regions

XENIUM_PIXEL_UM = 0.2125
HD_MICRONS_PER_PIXEL = 0.2738
PANEL = TUMOUR_GENES + STROMA_GENES + IMMUNE_GENES + HOUSEKEEPING + [f"GENE{i:04d}" for i in range(40)]


@dataclass
class Tissue:
    """A tissue section in microns: tumour blobs with irregular borders, an immune margin, stroma."""
    extent: np.ndarray            # (width, height) microns
    seed: int

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        self._field = _regions(rng, None, self.extent, 100.0, 2)
        a, b, c = len(TUMOUR_GENES), len(STROMA_GENES), len(IMMUNE_GENES)
        G = len(PANEL)
        self.base = rng.lognormal(-1.0, 0.8, G)
        self.base[a + b + c:a + b + c + len(HOUSEKEEPING)] *= 10
        prog = np.zeros((3, G))
        prog[0, :a] = rng.uniform(1.0, 2.2, a)
        prog[1, a:a + b] = rng.uniform(1.0, 2.2, b)
        prog[2, a + b:a + b + c] = rng.uniform(1.0, 2.5, c)
        prog[:, a + b + c + len(HOUSEKEEPING):] = rng.normal(0, 0.15, (3, G - a - b - c - len(HOUSEKEEPING)))
        self.prog = prog

    def field(self, xy_um: np.ndarray) -> np.ndarray:
        return self._field(np.asarray(xy_um, float))

    def is_tumour(self, xy_um: np.ndarray) -> np.ndarray:
        return self.field(xy_um) > 0

    def in_tissue(self, xy_um: np.ndarray) -> np.ndarray:
        """An elliptical section inside the extent."""
        c = self.extent / 2
        d = (np.asarray(xy_um, float) - c) / (0.48 * self.extent)
        return (d ** 2).sum(1) <= 1.0

    def cell_type(self, xy_um: np.ndarray, rng) -> np.ndarray:
        """0 tumour, 1 stroma, 2 immune (margin + a few scattered)."""
        f = self.field(xy_um)
        t = np.where(f > 0, 0, 1)
        imm = (f <= 0) & (((np.abs(f) < 0.2) & (rng.random(len(f)) < 0.5)) | (rng.random(len(f)) < 0.05))
        t[imm] = 2
        return t

    def expression(self, types: np.ndarray, library: np.ndarray, rng) -> sp.csr_matrix:
        """Negative-binomial counts (units x panel genes) for units of the given types/library sizes.
        ``types`` may be (n,) hard types or (n, 3) mixing weights."""
        w = np.eye(3)[types] if types.ndim == 1 else types
        logmu = np.log(self.base)[None, :] + np.log(w @ np.exp(self.prog) + 1e-9)
        mu = np.exp(logmu)
        mu /= mu.sum(1, keepdims=True)
        lam = rng.gamma(2.0, library[:, None] * mu / 2.0)
        return sp.csr_matrix(rng.poisson(lam).astype(np.int32))


def label_of(tumour: np.ndarray, types: np.ndarray | None = None) -> np.ndarray:
    lab = np.where(tumour, "invasive cancer", "connective tissue").astype(object)
    if types is not None:
        lab[(~tumour) & (types == 2)] = "immune infiltrate"
    return lab


# ----------------------------------------------------------------------------- 10x h5 / mtx
def write_10x_h5(path: Path, X: sp.spmatrix, barcodes, names, feature_types, ids=None) -> None:
    """10x Genomics feature-barcode matrix h5 (the layout Cell Ranger / Space Ranger / Xenium write)."""
    import h5py
    csc = sp.csc_matrix(X.T)                         # features x barcodes, CSC = one column per barcode
    ids = list(ids) if ids is not None else [f"ENSG{i:08d}" for i in range(len(names))]
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(list(barcodes), dtype="S"))
        g.create_dataset("data", data=csc.data.astype(np.int32), compression="gzip")
        g.create_dataset("indices", data=csc.indices.astype(np.int64), compression="gzip")
        g.create_dataset("indptr", data=csc.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([len(names), X.shape[0]], dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        ft.create_dataset("feature_type", data=np.array(list(feature_types), dtype="S"))
        ft.create_dataset("genome", data=np.array([b"GRCh38"] * len(names)))
        ft.create_dataset("id", data=np.array(ids, dtype="S"))
        ft.create_dataset("name", data=np.array(list(names), dtype="S"))


def write_10x_mtx(folder: Path, X: sp.spmatrix, barcodes, names, feature_types, ids=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(ids) if ids is not None else [f"ENSG{i:08d}" for i in range(len(names))]
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.write("".join(f"{b}\n" for b in barcodes))
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.write("".join(f"{i}\t{n}\t{t}\n" for i, n, t in zip(ids, names, feature_types)))
    coo = sp.coo_matrix(X.T)
    with gzip.open(folder / "matrix.mtx.gz", "wt") as f:
        f.write("%%MatrixMarket matrix coordinate integer general\n")
        f.write(f"{len(names)} {X.shape[0]} {coo.nnz}\n")
        f.write("".join(f"{r + 1} {c + 1} {v}\n" for r, c, v in zip(coo.row, coo.col, coo.data)))


def _he_like(tumour: np.ndarray, tissue: np.ndarray, rng) -> np.ndarray:
    """A crude H&E-like RGB from masks (pink stroma, purple tumour, white glass)."""
    img = np.empty(tumour.shape + (3,), np.float32)
    img[:] = (234, 170, 200)
    img[tumour] = (150, 90, 160)
    img[~tissue] = (243, 241, 244)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- Xenium
CONTROL_TYPES = {"Negative Control Probe": ("NegControlProbe_", 6), "Negative Control Codeword": ("NegControlCodeword_", 5),
                 "Unassigned Codeword": ("UnassignedCodeword_", 8), "Deprecated Codeword": ("DeprecatedCodeword_", 2)}


def write_xenium(root: Path, extent_um=(1600.0, 1300.0), cells_per_100um2: float = 0.35, seed: int = 0,
                 matrix: str = "h5", cells: str = "parquet", morphology: bool = False, he: bool = False,
                 he_scale: float = 0.5, he_angle_deg: float = 0.0, tissue: Tissue | None = None) -> dict:
    """A Xenium output bundle under ``root``. Returns the truth: ``tissue`` (Tissue), ``cells``
    (DataFrame cell_id, x_um, y_um, type, tumour), ``controls`` (dict type -> (n_features, total counts)),
    ``annotation`` (path of the cell_id,label CSV), ``alignment`` (3x3 H&E px -> morphology px) when ``he``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 11])
    tissue = tissue or Tissue(np.asarray(extent_um, float), seed)
    ext = tissue.extent
    n_try = int(cells_per_100um2 * ext[0] * ext[1] / 100.0 / 0.78)
    xy = rng.uniform([0, 0], ext, size=(n_try, 2))
    xy = xy[tissue.in_tissue(xy)]
    n = len(xy)
    types = tissue.cell_type(xy, rng)
    lib = rng.lognormal(np.log(45), 0.4, n)
    Xg = tissue.expression(types, lib, rng)
    # control features: sparse low counts
    blocks, names, ftypes, controls = [Xg], list(PANEL), ["Gene Expression"] * len(PANEL), {}
    for t, (prefix, k) in CONTROL_TYPES.items():
        C = sp.csr_matrix(rng.poisson(0.02, (n, k)).astype(np.int32))
        blocks.append(C)
        names += [f"{prefix}{i:04d}" for i in range(k)]
        ftypes += [t] * k
        controls[t] = (k, int(C.sum()))
    X = sp.hstack(blocks).tocsr()
    ids = [f"ENSG{i:08d}" if t == "Gene Expression" else nm for i, (nm, t) in enumerate(zip(names, ftypes))]
    alphabet = np.array(list("abcdefghijklmnop"))
    cell_ids = ["".join(alphabet[rng.integers(0, 16, 8)]) + "-1" for _ in range(n)]
    while len(set(cell_ids)) < n:     # vanishingly rare; keep ids unique
        cell_ids = [c if i == 0 else f"{c[:-2]}{i}-1" for i, c in enumerate(cell_ids)]
    if matrix in ("h5", "both"):
        write_10x_h5(root / "cell_feature_matrix.h5", X, cell_ids, names, ftypes, ids)
    if matrix in ("mtx", "both"):
        write_10x_mtx(root / "cell_feature_matrix", X, cell_ids, names, ftypes, ids)
    ctrl = {t: np.asarray(X[:, [i for i, f in enumerate(ftypes) if f == t]].sum(1)).ravel() for t in CONTROL_TYPES}
    tx = np.asarray(Xg.sum(1)).ravel()
    area = rng.uniform(40, 120, n)
    df = pd.DataFrame({
        "cell_id": cell_ids, "x_centroid": xy[:, 0], "y_centroid": xy[:, 1],
        "transcript_counts": tx.astype(np.int64),
        "control_probe_counts": ctrl["Negative Control Probe"].astype(np.int64),
        "genomic_control_counts": np.zeros(n, np.int64),
        "control_codeword_counts": ctrl["Negative Control Codeword"].astype(np.int64),
        "unassigned_codeword_counts": ctrl["Unassigned Codeword"].astype(np.int64),
        "deprecated_codeword_counts": ctrl["Deprecated Codeword"].astype(np.int64),
        "total_counts": (tx + sum(ctrl.values())).astype(np.int64),
        "cell_area": area, "nucleus_area": area * 0.4, "nucleus_count": np.ones(n, np.int64),
        "segmentation_method": "Segmented by boundary stain (ATP1A1+CD45+E-Cadherin)"})
    if cells in ("parquet", "both"):
        # XOA >= 1.3 stores cell_id in parquet as a binary (bytes) column; the CSV holds text
        df.assign(cell_id=[c.encode() for c in cell_ids]).to_parquet(root / "cells.parquet", index=False)
    if cells in ("csv", "both"):
        df.to_csv(root / "cells.csv.gz", index=False, compression="gzip")
    exp = {"major_version": 5, "minor_version": 0, "run_name": "synthetic", "region_name": f"region_{seed}",
           "preservation_method": "FFPE", "num_cells": n, "panel_name": "synthetic breast panel",
           "panel_organism": "Human", "pixel_size": XENIUM_PIXEL_UM, "analysis_sw_version": "xenium-2.0.0.10",
           "images": {"morphology_focus_filepath": "morphology_focus/ch0000_dapi.ome.tif"}}
    (root / "experiment.xenium").write_text(json.dumps(exp, indent=2))
    truth = {"tissue": tissue, "controls": controls,
             "cells": pd.DataFrame({"cell_id": cell_ids, "x_um": xy[:, 0], "y_um": xy[:, 1], "type": types,
                                    "tumour": types == 0})}
    ann = root.parent / f"{root.name}_cell_labels.csv"
    pd.DataFrame({"cell_id": cell_ids, "label": label_of(types == 0, types)}).to_csv(ann, index=False)
    truth["annotation"] = ann
    shape_px = np.ceil(ext / XENIUM_PIXEL_UM).astype(int)   # (w, h)
    if morphology:
        import tifffile
        (root / "morphology_focus").mkdir(exist_ok=True)
        yy, xx = np.mgrid[0:shape_px[1], 0:shape_px[0]]
        pts = np.c_[xx.ravel(), yy.ravel()] * XENIUM_PIXEL_UM
        dapi = np.where(tissue.in_tissue(pts), 2000, 100).reshape(shape_px[1], shape_px[0]).astype(np.uint16)
        tifffile.imwrite(root / "morphology_focus" / "ch0000_dapi.ome.tif", dapi[None], photometric="minisblack",
                         metadata={"axes": "CYX", "PhysicalSizeX": XENIUM_PIXEL_UM, "PhysicalSizeY": XENIUM_PIXEL_UM})
    if he:
        import tifffile
        # H&E pixel -> morphology pixel: scale (H&E pixels are 1/he_scale morphology pixels), rotation, shift
        a = np.deg2rad(he_angle_deg)
        s = 1.0 / he_scale
        M = np.array([[s * np.cos(a), -s * np.sin(a), 150.0], [s * np.sin(a), s * np.cos(a), -80.0], [0, 0, 1]])
        corners = np.array([[0, 0, 1], [shape_px[0], 0, 1], [0, shape_px[1], 1], [shape_px[0], shape_px[1], 1]])
        lo = (corners @ np.linalg.inv(M).T)[:, :2].min(0) - 10      # the H&E covers the whole Xenium region
        M = M @ np.array([[1, 0, lo[0]], [0, 1, lo[1]], [0, 0, 1]])
        corners = corners @ np.linalg.inv(M).T
        w, h = np.ceil(corners[:, :2].max(0) + 10).astype(int)
        yy, xx = np.mgrid[0:h, 0:w]
        hp = np.c_[xx.ravel(), yy.ravel(), np.ones(xx.size)] @ M.T
        um = hp[:, :2] * XENIUM_PIXEL_UM
        img = _he_like(tissue.is_tumour(um).reshape(h, w), tissue.in_tissue(um).reshape(h, w), rng)
        tifffile.imwrite(root / f"{root.name}_he_image.ome.tif", img, photometric="rgb")
        np.savetxt(root / f"{root.name}_he_imagealignment.csv", M, delimiter=",")
        truth["alignment"] = M
        truth["he_image"] = root / f"{root.name}_he_image.ome.tif"
        truth["he_alignment"] = root / f"{root.name}_he_imagealignment.csv"
    return truth


# ----------------------------------------------------------------------------- Visium HD
def write_visium_hd(outs: Path, extent_um=(1000.0, 800.0), bin_sizes=(16,), seed: int = 0, umi_per_8um: float = 30.0,
                    tissue: Tissue | None = None, image: bool = True) -> dict:
    """Space Ranger (Visium HD) ``outs/`` with ``binned_outputs/square_XXXum/`` for each bin size (multiples
    of 8 are sums of the 8 um bins, as Space Ranger sums 2 um bins). Returns ``tissue`` and, per bin size,
    ``annotation`` (barcode,label CSV path) and ``n_bins`` (in tissue)."""
    outs = Path(outs)
    rng = np.random.default_rng([seed, 23])
    tissue = tissue or Tissue(np.asarray(extent_um, float), seed)
    ext = tissue.extent
    mpp = HD_MICRONS_PER_PIXEL
    nx8, ny8 = int(ext[0] // 8), int(ext[1] // 8)
    r8, c8 = np.meshgrid(np.arange(ny8), np.arange(nx8), indexing="ij")
    r8, c8 = r8.ravel(), c8.ravel()
    xy8 = np.c_[(c8 + 0.5) * 8, (r8 + 0.5) * 8]
    types = tissue.cell_type(xy8, rng)
    inside8 = tissue.in_tissue(xy8)
    lib8 = rng.lognormal(np.log(umi_per_8um), 0.3, len(xy8))
    chunk = 50_000                                  # bounded memory for whole-slide sized fixtures
    X8 = sp.vstack([tissue.expression(types[i:i + chunk], lib8[i:i + chunk], rng)
                    for i in range(0, len(xy8), chunk)]).tocsr()
    X8 = sp.csr_matrix(X8.multiply(inside8[:, None].astype(np.int32)))
    full_w, full_h = int(ext[0] / mpp) + 1, int(ext[1] / mpp) + 1
    hires_scalef = 2000.0 / max(full_w, full_h)
    lowres_scalef = 600.0 / max(full_w, full_h)
    truth = {"tissue": tissue}
    for b in bin_sizes:
        if b % 8:
            raise ValueError("fixture bin sizes must be multiples of 8")
        k = b // 8
        rows, cols = r8 // k, c8 // k
        nr, nc = int(rows.max()) + 1, int(cols.max()) + 1
        code = rows * nc + cols
        A = sp.csr_matrix((np.ones(len(code), np.int32), (code, np.arange(len(code)))), shape=(nr * nc, len(code)))
        Xb = (A @ X8).tocsr()
        rr, cc = np.divmod(np.arange(nr * nc), nc)
        cxy = np.c_[(cc + 0.5) * b, (rr + 0.5) * b]
        in_t = tissue.in_tissue(cxy)
        bcs = np.array([f"s_{b:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rr, cc)])
        d = outs / "binned_outputs" / f"square_{b:03d}um"
        (d / "spatial").mkdir(parents=True, exist_ok=True)
        keep = np.flatnonzero(in_t)
        write_10x_h5(d / "filtered_feature_bc_matrix.h5", Xb[keep], bcs[keep], PANEL, ["Gene Expression"] * len(PANEL))
        pd.DataFrame({"barcode": bcs, "in_tissue": in_t.astype(np.int32), "array_row": rr.astype(np.int32),
                      "array_col": cc.astype(np.int32), "pxl_row_in_fullres": cxy[:, 1] / mpp,
                      "pxl_col_in_fullres": cxy[:, 0] / mpp}).to_parquet(d / "spatial" / "tissue_positions.parquet",
                                                                         index=False)
        sf = {"spot_diameter_fullres": b / mpp, "bin_size_um": float(b), "microns_per_pixel": mpp,
              "regist_target_img_scalef": hires_scalef, "tissue_lowres_scalef": lowres_scalef,
              "fiducial_diameter_fullres": 1000.0, "tissue_hires_scalef": hires_scalef}
        (d / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
        if image:
            from PIL import Image
            for name, s in (("tissue_hires_image.png", hires_scalef), ("tissue_lowres_image.png", lowres_scalef)):
                w, h = int(full_w * s), int(full_h * s)
                yy, xx = np.mgrid[0:h, 0:w]
                um = np.c_[xx.ravel(), yy.ravel()] / s * mpp
                img = _he_like(tissue.is_tumour(um).reshape(h, w), tissue.in_tissue(um).reshape(h, w), rng)
                Image.fromarray(img).save(d / "spatial" / name)
        ann = outs.parent / f"{outs.parent.name}_square_{b:03d}um_labels.csv"
        pd.DataFrame({"barcode": bcs[keep], "label": label_of(tissue.is_tumour(cxy[keep]))}).to_csv(ann, index=False)
        truth[b] = {"annotation": ann, "n_bins": len(keep)}
    return truth
