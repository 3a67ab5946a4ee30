"""Region annotations drawn as polygons -> spot labels.

Pathologists annotate regions on the H&E, not spots: QuPath / napari export GeoJSON polygons (in image
pixels) and Xenium Explorer exports "selections" as CSV vertices (in microns). A spot takes the label of
the smallest polygon that contains its centre (so a tumour drawn inside a tissue outline wins), and NA
when no polygon contains it.

Formats:

* GeoJSON (``.geojson`` / ``.json``): a FeatureCollection (or a list of Features); Polygon or
  MultiPolygon geometries (holes respected); the label is ``properties.classification.name`` (QuPath),
  else ``properties.name``, else ``properties.label``.
* Xenium Explorer selection CSV: optional ``#`` comment lines, then columns ``Selection,X,Y``
  (one row per vertex, microns); the label is the selection name.

matplotlib's ``Path.contains_points`` does the point-in-polygon test (shapely would add a dependency
for the same result).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def is_polygon_file(path) -> bool:
    """GeoJSON by suffix; a CSV whose first non-comment line names Selection, X and Y columns."""
    p = Path(path)
    if p.suffix.lower() in (".geojson", ".json"):
        return True
    if p.suffix.lower() != ".csv" or not p.exists():
        return False
    with open(p, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            cols = {c.strip().strip('"').lower() for c in line.split(",")}
            return {"selection", "x", "y"} <= cols
    return False


def read_polygons(path) -> tuple[list[tuple[str, list[np.ndarray]]], str]:
    """``([(label, [outer ring, hole, ...]), ...], units)``; units ``"pixels"`` (GeoJSON) or ``"um"``
    (Xenium Explorer CSV). Errors name the file and the feature / selection."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"polygon annotation not found: {p}")
    if p.suffix.lower() == ".csv":
        df = pd.read_csv(p, comment="#")
        cols = {c.lower(): c for c in df.columns}
        if not {"selection", "x", "y"} <= set(cols):
            raise ValueError(f"{p}: a Xenium Explorer selection CSV needs columns Selection, X, Y; found {list(df.columns)}")
        out = []
        for name, g in df.groupby(cols["selection"], sort=False):
            ring = g[[cols["x"], cols["y"]]].to_numpy(dtype=float)
            if len(ring) < 3:
                raise ValueError(f"{p}: selection {name!r} has {len(ring)} vertices; a polygon needs 3")
            out.append((str(name), [ring]))
        return out, "um"
    try:
        gj = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid GeoJSON: {e}") from None
    feats = gj.get("features", []) if isinstance(gj, dict) else gj
    if isinstance(gj, dict) and gj.get("type") == "Feature":
        feats = [gj]
    out = []
    for i, f in enumerate(feats):
        props = f.get("properties") or {}
        cls = props.get("classification")
        label = (cls.get("name") if isinstance(cls, dict) else cls) or props.get("name") or props.get("label")
        if not label:
            raise ValueError(f"{p}: feature {i} has no label (properties.classification.name / name / label)")
        geom = f.get("geometry") or {}
        kind, coords = geom.get("type"), geom.get("coordinates")
        polys = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else None
        if polys is None:
            raise ValueError(f"{p}: feature {i} ({label!r}) is a {kind}, expected Polygon or MultiPolygon")
        for rings in polys:
            out.append((str(label), [np.asarray(r, dtype=float)[:, :2] for r in rings]))
    if not out:
        raise ValueError(f"{p}: no polygon in the file")
    return out, "pixels"


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def labels_from_polygons(xy: np.ndarray, polygons) -> np.ndarray:
    """Label of the smallest containing polygon per point (object array, NaN where none contains it)."""
    from matplotlib.path import Path as MPath
    xy = np.asarray(xy, float)
    lab = np.full(len(xy), np.nan, dtype=object)
    best = np.full(len(xy), np.inf)
    for name, rings in polygons:
        inside = MPath(rings[0]).contains_points(xy)
        for hole in rings[1:]:
            inside &= ~MPath(hole).contains_points(xy)
        a = _area(rings[0])
        take = inside & (a < best)
        lab[take], best[take] = name, a
    return lab


def attach_polygon_labels(adata, path, label_schema=None, um_to_fullres=None) -> None:
    """Labels from polygons into ``obs["annotation"]``, ``obs["label_class"]``, ``obs["cancer"]``.

    GeoJSON coordinates are taken as full-resolution pixels of the slice; Xenium Explorer CSVs are
    microns, mapped with ``um_to_fullres`` ((n, 2) microns -> (n, 2) full-resolution pixels).
    """
    from spagraph.io.labels import LabelSchema
    polys, units = read_polygons(path)
    if units == "um":
        if um_to_fullres is None:
            raise ValueError(f"{path}: polygons in microns, but this slice has no micron -> pixel mapping")
        polys = [(name, [um_to_fullres(r) for r in rings]) for name, rings in polys]
    lab = labels_from_polygons(np.asarray(adata.obsm["spatial"])[:, :2], polys)
    if pd.isna(lab).all():
        raise ValueError(f"{path}: no spot centre falls inside any polygon (are the polygons in this slice's "
                         f"full-resolution pixels{'' if units == 'um' else ', not microns'}?)")
    ann = pd.Series(lab, index=adata.obs_names)
    adata.obs["annotation"] = pd.Categorical(ann.to_numpy())
    schema = label_schema if isinstance(label_schema, LabelSchema) else LabelSchema.from_dict(label_schema)
    cls, canc = schema.apply(ann, str(path))
    adata.obs["label_class"], adata.obs["cancer"] = cls, canc.array
