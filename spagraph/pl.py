"""Plots, scanpy style: maps of a predicted slice over its H&E.

``spagraph.pl.regions(adata)`` and ``spagraph.pl.scores(adata)`` read what
``Model.predict`` / ``spagraph predict`` wrote (``obs["spagraph_*"]``, ``uns["spagraph"]``) and
draw with :func:`spagraph.viz.spatial.plot_slice_panels`, the one drawing function that ``run``,
``predict`` and ``report`` share (plain H&E panel, semi-transparent spots, micron scale bar,
threshold and rule in the title, legends outside the data).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["regions", "scores", "slice_maps"]


def _need(adata):
    if "spagraph_score" not in adata.obs:
        raise ValueError("no spagraph predictions in this AnnData: run model.predict(adata) or spagraph predict first")


def slice_maps(adata, path: str | Path | None = None, panels=("score", "regions", "risk"), title: str | None = None,
               show: bool | None = None):
    """Draw the chosen panels (``label``, ``score``, ``uncertainty``, ``pred``, ``regions``, ``risk``)
    of a predicted slice. Returns the PNG path when ``path`` is given, else the matplotlib figure."""
    from spagraph.viz.spatial import plot_slice_panels, slice_image
    _need(adata)
    img, scale = slice_image(adata)
    obs = adata.obs
    u = adata.uns.get("spagraph", {}) or {}
    label = None
    if "label" in panels:
        key = "cancer"
        if key in obs and obs[key].notna().any():
            label = obs[key].astype("Float32").to_numpy(dtype=float, na_value=np.nan)
    kw = dict(label=label,
              score=obs["spagraph_score"].to_numpy() if "score" in panels else None,
              uncertainty=obs["spagraph_uncertainty"].to_numpy() if "uncertainty" in panels else None,
              pred=obs["spagraph_pred"].to_numpy(dtype=float) if "pred" in panels else None,
              regions=obs["spagraph_region"].astype(object).to_numpy() if "regions" in panels else None,
              risk=obs["spagraph_risk"].to_numpy() if "risk" in panels else None,
              high_risk=(obs["spagraph_region"] == "high_risk").to_numpy() if "risk" in panels else None)
    name = title or str((adata.uns.get("spagraph_slice", {}) or {}).get("library_id") or "")
    return plot_slice_panels(adata.obsm["spatial"], path, title=name, image=img, image_scale=scale,
                             threshold=u.get("threshold"), threshold_method=u.get("threshold_method"),
                             platform=(adata.uns.get("spagraph_slice", {}) or {}).get("platform"), **kw)


def regions(adata, path: str | Path | None = None, **kw):
    """H&E beside the tumour / boundary / healthy / high-risk regions."""
    return slice_maps(adata, path, panels=("regions",), **kw)


def scores(adata, path: str | Path | None = None, **kw):
    """H&E beside the cancer score (and the thresholded prediction)."""
    return slice_maps(adata, path, panels=("score", "pred"), **kw)
