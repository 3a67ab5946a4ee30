"""SpatialData ``.zarr`` <-> spagraph slices, through the ``spatialdata`` library (extra ``spatial``).

Reading: a table (AnnData with ``uns["spatialdata_attrs"]``: region, region_key, instance_key)
annotates one shapes element (circles or polygons) or points element; the spots are its
instances, their centres the shapes' centroids. Positions are mapped through the elements'
transformations into the coordinate system (``global``), which is spagraph's "full resolution" frame
when the reference image is a plain rescale of it (Visium / Visium HD as spatialdata-io writes them:
global = full-resolution pixels); when the image is rotated or shifted (an aligned H&E), the image's
level-0 pixels become the frame. A downscaled level of the image becomes
``uns["spatial"][lib]["images"]["hires"]`` with the matching ``tissue_hires_scalef``. Without an
image, positions stay in the coordinate system's units.

Writing: :func:`write_spatialdata_predictions` adds a table of the ``spagraph_*`` columns that
annotates the same shapes (same region, region_key and instance ids), so napari-spatialdata and
spatialdata-plot colour the shapes by score, prediction or region, e.g.
``sdata.pl.render_shapes("spots", color="spagraph_score", table_name="spagraph").pl.show()``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
import shutil
from pathlib import Path
from typing import Optional

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spagraph.io._checks import sum_duplicate_genes, unique_spots
from spagraph.io._tenx import HIRES_MAX_PX, check_sparse_counts, downscale, to_rgb_uint8
from spagraph.io.labels import LabelSchema

log = logging.getLogger("spagraph")

PRED_PREFIX = "spagraph_"


@contextlib.contextmanager
def _quiet():
    """Silence third-party notices that say nothing about the user's data (zarr's autosharding
    announcement, spatialdata's format notes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*autosharding.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(spatialdata|zarr|anndata|xarray|dask|ome_zarr).*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(spatialdata|zarr|ome_zarr|xarray|dask).*")
        warnings.filterwarnings("ignore", message=r"Converting `region_key.*to categorical")
        yield


def _import_sd():
    try:
        import spatialdata as sd
    except ImportError as e:
        raise ImportError("reading SpatialData needs the optional extra: pip install 'spagraph[spatial]' "
                          f"(spatialdata 0.7): {e}") from None
    return sd


def is_spatialdata_zarr(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and path.suffix == ".zarr" and any((path / d).is_dir() for d in ("tables", "table", "shapes"))


def _affine(element, cs: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation
    try:
        t = get_transformation(element, to_coordinate_system=cs)
    except (KeyError, ValueError) as e:
        raise ValueError(f"element has no transformation to coordinate system {cs!r}: {e}") from None
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


def read_spatialdata(path: str | Path, table: Optional[str] = None, region: Optional[str] = None,
                     image: Optional[str] = None, coordinate_system: Optional[str] = None, label_key: Optional[str] = None,
                     label_schema: LabelSchema | dict | None = None, layer: Optional[str] = None,
                     library_id: Optional[str] = None) -> ad.AnnData:
    """Read one region of a SpatialData ``.zarr`` as a slice.

    Parameters
    ----------
    table : table name (default: the only table, else one named ``table``).
    region : the shapes / points element the table annotates (default: the table's only region).
    coordinate_system : default ``global``, else the region's only one, else the one it maps to with the
        identity (spatialdata-io's Visium objects name it after the dataset).
    image : reference image (default: the only image in ``coordinate_system``, else one whose name ends in
        ``hires_image`` / ``full_image`` / ``he_image``; none -> no image, positions in coordinate units).
    label_key : an ``obs`` column of the table holding annotation text (mapped with ``label_schema``).
    layer : counts layer (default ``layers["counts"]`` when present, else ``X``); counts must be raw integers.
    """
    sd = _import_sd()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SpatialData store not found: {path}")
    try:
        with _quiet():
            sdata = sd.read_zarr(path)
    except Exception as e:  # zarr / ome-zarr raise many kinds on a broken store
        raise ValueError(f"{path}: not a readable SpatialData .zarr: {e}") from None
    names = list(sdata.tables.keys())
    if not names:
        raise ValueError(f"{path}: the SpatialData object has no table (spots x genes); tables are needed")
    if table is None:
        own = [n for n in names if not n.startswith(PRED_PREFIX.rstrip("_"))]
        table = own[0] if len(own) == 1 else "table" if "table" in names else None
        if table is None:
            raise ValueError(f"{path}: several tables {names}: pass table=<name>")
    if table not in names:
        raise ValueError(f"{path}: no table {table!r}; tables: {names}")
    t = sdata.tables[table]
    attrs = t.uns.get("spatialdata_attrs") or {}
    rk, ik = attrs.get("region_key"), attrs.get("instance_key")
    regions = attrs.get("region")
    regions = [regions] if isinstance(regions, str) else list(regions or [])
    if not rk or not ik or not regions:
        raise ValueError(f"{path}: table {table!r} does not annotate any element (uns['spatialdata_attrs'] lacks "
                         "region / region_key / instance_key)")
    if region is None:
        if len(regions) > 1:
            raise ValueError(f"{path}: table {table!r} annotates several regions {regions}: pass region=<name>")
        region = regions[0]
    if region not in regions:
        raise ValueError(f"{path}: table {table!r} does not annotate {region!r}; it annotates {regions}")
    rows = np.flatnonzero((t.obs[rk].astype(str) == region).to_numpy())
    t = t[rows]
    inst = t.obs[ik].to_numpy()
    where = f"{path} (table {table!r}, region {region!r})"
    if region in sdata.shapes:
        el = sdata.shapes[region]
        try:
            geo = el.loc[inst]
        except KeyError:
            miss = [i for i in inst if i not in el.index][:3]
            raise ValueError(f"{where}: instance ids {miss} of the table are not in the shapes' index") from None
        if (geo.geometry.geom_type == "Point").all():
            xy = np.c_[geo.geometry.x.to_numpy(), geo.geometry.y.to_numpy()]
            diam = 2 * float(np.median(geo["radius"])) if "radius" in geo else np.nan
        else:
            c = geo.geometry.centroid
            xy = np.c_[c.x.to_numpy(), c.y.to_numpy()]
            diam = float(np.median(np.sqrt(geo.geometry.area)))
    elif region in sdata.points:
        el = sdata.points[region]
        df = el.compute() if hasattr(el, "compute") else el
        try:
            df = df.loc[inst]
        except KeyError:
            raise ValueError(f"{where}: instance ids of the table are not in the points' index") from None
        xy, diam = df[["x", "y"]].to_numpy(dtype=float), np.nan
    else:
        raise ValueError(f"{where}: region is neither a shapes nor a points element "
                         f"(shapes: {list(sdata.shapes)}, points: {list(sdata.points)}); labels are not supported")
    coordinate_system = coordinate_system or _pick_cs(el)
    T_el = _affine(el, coordinate_system)
    xy_cs = (np.c_[xy, np.ones(len(xy))] @ T_el.T)[:, :2]
    img_name = _pick_image(sdata, image, coordinate_system, where)
    images, scalef = {}, 1.0
    if img_name is not None:
        iel = sdata.images[img_name]
        T_img = _affine(iel, coordinate_system)
        images["hires"], scalef = _image_level(iel)
        k = T_img[0, 0]
        if k > 0 and np.allclose(T_img[:2, :2], k * np.eye(2), rtol=1e-9) and np.allclose(T_img[:2, 2], 0, atol=1e-9):
            # the image is a plain rescale of the coordinate system (Visium: global = full-res pixels,
            # hires image scaled by 1 / tissue_hires_scalef): keep the coordinate system as the frame
            xy_px, px_per_unit = xy_cs, 1.0
            scalef = scalef / k
        else:   # rotated / shifted image (e.g. an aligned H&E): its level 0 becomes the frame
            xy_px = (np.c_[xy_cs, np.ones(len(xy))] @ np.linalg.inv(T_img).T)[:, :2]
            px_per_unit = 1.0 / float(np.sqrt(abs(np.linalg.det(T_img[:2, :2]))))
    else:
        xy_px, px_per_unit = xy_cs, 1.0
    unit_scale = float(np.sqrt(abs(np.linalg.det(T_el[:2, :2]))))
    spot_px = diam * unit_scale * px_per_unit if np.isfinite(diam) else np.nan
    # counts
    Xsrc = t.layers[layer] if layer else t.layers["counts"] if "counts" in t.layers else t.X
    if Xsrc is None:
        raise ValueError(f"{where}: the table has no counts (X is empty and no 'counts' layer)")
    ids = pd.Index(t.obs_names.astype(str))               # barcodes / spot names when the table has them
    if ids.duplicated().any():
        ids = pd.Index([str(i) for i in inst])
    unique_spots(ids, where)
    X = check_sparse_counts(sp.csr_matrix(Xsrc), where, ids, t.var_names)
    X, genes = sum_duplicate_genes(X, t.var_names, where)
    out = ad.AnnData(X=X, obs=pd.DataFrame(index=ids), var=pd.DataFrame(index=genes))
    out.obsm["spatial"] = np.asarray(xy_px, dtype=np.float64)
    from spagraph.io._checks import check_positions
    check_positions(out.obsm["spatial"], where, out.obs_names)     # before the pitch below relies on it
    if not np.isfinite(spot_px):
        from scipy.spatial import cKDTree
        d, _ = cKDTree(out.obsm["spatial"]).query(out.obsm["spatial"], k=2)
        spot_px = float(np.median(d[:, 1])) * 0.55
    lib = library_id or f"{path.stem}_{region}"
    out.uns["spatial"] = {lib: {"images": images, "scalefactors": {
        "tissue_hires_scalef": scalef, "tissue_lowres_scalef": scalef, "spot_diameter_fullres": float(spot_px)}}}
    platform = str(t.uns.get("spagraph_platform", "spatialdata"))
    out.uns["spagraph_slice"] = {"library_id": lib, "platform": platform, "source": str(path), "has_image": bool(images),
                                 "image_kind": "image" if images else "none", "image_name": img_name or "",
                                 "sd_table": table, "sd_region": region, "sd_region_key": rk, "sd_instance_key": ik,
                                 "sd_coordinate_system": coordinate_system}
    out.obs["sd_instance_id"] = inst
    from spagraph.io.readers import attach_annotation_csv
    attach_annotation_csv(out, None)
    if label_key is not None:
        if label_key not in t.obs:
            raise ValueError(f"{where}: label_key {label_key!r} is not a column of the table; columns: {list(t.obs.columns)}")
        ann = pd.Series(t.obs[label_key].astype(object).to_numpy(), index=out.obs_names)
        ann = ann.where(ann.notna(), None)
        out.obs["annotation"] = pd.Categorical(ann.to_numpy())
        schema = label_schema if isinstance(label_schema, LabelSchema) else LabelSchema.from_dict(label_schema)
        cls, canc = schema.apply(ann, where)
        out.obs["label_class"], out.obs["cancer"] = cls, canc.array
    from spagraph.io.validate import check_slice
    return check_slice(out, source=where)


def _pick_cs(el) -> str:
    """``global`` when the element has it; else its only coordinate system; else the one it maps to with
    the identity (spatialdata-io's Visium: the dataset id, in full-resolution pixels)."""
    from spatialdata.transformations import Identity, get_transformation
    ts = get_transformation(el, get_all=True)
    if "global" in ts or not ts:
        return "global"
    if len(ts) == 1:
        return next(iter(ts))
    ident = [k for k, t in ts.items() if isinstance(t, Identity)]
    return ident[0] if ident else sorted(ts)[0]


def _pick_image(sdata, image, cs, where) -> Optional[str]:
    if image is not None:
        if image not in sdata.images:
            raise ValueError(f"{where}: no image {image!r}; images: {list(sdata.images)}")
        return image
    from spatialdata.transformations import get_transformation
    cands = [n for n, el in sdata.images.items() if cs in get_transformation(el, get_all=True)]
    if len(cands) == 1:
        return cands[0]
    for suffix in ("full_image", "he_image", "hires_image"):
        hit = [n for n in cands if n.endswith(suffix)]
        if hit:
            return hit[0]
    return cands[0] if cands else None


def _image_level(el) -> tuple[np.ndarray, float]:
    """The smallest level of an image element with longest side >= HIRES_MAX_PX (or level 0),
    as (H, W, 3) uint8 downscaled to HIRES_MAX_PX, and its scale relative to level 0."""
    if hasattr(el, "children") and not hasattr(el, "dims"):        # multiscale DataTree
        keys = sorted(el.children, key=lambda k: int(k.replace("scale", "")) if k.startswith("scale") else 0)
        arrs = [next(iter(el[k].ds.data_vars.values())) for k in keys]
    else:
        arrs = [el]
    w0 = arrs[0].sizes["x"]
    pick = arrs[0]
    for a in arrs[1:]:
        if max(a.sizes["x"], a.sizes["y"]) >= HIRES_MAX_PX:
            pick = a
    arr = np.asarray(pick.transpose("c", "y", "x").data)
    rgb = to_rgb_uint8(arr if arr.shape[0] in (1, 3, 4) else arr[0])
    small, s = downscale(rgb)
    return small, float(pick.sizes["x"]) / w0 * s


def write_spatialdata_predictions(adata: ad.AnnData, path: str | Path, table_name: str = "spagraph",
                                  columns: Optional[list[str]] = None, overwrite: bool = True) -> str:
    """Write ``obs[spagraph_*]`` (and ``uns["spagraph"]``) of a slice read by :func:`read_spatialdata`
    into its ``.zarr`` as table ``table_name`` annotating the same shapes / points.

    Parameters
    ----------
    columns : obs columns to write (default: every ``spagraph_*`` column, plus ``cancer`` when present).
    overwrite : replace an existing table of that name (else raise).

    The table is written with ``SpatialData.write_element``; if writing fails, the partial element is
    removed so the store never holds a half-written table. Returns the table name.
    """
    sd = _import_sd()
    from spatialdata.models import TableModel
    path = Path(path)
    meta = adata.uns.get("spagraph_slice", {})
    for k in ("sd_region", "sd_region_key", "sd_instance_key"):
        if k not in meta:
            raise ValueError(f"the slice was not read from a SpatialData store (uns['spagraph_slice'] lacks {k!r}); "
                             "read it with spagraph.io.read_spatialdata")
    if "sd_instance_id" not in adata.obs:
        raise ValueError("obs['sd_instance_id'] (the shapes' instance ids) is missing")
    cols = columns if columns is not None else [c for c in adata.obs.columns if c.startswith(PRED_PREFIX)]
    if not cols:
        raise ValueError(f"no prediction columns (obs['{PRED_PREFIX}*']) to write; run spagraph predict first")
    missing = [c for c in cols if c not in adata.obs]
    if missing:
        raise ValueError(f"obs columns {missing} not found")
    if columns is None and "cancer" in adata.obs:
        cols = cols + ["cancer"]
    rk, ik, region = meta["sd_region_key"], meta["sd_instance_key"], meta["sd_region"]
    obs = pd.DataFrame({ik: adata.obs["sd_instance_id"].to_numpy()}, index=adata.obs_names.astype(str))
    obs[rk] = pd.Categorical([region] * adata.n_obs)
    for c in cols:
        v = adata.obs[c]
        if isinstance(v.dtype, pd.CategoricalDtype):
            obs[c] = v.astype(str).astype("category").to_numpy()
        elif pd.api.types.is_extension_array_dtype(v.dtype):
            obs[c] = v.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        else:
            obs[c] = v.to_numpy()
    tbl = ad.AnnData(obs=obs)
    if "spagraph" in adata.uns:
        tbl.uns["spagraph"] = _plain(adata.uns["spagraph"])
    with _quiet():
        tbl = TableModel.parse(tbl, region=region, region_key=rk, instance_key=ik)
    with _quiet():
        sdata = sd.read_zarr(path)
    if table_name in sdata.tables:
        if not overwrite:
            raise ValueError(f"{path}: table {table_name!r} exists (overwrite=False)")
        with _quiet():
            sdata.delete_element_from_disk(table_name)
        del sdata.tables[table_name]
    sdata.tables[table_name] = tbl
    try:
        with _quiet():
            sdata.write_element(table_name)
    except BaseException:
        for sub in ("tables", "table"):
            p = path / sub / table_name
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)
        raise
    return table_name


def _plain(v):
    """uns values that zarr can store: dicts of str / numbers / lists; anything else as str."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (str, bool, int, float, np.integer, np.floating, np.ndarray)):
        return v
    return str(v)


def write_slice_spatialdata(adata: ad.AnnData, path: str | Path, region: str = "spots", table: str = "table") -> Path:
    """Write a spagraph slice as a SpatialData ``.zarr``: circles ``region`` (spot centres and
    diameters in full-resolution pixels, coordinate system ``global``), the hires image scaled back to
    ``global``, and ``table`` (counts + obs) annotating the circles. Atomic (written to a temporary
    folder, then renamed)."""
    sd = _import_sd()
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale
    from spagraph.utils import atomic_dir
    path = Path(path)
    lib = adata.uns.get("spagraph_slice", {}).get("library_id") or next(iter(adata.uns.get("spatial", {})), "slice")
    spat = adata.uns.get("spatial", {}).get(lib, {})
    sf = spat.get("scalefactors", {})
    diam = float(sf.get("spot_diameter_fullres", 1.0))
    xy = np.asarray(adata.obsm["spatial"], float)
    shapes = ShapesModel.parse(xy, geometry=0, radius=np.full(len(xy), diam / 2),
                               index=pd.RangeIndex(len(xy)), transformations={"global": Identity()})
    obs = adata.obs.copy()
    obs = obs[[c for c in obs.columns if not c.startswith(PRED_PREFIX)]]
    obs["region"] = pd.Categorical([region] * adata.n_obs)
    obs["spot_id"] = np.arange(adata.n_obs)
    for c in obs.columns:
        if pd.api.types.is_extension_array_dtype(obs[c].dtype) and not isinstance(obs[c].dtype, pd.CategoricalDtype):
            obs[c] = obs[c].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    tbl = ad.AnnData(X=sp.csr_matrix(adata.X), obs=obs.set_index(pd.Index(adata.obs_names.astype(str))),
                     var=pd.DataFrame(index=adata.var_names.astype(str)))
    tbl.uns["spagraph_platform"] = adata.uns.get("spagraph_slice", {}).get("platform", "unknown")
    with _quiet():
        tbl = TableModel.parse(tbl, region=region, region_key="region", instance_key="spot_id")
    images = {}
    img = spat.get("images", {}).get("hires")
    if img is not None:
        s = float(sf.get("tissue_hires_scalef", 1.0))
        images["he_image"] = Image2DModel.parse(np.moveaxis(np.asarray(img), -1, 0), dims=("c", "y", "x"),
                                                c_coords=["r", "g", "b"],
                                                transformations={"global": Scale([1 / s, 1 / s], axes=("x", "y"))})
    sdata = sd.SpatialData(images=images, shapes={region: shapes}, tables={table: tbl})
    with atomic_dir(path) as tmp:          # spatialdata refuses to write into an existing non-zarr folder:
        inner = tmp / "store.zarr"         # write one level down, then lift it into the temporary folder
        with _quiet():
            sdata.write(inner)
        for child in inner.iterdir():
            os.replace(child, tmp / child.name)
        inner.rmdir()
    return path
