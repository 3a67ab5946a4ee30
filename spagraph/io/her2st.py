"""Reader for the legacy Spatial Transcriptomics layout of the her2st study.

root/
  counts/<S>.tsv.gz                 spots x genes raw counts; first column spot id "<x>x<y>"
  spots/<S>_selection.tsv           x y new_x new_y pixel_x pixel_y selected
  labels/<S>_labeled_coordinates.tsv  Row.names x y pixel_x pixel_y label   (optional)
  images/<S>.png|jpg                H&E (optional; may be a downscale of the full-res image)
  clusters/<S>-cluster-annotation.tsv.gz  expression clusters (optional; never used as labels)
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from spagraph.io._checks import check_counts, check_positions, parse_array_ids, read_table, sum_duplicate_genes, unique_spots
from spagraph.io.labels import HER2ST, LabelSchema
from spagraph.io.validate import check_slice

log = logging.getLogger("spagraph")

# Width in pixels of the full-resolution H&E for sections whose shipped image is a downscale.
# A1: the 2000 x 2138 PNG is a downscale of the 6954 x 7435 full-resolution image.
FULLRES_WIDTH = {"A1": 6954}
HIRES_MAX_SIDE = 2000


def _load_image(path: Path, fullres_width: int | None):
    """Load an RGB image; a full-resolution file is reduced to HIRES_MAX_SIDE px on its long side.

    Returns (hires uint8 array, hires scale factor from full-res px, full-res (w, h)). A large
    JPEG is decoded directly at a reduced scale (PIL ``draft``), so a 9274 x 9911 section never
    sits in memory at full resolution.
    """
    from PIL import Image, UnidentifiedImageError
    from spagraph.io.validate import read_image_rgb8
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: not a readable image: {e}") from None
    full_w = fullres_width or w
    # a shipped downscale (known full-res width) is kept as it is; a full-res file is
    # reduced to HIRES_MAX_SIDE (encoders read the full-res file through image_path)
    f = 1.0 if fullres_width else min(1.0, HIRES_MAX_SIDE / max(w, h))
    tw, th = max(1, round(w * f)), max(1, round(h * f))
    # JPEG: decode at 1/2, 1/4 or 1/8 scale (>= target); 16-bit grey is rescaled, never clipped
    im = read_image_rgb8(path, draft_size=(tw, th) if f < 1.0 else None)
    if im.size != (tw, th):
        im = im.resize((tw, th), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr, float(tw / full_w), (full_w, round(h * full_w / w))


def read_her2st(root: str | Path, slice_name: str, label_schema: LabelSchema | dict | None = None,
                image: bool = True) -> ad.AnnData:
    """Read one her2st section into spagraph's AnnData convention (docs/conventions.md).

    Spots are the rows of the count file that have a row in the spot selection file.
    Label rows are matched by rounding their adjusted array coordinates; label rows with
    ``NA`` coordinates or without a count row are counted and reported in a warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"her2st root directory not found: {root}")
    schema = label_schema if isinstance(label_schema, LabelSchema) else (
        LabelSchema.from_dict(label_schema) if label_schema else HER2ST)
    cpath = root / "counts" / f"{slice_name}.tsv.gz"
    if not cpath.exists():
        avail = sorted(p.name.split(".")[0] for p in (root / "counts").glob("*.tsv.gz")) if (root / "counts").is_dir() else []
        raise FileNotFoundError(f"count file not found: {cpath}" + (f"; slices present: {avail}" if avail else ""))
    counts = read_table(cpath, what="count matrix", sep="\t", index_col=0)
    if counts.shape[1] == 0:
        raise ValueError(f"{cpath}: count matrix has no gene columns (is it tab-separated?)")
    counts.index = counts.index.astype(str)
    counts.columns = _raw_header(cpath, counts.columns)
    unique_spots(counts.index, cpath)
    arr = parse_array_ids(counts.index, cpath)
    X = check_counts(counts.to_numpy(), cpath, counts.index, values=False)   # values: check_slice below
    X, genes = sum_duplicate_genes(X, counts.columns, cpath)

    spath = root / "spots" / f"{slice_name}_selection.tsv"
    sel = read_table(spath, ["x", "y", "pixel_x", "pixel_y"], what="spot selection", sep="\t")
    sel = _selection_rows(sel, spath)
    if "selected" in sel:
        flag = pd.to_numeric(sel["selected"], errors="coerce")
        if flag.isna().any() or not flag.isin((0, 1)).all():
            i = int(np.flatnonzero(~flag.isin((0, 1)).to_numpy())[0])
            raise ValueError(f"{spath}: row {int(sel['_line'].iloc[i])}: selected = {str(sel['selected'].iloc[i])!r}; "
                             "expected 1 (spot under tissue) or 0 (not selected)")
        off = sel.index[(flag == 0).to_numpy()]
        drop = counts.index.isin(off)
        if drop.any():
            msg = (f"{spath}: {int(drop.sum())} spot(s) marked selected = 0 dropped (not under tissue), "
                   f"e.g. {list(counts.index[drop][:5])}")
            log.info(msg)
            warnings.warn(msg)
            counts = counts.loc[~drop]
            arr, X = arr[~drop], X[np.flatnonzero(~drop)]
        if counts.shape[0] == 0:
            raise ValueError(f"{cpath}: every spot is marked selected = 0 in {spath}: no spot left")
    missing = counts.index[~counts.index.isin(sel.index)]
    if len(missing):
        raise ValueError(f"{cpath}: {len(missing)} spot(s) have counts but no row in {spath}, e.g. {list(missing[:5])}")
    try:
        xy = sel.loc[counts.index, ["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{spath}: pixel_x / pixel_y must be numbers: {e}") from None
    pitch = check_positions(xy, spath, counts.index)

    a = ad.AnnData(X=X, obs=pd.DataFrame(index=counts.index.copy()), var=pd.DataFrame(index=genes))
    a.obs["array_x"], a.obs["array_y"] = arr[:, 0], arr[:, 1]
    a.obsm["spatial"] = xy

    _attach_labels(a, root / "labels" / f"{slice_name}_labeled_coordinates.tsv", schema)

    # legacy ST: 100 um spots on a 200 um centre-to-centre grid -> diameter = half the pitch
    scalefactors = {"spot_diameter_fullres": 0.5 * pitch, "tissue_hires_scalef": 1.0, "tissue_lowres_scalef": 1.0}
    images, image_path = {}, None
    if image:
        for ext in ("png", "jpg", "jpeg", "tif", "tiff"):
            p = root / "images" / f"{slice_name}.{ext}"
            if p.exists():
                img, scale, full_size = _load_image(p, FULLRES_WIDTH.get(slice_name))
                inside = (xy >= 0).all(1) & (xy[:, 0] < full_size[0]) & (xy[:, 1] < full_size[1])
                if not inside.all():
                    bad = a.obs_names[~inside]
                    raise ValueError(f"{p}: {len(bad)} spot centre(s) of {spath} fall outside the image "
                                     f"({full_size[0]}x{full_size[1]} full-res px), e.g. {list(bad[:3])}")
                images["hires"] = img
                scalefactors["tissue_hires_scalef"] = scale
                scalefactors["tissue_lowres_scalef"] = scale
                image_path = str(p) if scale == 1.0 or FULLRES_WIDTH.get(slice_name) is None else None
                break
    a.uns["spatial"] = {slice_name: {"images": images, "scalefactors": scalefactors,
                                     "metadata": {"source": "her2st legacy ST"}}}
    a.uns["spagraph_slice"] = {"library_id": slice_name, "platform": "legacy_st", "source": str(root),
                               "has_image": bool(images), **({"image_path": image_path} if image_path else {})}
    _attach_clusters(a, root / "clusters" / f"{slice_name}-cluster-annotation.tsv.gz")
    img_file = next((root / "images" / f"{slice_name}.{e}" for e in ("png", "jpg", "jpeg", "tif", "tiff")
                     if (root / "images" / f"{slice_name}.{e}").exists()), None)
    return check_slice(a, source=root, files={"counts": cpath, "positions": spath, "image": img_file,
                                              "labels": root / "labels" / f"{slice_name}_labeled_coordinates.tsv",
                                              "scalefactors": img_file or spath})


def _selection_rows(sel: pd.DataFrame, spath: Path) -> pd.DataFrame:
    """Index the selection table by spot id ``<x>x<y>``. A spot listed twice with the same pixel
    position keeps one row; with different positions it is an error naming both rows."""
    sel = sel.copy()
    sel["_line"] = np.arange(len(sel)) + 2            # file line (header is line 1)
    try:
        sel.index = sel["x"].astype(float).astype(int).astype(str) + "x" + sel["y"].astype(float).astype(int).astype(str)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{spath}: columns x / y must be integer array coordinates: {e}") from None
    dup = sel.index.duplicated(keep=False)
    if dup.any():
        pix = sel[["pixel_x", "pixel_y"]].apply(pd.to_numeric, errors="coerce")
        for sid, grp in pix[dup].groupby(level=0, sort=False):
            if not np.allclose(grp.to_numpy(), grp.to_numpy()[:1], atol=1e-6, equal_nan=True):
                lines = sel.loc[sid, "_line"].tolist()
                raise ValueError(f"{spath}: spot {sid} is listed twice with different pixel positions: rows "
                                 f"{lines[0]} ({grp.iloc[0, 0]:g}, {grp.iloc[0, 1]:g}) and {lines[1]} "
                                 f"({grp.iloc[1, 0]:g}, {grp.iloc[1, 1]:g}); expected one row per spot")
        sel = sel[~sel.index.duplicated()]
    return sel


def _raw_header(path: Path, parsed: pd.Index) -> pd.Index:
    """Gene names as written in the header (pandas renames a repeated name ``X`` to ``X.1``,
    which would hide duplicates from :func:`sum_duplicate_genes`)."""
    import gzip
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        names = f.readline().rstrip("\r\n").split("\t")[1:]
    return pd.Index(names) if len(names) == len(parsed) else parsed


def _attach_labels(a: ad.AnnData, lpath: Path, schema: LabelSchema) -> None:
    if not lpath.exists():
        a.obs["annotation"] = pd.Categorical([np.nan] * a.n_obs)
        a.obs["label_class"] = pd.Categorical([np.nan] * a.n_obs)
        a.obs["cancer"] = pd.array([pd.NA] * a.n_obs, dtype="Int8")
        return
    lab = read_table(lpath, ["x", "y", "label"], what="label table", sep="\t")
    na = lab["x"].isna() | lab["y"].isna()
    if na.any():
        warnings.warn(f"{lpath}: {int(na.sum())} label row(s) with NA coordinates ignored")
    lab = lab[~na]
    try:
        ids = lab["x"].astype(float).round().astype(int).astype(str) + "x" + lab["y"].astype(float).round().astype(int).astype(str)
    except ValueError as e:
        raise ValueError(f"{lpath}: label coordinates x/y must be numbers: {e}") from None
    lab.index = ids
    dup = lab.index.duplicated()
    if dup.any():
        warnings.warn(f"{lpath}: {int(dup.sum())} label row(s) round to an already labelled spot; first kept")
        lab = lab[~dup]
    orphan = ~lab.index.isin(a.obs_names)
    if orphan.all():
        raise ValueError(f"{lpath}: no label row matches a spot of the count matrix (after rounding x, y to spot ids)")
    if orphan.any():
        warnings.warn(f"{lpath}: {int(orphan.sum())} label row(s) have no count row (spots without counts); ignored")
    ann = lab["label"].reindex(a.obs_names)
    a.obs["annotation"] = pd.Categorical(ann)
    cls, canc = schema.apply(ann, str(lpath))
    a.obs["label_class"] = cls
    a.obs["cancer"] = canc.array


def read_cluster_names(path: Path) -> dict[tuple[str, int], str]:
    """``clusters/motivation.csv``: (patient, cluster number) -> cluster name ("cancer 1", ...).

    The file is not valid CSV (the free-text fields hold unquoted commas, so do the names,
    e.g. "immune : APC, B-cell, T-cell"); the name is the text between the second comma and
    the ",Marker genes" field that follows it, else up to the next comma.
    """
    out = {}
    for i, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[1:], 2):
        parts = line.split(",", 2)
        if len(parts) < 3 or not line.strip():
            continue
        try:
            key = (parts[0].strip(), int(parts[1]))
        except ValueError:
            raise ValueError(f"{path}: line {i}: cluster number {parts[1]!r} is not an integer") from None
        rest = parts[2]
        j = rest.lower().find(",marker genes")
        out[key] = (rest[:j] if j >= 0 else rest.split(",")[0]).strip()
    return out


def _attach_clusters(a: ad.AnnData, cpath: Path) -> None:
    """Expression-cluster names into ``obs["cluster_annotation"]`` (NA for spots the file lacks).

    The file (``<S>-cluster-annotation.tsv.gz``) is indexed by pixel position and holds
    ``patient_id ids label x y ...``: ``label`` is a cluster number, named per patient in
    ``motivation.csv`` next to it; ``x``, ``y`` are array coordinates that make the spot id.
    Never labels for a model that sees genes (the clusters come from expression).
    """
    if not cpath.exists():
        return
    cl = read_table(cpath, ["label", "x", "y"], what="cluster annotation", sep="\t", index_col=0)
    try:
        cl.index = (cl["x"].astype(float).round().astype(int).astype(str) + "x"
                    + cl["y"].astype(float).round().astype(int).astype(str))
        num = cl["label"].astype(float)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{cpath}: columns x, y and label must be numbers: {e}") from None
    cl = cl[~cl.index.duplicated()]
    names_file = cpath.parent / "motivation.csv"
    names = read_cluster_names(names_file) if names_file.exists() else {}
    patient = cl["patient_id"].astype(str) if "patient_id" in cl else pd.Series("", index=cl.index)
    lab = []
    for p, n in zip(patient, num.loc[cl.index]):
        if not np.isfinite(n):
            lab.append(None)
        elif (p, int(n)) in names:
            lab.append(names[(p, int(n))])
        else:
            lab.append(f"cluster {int(n)}")
    named = pd.Series(lab, index=cl.index, dtype=object)
    hit = a.obs_names.isin(named.index)
    if not hit.any():
        raise ValueError(f"{cpath}: no row matches a spot of the count matrix (x, y -> '<x>x<y>' spot ids)")
    a.obs["cluster_annotation"] = pd.Categorical(named.reindex(a.obs_names))
