"""Space Ranger and .h5ad readers, format dispatch, and a one-screen slice description."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spagraph.io._checks import check_positions, read_table, sum_duplicate_genes, unique_spots
from spagraph.io.labels import LabelSchema
from spagraph.io.validate import _positive, check_slice, read_image_rgb8

log = logging.getLogger("spagraph")


def read_spaceranger(outs: str | Path, annotation_csv: str | Path | None = None,
                     label_schema: LabelSchema | dict | None = None, library_id: str | None = None) -> ad.AnnData:
    """Read a 10x Space Ranger ``outs/`` folder (+ optional ``barcode,label`` annotation CSV)."""
    import scanpy as sc
    outs = Path(outs)
    if not outs.is_dir():
        raise FileNotFoundError(f"Space Ranger outs/ directory not found: {outs}")
    from spagraph.io._tenx import find_10x_matrix
    src = find_10x_matrix(outs, "filtered_feature_bc_matrix")
    try:
        if src.suffix == ".h5":
            a = sc.read_10x_h5(src)
        else:
            a = sc.read_10x_mtx(src, make_unique=False)   # duplicates are summed below, like the h5 path
    except (OSError, KeyError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{outs}: cannot read the feature-barcode matrix: {e}") from None
    a.obs_names = a.obs_names.astype(str)
    unique_spots(a.obs_names, src)
    X = sp.csr_matrix(a.X, dtype=np.float32)      # values are checked by check_slice (sparse-aware)
    X, genes = sum_duplicate_genes(X, a.var_names, src)
    spatial = outs / "spatial"
    pos_file = next((p for p in (spatial / "tissue_positions.csv", spatial / "tissue_positions_list.csv") if p.exists()), None)
    if pos_file is None:
        raise FileNotFoundError(f"{spatial}: tissue_positions.csv / tissue_positions_list.csv not found")
    cols = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    if pos_file.name == "tissue_positions.csv":
        pos = read_table(pos_file, cols, what="tissue positions")
    else:
        pos = read_table(pos_file, what="tissue positions", header=None)
        if pos.shape[1] != 6:
            raise ValueError(f"{pos_file}: expected 6 columns {cols}, found {pos.shape[1]}")
        pos.columns = cols
    pos = pos.set_index(pos["barcode"].astype(str))
    missing = a.obs_names[~a.obs_names.isin(pos.index)]
    if len(missing):
        raise ValueError(f"{pos_file}: {len(missing)} barcode(s) of the matrix have no position, e.g. {list(missing[:3])}")
    pos = pos.loc[a.obs_names]
    sf_file = spatial / "scalefactors_json.json"
    try:
        sf = json.loads(sf_file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"scale factors not found: {sf_file}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{sf_file}: not valid JSON: {e}") from None
    if not isinstance(sf, dict):
        raise ValueError(f"{sf_file}: expected a JSON object of scale factors, got {type(sf).__name__}")
    for k in ("tissue_hires_scalef", "spot_diameter_fullres"):
        if k not in sf:
            raise ValueError(f"{sf_file}: missing key {k!r}")
    for k in ("tissue_hires_scalef", "tissue_lowres_scalef", "spot_diameter_fullres"):
        if k in sf:
            sf[k] = _positive(sf[k], f"{sf_file}: {k}")
    out = ad.AnnData(X=X, obs=pd.DataFrame(index=a.obs_names.copy()), var=pd.DataFrame(index=genes))
    out.obs["array_row"], out.obs["array_col"] = pos["array_row"].to_numpy(), pos["array_col"].to_numpy()
    try:
        out.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{pos_file}: pxl_row_in_fullres / pxl_col_in_fullres must be numbers: {e}") from None
    check_positions(out.obsm["spatial"], pos_file, out.obs_names)
    images = {}
    for key, name in (("hires", "tissue_hires_image.png"), ("lowres", "tissue_lowres_image.png")):
        p = spatial / name
        if p.exists():        # 16-bit grey is rescaled, never clipped (read_image_rgb8)
            images[key] = np.asarray(read_image_rgb8(p))
    lib = library_id or outs.parent.name or "visium"
    out.uns["spatial"] = {lib: {"images": images, "scalefactors": {
        "tissue_hires_scalef": float(sf["tissue_hires_scalef"]),
        "tissue_lowres_scalef": float(sf.get("tissue_lowres_scalef", sf["tissue_hires_scalef"])),
        "spot_diameter_fullres": float(sf["spot_diameter_fullres"])}}}
    out.uns["spagraph_slice"] = {"library_id": lib, "platform": "visium", "source": str(outs), "has_image": bool(images)}
    attach_annotation_csv(out, annotation_csv, label_schema)
    img = spatial / ("tissue_hires_image.png" if "hires" in images else "tissue_lowres_image.png")
    return check_slice(out, source=outs, files={"counts": src, "positions": pos_file, "scalefactors": sf_file,
                                                "image": img, "labels": annotation_csv})


def attach_annotation_csv(a: ad.AnnData, path, label_schema=None) -> None:
    """Labels from a ``barcode,label`` CSV into obs annotation / label_class / cancer."""
    schema = label_schema if isinstance(label_schema, LabelSchema) else LabelSchema.from_dict(label_schema)
    if path is None:
        a.obs["annotation"] = pd.Categorical([np.nan] * a.n_obs)
        a.obs["label_class"] = pd.Categorical([np.nan] * a.n_obs)
        a.obs["cancer"] = pd.array([pd.NA] * a.n_obs, dtype="Int8")
        return
    df = read_table(Path(path), what="annotation CSV", header=None, dtype=str, keep_default_na=False,
                    na_values=["", "NA", "NaN", "nan"])
    if df.shape[1] < 2:
        raise ValueError(f"{path}: expected two columns (barcode, label), found {df.shape[1]}")
    df = df.iloc[:, :2]
    df.columns = ["barcode", "label"]
    # a header row is one whose first cell is not a barcode of the slice; a headerless file's first
    # row is a spot and must not be lost
    if str(df["barcode"].iloc[0]) not in set(a.obs_names):
        df = df.iloc[1:]
    else:
        log.info("%s: no header row (first row is spot %s): read as barcode,label", path, df["barcode"].iloc[0])
    dup = df["barcode"].duplicated(keep=False)
    if dup.any():
        rows = df.loc[dup]
        first = rows["barcode"].iloc[0]
        lines = [int(i) + 1 for i in rows.index[rows["barcode"] == first]]
        labs = rows.loc[rows["barcode"] == first, "label"].tolist()
        if len(set(map(str, labs))) > 1:
            raise ValueError(f"{path}: barcode {first!r} is listed twice with different labels: lines {lines[0]} "
                             f"({labs[0]!r}) and {lines[1]} ({labs[1]!r}); expected one row per spot")
        df = df[~df["barcode"].duplicated()]
    df = df.set_index(df["barcode"].astype(str))
    hit = df.index.isin(a.obs_names)
    if not hit.any():
        raise ValueError(f"{path}: no barcode matches a spot of the slice (e.g. {list(df.index[:3])} vs {list(a.obs_names[:3])})")
    if (~hit).any():
        import warnings
        warnings.warn(f"{path}: {int((~hit).sum())} annotation row(s) match no spot; ignored")
    ann = df["label"].reindex(a.obs_names)
    a.obs["annotation"] = pd.Categorical(ann)
    cls, canc = schema.apply(ann, str(path))
    a.obs["label_class"], a.obs["cancer"] = cls, canc.array


def read_h5ad(path: str | Path) -> ad.AnnData:
    """Read an ``.h5ad`` already in spagraph's convention (validated)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"h5ad not found: {path}")
    try:
        a = ad.read_h5ad(path)
    except Exception as e:  # h5py raises OSError / KeyError variants on corrupt files
        raise ValueError(f"{path}: not a readable .h5ad file: {e}") from None
    if "spatial" not in a.obsm:
        raise ValueError(f"{path}: obsm['spatial'] (spot centres in full-res pixels) is missing")
    check_slice(a, source=path)        # counts (or layers['counts']), labels, positions, images, scales
    a.uns.setdefault("spagraph_slice", {"library_id": path.stem, "platform": "unknown", "source": str(path),
                                        "has_image": any(v.get("images") for v in a.uns.get("spatial", {}).values())})
    return a


def read_slice(path: str | Path, slice_name: str | None = None, **kw) -> ad.AnnData:
    """Read a slice from a her2st root (+ slice name), a Space Ranger ``outs/``, a Visium HD ``outs/``
    (``bin_um``), a Xenium output folder (``bin_um``, ``grid``), a SpatialData ``.zarr`` or an ``.h5ad``.
    Keyword arguments go to the format's reader."""
    from spagraph.io.her2st import read_her2st
    path = Path(path)
    if path.suffix == ".h5ad":
        if kw.get("bin_um") is not None or kw.get("grid") is not None:
            raise ValueError(f"{path}: bin size / grid apply to Xenium and Visium HD only")
        return read_h5ad(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    from spagraph.io.spatialdata import is_spatialdata_zarr
    from spagraph.io.visium_hd import is_visium_hd_dir
    from spagraph.io.xenium import is_xenium_dir
    if is_xenium_dir(path):
        from spagraph.io.xenium import read_xenium
        return read_xenium(path, **kw)
    grid = kw.pop("grid", None)
    if is_visium_hd_dir(path):
        from spagraph.io.visium_hd import read_visium_hd
        if grid not in (None, "square"):
            raise ValueError(f"{path}: Visium HD bins are squares; grid={grid!r} applies to Xenium only")
        return read_visium_hd(path, **kw)
    bin_um = kw.pop("bin_um", None)
    if bin_um is not None or grid is not None:
        raise ValueError(f"{path}: bin size / grid apply to Xenium and Visium HD only")
    if is_spatialdata_zarr(path):
        from spagraph.io.spatialdata import read_spatialdata
        return read_spatialdata(path, **kw)
    if (path / "counts").is_dir():
        if not slice_name:
            names = sorted(p.name.split(".")[0] for p in (path / "counts").glob("*.tsv.gz"))
            raise ValueError(f"{path} is a her2st-style root: pass --slice (one of {names})")
        return read_her2st(path, slice_name, **kw)
    if (path / "spatial").is_dir() or (path / "outs").is_dir():
        return read_spaceranger(path / "outs" if (path / "outs").is_dir() else path, **kw)
    raise ValueError(f"{path}: not a recognised slice (expected a .h5ad, a her2st root with counts/, "
                     "a Space Ranger outs/ with spatial/, a Visium HD outs/ with binned_outputs/, a Xenium "
                     "folder with experiment.xenium, or a SpatialData .zarr)")


def describe_slice(a: ad.AnnData) -> str:
    """Spots, genes, image size and label counts, as text."""
    meta = a.uns.get("spagraph_slice", {})
    lines = [f"slice {meta.get('library_id', '?')} ({meta.get('platform', '?')}): {a.n_obs} spots x {a.n_vars} genes"]
    lines.append(_spot_line(a, meta))
    imgs = [(k, v.shape) for lib in a.uns.get("spatial", {}).values() for k, v in lib.get("images", {}).items()]
    kind = meta.get("image_kind")
    lines.append("image: " + (", ".join(f"{k} {s[1]}x{s[0]}" for k, s in imgs) if imgs else "none")
                 + (f" ({kind})" if imgs and kind and kind != "none" else ""))
    if "annotation" in a.obs and a.obs["annotation"].notna().any():
        vc = a.obs["annotation"].value_counts()
        lines.append(f"labelled spots: {int(a.obs['annotation'].notna().sum())}")
        lines += [f"  {k}: {v}" for k, v in vc.items() if v]
        c = a.obs["cancer"]
        lines.append(f"cancer: {int((c == 1).sum())}  non-cancer: {int((c == 0).sum())}  undetermined/NA: {int(c.isna().sum())}")
    else:
        lines.append("labels: none")
    return "\n".join(lines)


#: spot diameter and centre-to-centre pitch (microns) of the fixed-grid platforms
SPOT_UM = {"legacy_st": (100.0, 200.0), "visium": (55.0, 100.0)}


def _spot_line(a: ad.AnnData, meta: dict) -> str:
    """``spot: ...`` line of describe_slice: platform spot / bin size and the measured pitch."""
    from spagraph.io._checks import check_positions
    plat = meta.get("platform", "?")
    try:
        pitch = check_positions(np.asarray(a.obsm["spatial"])[:, :2], "slice", a.obs_names) if "spatial" in a.obsm else None
    except ValueError:
        pitch = None
    p = f"pitch {pitch:.1f} px" if pitch else "pitch ?"
    if plat == "xenium":
        g = meta.get("grid", "?")
        what = "cells" if g == "cells" else f"{meta.get('bin_um', 0):g} um {g} pseudo-spots"
        extra = f" from {meta.get('n_cells', '?')} cells"
        dropped = meta.get("dropped_features") or {}
        if dropped:
            extra += "; dropped " + ", ".join(f"{t}: {d['features']} features / {d['counts']} counts"
                                              for t, d in dropped.items())
        return f"spot: {what}{extra}; {p}"
    if plat == "visium_hd":
        return f"spot: {meta.get('bin_um', 0):g} um square bins; {p}"
    if plat in SPOT_UM:
        d, pp = SPOT_UM[plat]
        return f"spot: {d:g} um spots, {pp:g} um pitch; {p}"
    if meta.get("spot_size_um"):
        return f"spot: {meta['spot_size_um']:g} um; {p}"
    return f"spot: size unknown; {p}"
