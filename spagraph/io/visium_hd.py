"""10x Visium HD (Space Ranger binned outputs) -> a slice in spagraph's convention, at a bin size the
user chooses.

Files read under ``outs/binned_outputs/square_{002,008,016}um/`` (or any ``square_XXXum`` Space
Ranger wrote)::

    filtered_feature_bc_matrix.h5      10x h5 (or the mtx folder filtered_feature_bc_matrix/)
    spatial/tissue_positions.parquet   barcode, in_tissue, array_row, array_col, pxl_row_in_fullres,
                                       pxl_col_in_fullres (tissue_positions.csv accepted too)
    spatial/scalefactors_json.json     tissue_hires_scalef, tissue_lowres_scalef, spot_diameter_fullres,
                                       bin_size_um, microns_per_pixel
    spatial/tissue_hires_image.png, tissue_lowres_image.png   (optional)

Memory: the matrix stays sparse from the h5 to ``X`` (checks look at stored values only) and the
positions are joined by index, so an 8 um whole slide (~500k bins) costs its non-zeros plus a few
arrays of length n_bins; training takes such slices through the tile path.

Why hand-written and not ``spatialdata_io.visium_hd``: that reader builds a SpatialData object
with every bin size and the full-resolution image (and needs the optional ``spatial`` extra);
spagraph needs one bin size as an AnnData in its convention. Parsing is scanpy's and pandas'.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

import anndata as ad
import numpy as np
import pandas as pd

from spagraph.io._checks import sum_duplicate_genes, unique_spots
from spagraph.io._tenx import check_sparse_counts, find_10x_matrix, read_10x_matrix, read_json, read_parquet_or_csv
from spagraph.io.labels import LabelSchema

log = logging.getLogger("spagraph")

POS_COLS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
_SQ = re.compile(r"^square_(\d{3})um$")


def available_bins(path: Path) -> list[int]:
    """Bin sizes (um) found under a Visium HD ``outs/`` (or ``binned_outputs/``)."""
    root = _binned_root(Path(path))
    if root is None:
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _SQ.match(p.name)))


def _binned_root(path: Path) -> Optional[Path]:
    for cand in (path / "binned_outputs", path / "outs" / "binned_outputs", path):
        if cand.is_dir() and any(_SQ.match(p.name) for p in cand.iterdir() if p.is_dir()):
            return cand
    return None


def is_visium_hd_dir(path: Path) -> bool:
    path = Path(path)
    if _SQ.match(path.name) and (path / "spatial").is_dir():
        return True
    return path.is_dir() and _binned_root(path) is not None


def read_visium_hd(path: str | Path, bin_um: Optional[int] = None, annotation: str | Path | None = None,
                   label_schema: LabelSchema | dict | None = None, library_id: Optional[str] = None) -> ad.AnnData:
    """Read one bin size of a Visium HD Space Ranger output.

    Parameters
    ----------
    path : ``outs/`` (holding ``binned_outputs/``), ``binned_outputs/``, the run folder above ``outs/``,
        or one ``square_XXXum/`` folder (then ``bin_um`` must match it or be left at its default).
    bin_um : bin size in microns: 2, 8 or 16 (or any ``square_XXXum`` present); default 16, or the
        size of the ``square_XXXum/`` folder given.
    annotation : optional ``barcode,label`` CSV, or region polygons (GeoJSON in full-resolution pixels,
        spagraph.io.polygons); label_schema maps its labels.

    Returns
    -------
    AnnData (docs/conventions.md): X CSR float32 counts, ``obsm["spatial"]`` bin centres in full-resolution
    pixels, ``uns["spatial"][lib]`` hires / lowres images + scale factors, ``uns["spagraph_slice"]`` with
    ``platform="visium_hd"``, ``bin_um``, ``microns_per_pixel``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Visium HD output not found: {path}")
    m = _SQ.match(path.name)
    if m:
        folder = path
        if bin_um is not None and int(m.group(1)) != int(bin_um):
            raise ValueError(f"{path} holds {int(m.group(1))} um bins, not bin_um={bin_um}")
        bin_um = int(m.group(1))
    else:
        bin_um = 16 if bin_um is None else bin_um
        root = _binned_root(path)
        if root is None:
            raise FileNotFoundError(f"{path}: no binned_outputs/square_XXXum/ folder (is this a Visium HD outs/?)")
        folder = root / f"square_{int(bin_um):03d}um"
        if not folder.is_dir():
            raise FileNotFoundError(f"{path}: no {int(bin_um)} um bins (binned_outputs/{folder.name}/ missing); "
                                    f"bin sizes present: {available_bins(root)} um")
    src = find_10x_matrix(folder, "filtered_feature_bc_matrix")
    mat = read_10x_matrix(src)
    unique_spots(mat.obs_names, src)
    gene = mat.var["feature_types"].astype(str).to_numpy() == "Gene Expression"
    if not gene.any():
        raise ValueError(f"{src}: no feature of type 'Gene Expression'")
    X = check_sparse_counts(mat.X[:, gene] if not gene.all() else mat.X, src, mat.obs_names, mat.var_names[gene])
    X, genes = sum_duplicate_genes(X, mat.var_names[gene], src)
    spatial_dir = folder / "spatial"
    pos_file = next((p for p in (spatial_dir / "tissue_positions.parquet", spatial_dir / "tissue_positions.csv")
                     if p.exists()), None)
    if pos_file is None:
        raise FileNotFoundError(f"{spatial_dir}: tissue_positions.parquet / tissue_positions.csv not found")
    pos = read_parquet_or_csv(pos_file, POS_COLS, "tissue positions")
    bcs = pos["barcode"].map(lambda v: v.decode() if isinstance(v, bytes) else v).astype(str)
    idx = pd.Index(bcs).get_indexer(mat.obs_names)
    if (idx < 0).any():
        miss = mat.obs_names[idx < 0]
        raise ValueError(f"{pos_file}: {len(miss)} barcode(s) of the matrix have no position, e.g. {list(miss[:3])}")
    try:
        xy = np.c_[pos["pxl_col_in_fullres"].to_numpy(dtype=np.float64)[idx],
                   pos["pxl_row_in_fullres"].to_numpy(dtype=np.float64)[idx]]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{pos_file}: pxl_row_in_fullres / pxl_col_in_fullres must be numbers: {e}") from None
    sf_file = spatial_dir / "scalefactors_json.json"
    sf = read_json(sf_file, "scale factors")
    for k in ("tissue_hires_scalef", "spot_diameter_fullres"):
        if k not in sf:
            raise ValueError(f"{sf_file}: missing key {k!r}")
    if "bin_size_um" in sf and abs(float(sf["bin_size_um"]) - float(bin_um)) > 1e-6:
        raise ValueError(f"{sf_file}: bin_size_um is {sf['bin_size_um']}, but the folder is {folder.name}")
    mpp = float(sf.get("microns_per_pixel") or float(bin_um) / float(sf["spot_diameter_fullres"]))
    out = ad.AnnData(X=X, obs=pd.DataFrame(index=mat.obs_names.copy()), var=pd.DataFrame(index=genes))
    out.obs["array_row"] = pos["array_row"].to_numpy()[idx]
    out.obs["array_col"] = pos["array_col"].to_numpy()[idx]
    out.obsm["spatial"] = xy
    images = {}
    from spagraph.io.validate import read_image_rgb8
    for key, name in (("hires", "tissue_hires_image.png"), ("lowres", "tissue_lowres_image.png")):
        p = spatial_dir / name
        if p.exists():
            images[key] = np.asarray(read_image_rgb8(p))
    run = folder.parent.parent.parent.name if folder.parent.name == "binned_outputs" else folder.name
    lib = library_id or (run if run and run != "outs" else folder.name)
    out.uns["spatial"] = {lib: {"images": images, "scalefactors": {
        "tissue_hires_scalef": float(sf["tissue_hires_scalef"]),
        "tissue_lowres_scalef": float(sf.get("tissue_lowres_scalef", sf["tissue_hires_scalef"])),
        "spot_diameter_fullres": float(sf["spot_diameter_fullres"])}}}
    out.uns["spagraph_slice"] = {"library_id": lib, "platform": "visium_hd", "source": str(folder),
                                 "has_image": bool(images), "image_kind": "he" if images else "none",
                                 "bin_um": float(bin_um), "spot_size_um": float(bin_um), "microns_per_pixel": mpp}
    from spagraph.io.polygons import attach_polygon_labels, is_polygon_file
    from spagraph.io.readers import attach_annotation_csv
    if annotation is not None and is_polygon_file(annotation):
        attach_polygon_labels(out, annotation, label_schema, lambda r: np.asarray(r) / mpp)
    else:
        attach_annotation_csv(out, annotation, label_schema)
    log.info("%s: %d bins of %d um x %d genes", folder, out.n_obs, bin_um, out.n_vars)
    from spagraph.io.validate import check_slice
    return check_slice(out, source=folder, files={"counts": src, "positions": pos_file, "scalefactors": sf_file,
                                                  "labels": annotation, "image": spatial_dir / "tissue_hires_image.png"})
