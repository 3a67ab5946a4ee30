"""10x Xenium output -> a slice in spagraph's convention, as pseudo-spots binned on a grid or as cells.

Files read (Xenium Onboard Analysis output bundle)::

    experiment.xenium                  JSON; ``pixel_size`` = microns per morphology-image pixel
    cell_feature_matrix.h5             10x feature-barcode h5 (or the mtx folder cell_feature_matrix/)
    cells.parquet | cells.csv.gz       cell_id, x_centroid, y_centroid (microns)
    morphology_focus/ch0000_dapi.ome.tif | morphology_focus.ome.tif | morphology_mip.ome.tif | morphology.ome.tif
                                       (optional) DAPI image, used when no H&E is given
    H&E image + alignment CSV          (optional, the user's) post-Xenium H&E and the 3x3 affine that maps
                                       H&E pixels to morphology-image pixels (Xenium Explorer's export)

Coordinates: cell centroids are microns; the full-resolution image is the H&E when given (spot
centres = inverse alignment applied to the morphology-pixel positions), else the morphology image
(spot centres = microns / pixel_size). Pseudo-spot centres are grid centres (origin at 0 um), so the
same bin size gives the same lattice on every slice.

Why hand-written and not ``spatialdata_io.xenium``: that reader needs the whole bundle (transcripts,
cell / nucleus boundaries, every image) and returns cells; spagraph needs four small files, a bin
step, the drop-and-count of control features, and must work without the optional ``spatial`` extra.
The parsing itself is scanpy's (10x h5 / mtx), pandas' (parquet / CSV) and tifffile's (OME-TIFF).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Optional

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spagraph.io._checks import sum_duplicate_genes, unique_spots
from spagraph.io._tenx import (check_sparse_counts, downscale, find_10x_matrix, read_10x_matrix, read_json, read_parquet_or_csv,
                               read_tiff_level, to_rgb_uint8)
from spagraph.io.labels import LabelSchema

log = logging.getLogger("spagraph")

GENE_TYPE = "Gene Expression"
MORPHOLOGY_FILES = ("morphology_focus/ch0000_dapi.ome.tif", "morphology_focus.ome.tif", "morphology_mip.ome.tif",
                    "morphology.ome.tif")
Grid = Literal["square", "hex", "cells"]


def is_xenium_dir(path: Path) -> bool:
    return path.is_dir() and (path / "experiment.xenium").is_file()


def bin_points(xy_um: np.ndarray, bin_um: float, grid: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign points (microns) to a square or hex lattice of pitch ``bin_um`` with its origin at 0.

    Returns ``(row, col, centre_um)`` per point. Square: cells ``bin_um`` wide. Hex: rows
    ``bin_um * sqrt(3) / 2`` apart, odd rows shifted by half a pitch; each point goes to the nearest
    centre (which is always in one of the two rows around it).
    """
    xy = np.asarray(xy_um, float)
    s = float(bin_um)
    if grid == "square":
        col = np.floor(xy[:, 0] / s).astype(np.int64)
        row = np.floor(xy[:, 1] / s).astype(np.int64)
        return row, col, np.c_[(col + 0.5) * s, (row + 0.5) * s]
    if grid != "hex":
        raise ValueError(f"grid must be 'square' or 'hex', got {grid!r}")
    dy = s * np.sqrt(3) / 2
    r0 = np.floor(xy[:, 1] / dy).astype(np.int64)
    best = None
    for r in (r0, r0 + 1):
        off = 0.5 * (r % 2)
        c = np.round(xy[:, 0] / s - off).astype(np.int64)
        cen = np.c_[(c + off) * s, r * dy]
        d = ((xy - cen) ** 2).sum(1)
        if best is None:
            best = [r, c, cen, d]
        else:
            take = d < best[3]
            best[0] = np.where(take, r, best[0])
            best[1] = np.where(take, c, best[1])
            best[2] = np.where(take[:, None], cen, best[2])
            best[3] = np.minimum(d, best[3])
    return best[0], best[1], best[2]


def read_xenium(path: str | Path, bin_um: Optional[float] = 50.0, grid: Grid = "square", min_cells: int = 1,
                annotation: str | Path | None = None, label_schema: LabelSchema | dict | None = None,
                he_image: str | Path | None = None, he_alignment: str | Path | None = None,
                pixel_size: Optional[float] = None, morphology: bool = True,
                library_id: Optional[str] = None) -> ad.AnnData:
    """Read a Xenium output folder.

    Parameters
    ----------
    path : the Xenium output folder (holds ``experiment.xenium``).
    bin_um, grid : pseudo-spots of ``bin_um`` microns on a ``"square"`` or ``"hex"`` grid (counts of the
        cells whose centroid falls in a spot are summed); ``grid="cells"`` keeps cells.
    min_cells : pseudo-spots with fewer cells are dropped (counted in ``uns``).
    annotation : CSV ``id,label``; ids are cell ids (binned: each spot takes the majority label of its
        labelled cells, ``obs["annotation_frac"]`` its share) or pseudo-spot names. Or region polygons
        (spagraph.io.polygons): GeoJSON in full-resolution pixels, or a Xenium Explorer selection CSV
        in microns; each spot takes the label of the smallest polygon holding its centre.
    he_image, he_alignment : post-Xenium H&E (TIFF / PNG / JPEG) and the 3x3 affine CSV mapping H&E
        pixels to morphology pixels; the H&E then becomes the full-resolution image.
    pixel_size : microns per morphology pixel, only when ``experiment.xenium`` lacks it.
    morphology : store a downscaled DAPI image as ``hires`` when no H&E is given.

    Returns
    -------
    AnnData in the convention of docs/conventions.md; ``uns["spagraph_slice"]`` adds ``bin_um``,
    ``grid``, ``n_cells``, ``pixel_size_um``, ``image_kind`` and ``dropped_features``
    (feature type -> {"features", "counts"}: negative-control probes / codewords, unassigned and
    deprecated codewords, which never enter ``X``).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Xenium output folder not found: {path}")
    if grid not in ("square", "hex", "cells"):
        raise ValueError(f"grid must be 'square', 'hex' or 'cells', got {grid!r}")
    if (he_image is None) != (he_alignment is None):
        raise ValueError("he_image and he_alignment go together (the H&E and its 3x3 alignment CSV)")
    keep_cells = grid == "cells" or bin_um is None
    if not keep_cells and not (bin_um and bin_um > 0):
        raise ValueError(f"bin_um must be a positive number of microns, got {bin_um!r}")
    exp_file = path / "experiment.xenium"
    exp = read_json(exp_file, "experiment.xenium") if exp_file.exists() else {}
    if pixel_size is None:
        if "pixel_size" not in exp:
            raise ValueError(f"{exp_file}: " + ("missing" if not exp_file.exists() else "no 'pixel_size' key") +
                             "; pass pixel_size= (microns per morphology pixel, 0.2125 on Xenium)")
        pixel_size = exp["pixel_size"]
    try:
        pixel_size = float(pixel_size)
    except (TypeError, ValueError):
        raise ValueError(f"{exp_file}: pixel_size must be a number, got {pixel_size!r}") from None
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(f"{exp_file}: pixel_size must be > 0, got {pixel_size}")

    # --- counts (cells x features), control features dropped and counted
    src = find_10x_matrix(path, "cell_feature_matrix")
    m = read_10x_matrix(src)
    unique_spots(m.obs_names, src)
    ftype = m.var["feature_types"].astype(str).to_numpy()
    gene = ftype == GENE_TYPE
    if not gene.any():
        raise ValueError(f"{src}: no feature of type {GENE_TYPE!r} (types found: {sorted(set(ftype))})")
    dropped = {}
    for t in sorted(set(ftype[~gene])):
        cols = np.flatnonzero(ftype == t)
        dropped[t] = {"features": int(len(cols)), "counts": int(m.X[:, cols].sum())}
    if dropped:
        log.info("%s: dropped control features: %s", src, ", ".join(f"{t}: {d['features']} features / "
                                                                   f"{d['counts']} counts" for t, d in dropped.items()))
    X = check_sparse_counts(m.X[:, gene], src, m.obs_names, m.var_names[gene])
    X, genes = sum_duplicate_genes(X, m.var_names[gene], src)
    cell_ids = m.obs_names

    # --- centroids (microns)
    cells_file = next((p for p in (path / "cells.parquet", path / "cells.csv.gz", path / "cells.csv") if p.exists()), None)
    if cells_file is None:
        raise FileNotFoundError(f"{path}: neither cells.parquet nor cells.csv.gz found (cell centroids)")
    cells = read_parquet_or_csv(cells_file, ["cell_id", "x_centroid", "y_centroid"], "cells table")
    ids = cells["cell_id"]
    if ids.map(lambda v: isinstance(v, bytes)).any():
        ids = ids.map(lambda v: v.decode() if isinstance(v, bytes) else v)
    cells.index = pd.Index(ids.astype(str))
    dup = cells.index[cells.index.duplicated()]
    if len(dup):
        raise ValueError(f"{cells_file}: duplicate cell_id {list(dup[:5])}")
    missing = cell_ids[~cell_ids.isin(cells.index)]
    if len(missing):
        raise ValueError(f"{cells_file}: {len(missing)} cell(s) of {src.name} have no centroid, e.g. {list(missing[:3])}")
    cells = cells.loc[cell_ids]
    try:
        xy_um = cells[["x_centroid", "y_centroid"]].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cells_file}: x_centroid / y_centroid must be numbers (microns): {e}") from None
    bad = ~np.isfinite(xy_um).all(1)
    if bad.any():
        raise ValueError(f"{cells_file}: cell(s) {list(cell_ids[bad][:5])} have NaN/Inf centroids")

    # --- cells or pseudo-spots
    lib = library_id or (path.parent.name if path.name == "outs" else path.name)
    n_cells_total = len(cell_ids)
    if keep_cells:
        names, centres_um, n_cells = cell_ids.copy(), xy_um, np.ones(len(cell_ids), np.int64)
        rows = cols = None
        if "cell_area" in cells:
            size_um = float(np.nanmedian(np.sqrt(cells["cell_area"].to_numpy(dtype=float))))
        else:
            size_um = 10.0
        n_dropped_bins = 0
        codes = np.arange(len(cell_ids))
    else:
        r, c, cen = bin_points(xy_um, bin_um, grid)
        key = pd.MultiIndex.from_arrays([r, c])
        codes, uniq = pd.factorize(key, sort=True)
        n_cells = np.bincount(codes, minlength=len(uniq))
        A = sp.csr_matrix((np.ones(len(codes), np.float32), (codes, np.arange(len(codes)))), shape=(len(uniq), len(codes)))
        X = (A @ X).tocsr()
        first = np.zeros(len(uniq), np.int64)
        first[codes[::-1]] = np.arange(len(codes))[::-1]
        centres_um = cen[first]
        rows, cols = r[first], c[first]
        keep = n_cells >= max(1, int(min_cells))
        n_dropped_bins = int((~keep).sum())
        remap = np.full(len(uniq), -1)
        remap[np.flatnonzero(keep)] = np.arange(int(keep.sum()))
        codes = remap[codes]
        X, centres_um, rows, cols, n_cells = X[keep], centres_um[keep], rows[keep], cols[keep], n_cells[keep]
        if X.shape[0] == 0:
            raise ValueError(f"{path}: no pseudo-spot has >= {min_cells} cells (bin_um={bin_um})")
        names = pd.Index([f"{grid}{bin_um:g}um_{a}_{b}" for a, b in zip(rows, cols)])
        size_um = float(bin_um)
        if n_dropped_bins:
            log.info("%s: %d pseudo-spot(s) with fewer than %d cells dropped", path, n_dropped_bins, min_cells)

    # --- frame: full-resolution image pixels
    morph_px = centres_um / pixel_size
    images, image_kind, he_scale, mfile = {}, None, 1.0, None
    hires_scalef = 1.0
    if he_image is not None:
        M = read_alignment(Path(he_alignment))
        inv = np.linalg.inv(M)
        spatial = (np.c_[morph_px, np.ones(len(morph_px))] @ inv.T)[:, :2]
        he_scale = float(np.sqrt(abs(np.linalg.det(M[:2, :2]))))   # morphology px per H&E px
        img, (fw, fh), hires_scalef = _read_any_image(Path(he_image))
        images["hires"] = img
        image_kind = "he"
    else:
        spatial = morph_px
        if morphology:
            mfile = next((path / f for f in MORPHOLOGY_FILES if (path / f).is_file()), None)
            if mfile is not None:
                img, (fw, fh), hires_scalef = read_tiff_level(mfile)
                images["hires"] = img
                image_kind = "dapi"
    spot_px = size_um / pixel_size / he_scale
    out = ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(names, dtype=str)), var=pd.DataFrame(index=genes))
    unique_spots(out.obs_names, path)
    out.obs["n_cells"] = n_cells.astype(np.int64)
    if rows is not None:
        out.obs["array_row"], out.obs["array_col"] = rows, cols
    out.obsm["spatial"] = np.asarray(spatial, dtype=np.float64)
    out.uns["spatial"] = {lib: {"images": images, "scalefactors": {
        "tissue_hires_scalef": float(hires_scalef), "tissue_lowres_scalef": float(hires_scalef),
        "spot_diameter_fullres": float(spot_px)}}}
    out.uns["spagraph_slice"] = {
        "library_id": lib, "platform": "xenium", "source": str(path), "has_image": bool(images),
        "image_kind": image_kind or "none", "spot_size_um": size_um, "bin_um": float(bin_um) if not keep_cells else 0.0,
        "grid": "cells" if keep_cells else grid, "n_cells": int(n_cells_total), "n_dropped_bins": n_dropped_bins,
        "pixel_size_um": pixel_size * he_scale, "dropped_features": dropped,
        "region_name": str(exp.get("region_name", "")), "analysis_sw_version": str(exp.get("analysis_sw_version", ""))}
    from spagraph.io.polygons import attach_polygon_labels, is_polygon_file
    if annotation is not None and is_polygon_file(annotation):
        inv_he = np.linalg.inv(M) if he_image is not None else np.eye(3)

        def um_to_fullres(r):
            return (np.c_[np.asarray(r) / pixel_size, np.ones(len(r))] @ inv_he.T)[:, :2]
        attach_polygon_labels(out, annotation, label_schema, um_to_fullres)
    else:
        _attach_labels(out, annotation, label_schema, cell_ids, codes, keep_cells)
    from spagraph.io.validate import check_slice
    return check_slice(out, source=path, files={"counts": src, "positions": cells_file, "labels": annotation,
                                                "image": he_image or (mfile if image_kind == "dapi" else None)},
                       outside_image="allow")   # an aligned H&E may cover only part of the panel (warned above)


def read_alignment(path: Path) -> np.ndarray:
    """A 3x3 affine matrix from a CSV (comma- or whitespace-separated, no header)."""
    try:
        txt = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"alignment matrix not found: {path}") from None
    try:
        rows = [[float(v) for v in line.replace(",", " ").split()] for line in txt.splitlines() if line.strip()]
        M = np.array(rows, dtype=float)
    except ValueError as e:
        raise ValueError(f"{path}: alignment matrix must hold numbers only: {e}") from None
    if M.shape != (3, 3):
        raise ValueError(f"{path}: alignment matrix must be 3x3 (H&E pixels -> morphology pixels), got shape {M.shape}")
    if not np.isfinite(M).all() or not np.allclose(M[2], [0, 0, 1]):
        raise ValueError(f"{path}: alignment matrix must be finite with last row 0,0,1 (an affine), got {M[2].tolist()}")
    if abs(np.linalg.det(M[:2, :2])) < 1e-12:
        raise ValueError(f"{path}: alignment matrix is singular (cannot map spots back to the H&E)")
    return M


def _read_any_image(p: Path) -> tuple[np.ndarray, tuple[int, int], float]:
    if p.suffix.lower() in (".tif", ".tiff") or p.name.lower().endswith(".ome.tif"):
        return read_tiff_level(p)
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"H&E image not found: {p}") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{p}: not a readable image: {e}") from None
    h, w = arr.shape[:2]
    small, s = downscale(to_rgb_uint8(arr))
    return small, (w, h), s


def _attach_labels(out: ad.AnnData, annotation, label_schema, cell_ids: pd.Index, codes: np.ndarray,
                   keep_cells: bool) -> None:
    from spagraph.io._checks import read_table
    from spagraph.io.readers import attach_annotation_csv
    if annotation is None or keep_cells:
        attach_annotation_csv(out, annotation, label_schema)
        return
    df = read_table(Path(annotation), what="annotation CSV")
    if df.shape[1] < 2:
        raise ValueError(f"{annotation}: expected two columns (id, label), found {list(df.columns)}")
    ids = df.iloc[:, 0].astype(str)
    if ids.isin(out.obs_names).any() and not ids.isin(cell_ids).any():
        attach_annotation_csv(out, annotation, label_schema)        # labels per pseudo-spot
        return
    lab = pd.Series(df.iloc[:, 1].to_numpy(), index=ids)
    lab = lab[~lab.index.duplicated()]
    hit = cell_ids.isin(lab.index)
    if not hit.any():
        raise ValueError(f"{annotation}: no id matches a cell or pseudo-spot of the slice "
                         f"(e.g. {list(ids[:3])} vs cells {list(cell_ids[:3])})")
    per_cell = lab.reindex(cell_ids).to_numpy()
    ok = (codes >= 0) & pd.notna(per_cell)
    t = pd.DataFrame({"spot": codes[ok], "label": per_cell[ok]})
    counts = t.groupby(["spot", "label"]).size().unstack(fill_value=0)
    maj = counts.idxmax(axis=1)
    frac = counts.max(axis=1) / counts.sum(axis=1)
    ann = pd.Series(np.nan, index=np.arange(out.n_obs), dtype=object)
    ann[maj.index] = maj.to_numpy()
    out.obs["annotation"] = pd.Categorical(ann.to_numpy())
    f = np.full(out.n_obs, np.nan)
    f[frac.index.to_numpy()] = frac.to_numpy()
    out.obs["annotation_frac"] = f
    schema = label_schema if isinstance(label_schema, LabelSchema) else LabelSchema.from_dict(label_schema)
    cls, canc = schema.apply(pd.Series(ann.to_numpy(), index=out.obs_names), str(annotation))
    out.obs["label_class"], out.obs["cancer"] = cls, canc.array
