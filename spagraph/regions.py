"""Tumour / boundary / healthy regions, their evaluation, and per-spot risk.

Definitions (all distances in spot pitches, the slice's median nearest-neighbour distance)
------------------------------------------------------------------------------------------
class change
    Two spots of different binary class (cancer 1 / non-cancer 0). Spots whose class is
    unknown (NaN: undetermined / unlabelled) belong to no class: they neither make nor
    receive a class change and get no region (``NA``).
boundary
    A classified spot is *boundary* when a spot of the other class lies within ``d``
    pitches of it (``distance_pitches=d``; the radius carries the graph builder's
    tolerance ``RADIUS_TOLERANCE`` so that a grid neighbour exactly one pitch away counts),
    or within ``k`` hops on the scale-1 spot graph (``k_hops=k``). Both sides of an
    interface are boundary, so a straight interface on a grid yields a band ``2d`` spots
    wide. With the defaults (``d = 1``) boundary = spots touching the other class.
tumour / healthy
    Classified spots that are not boundary: class 1 -> ``tumour``, class 0 -> ``healthy``.
high_risk
    (see :func:`risk_table`; label-free, so it works on slices without annotation) a spot the
    model *calls non-cancer* whose calibrated cancer probability, or its upper uncertainty
    bound ``probability + z * spread`` (spread = std over seeds / MC-dropout passes), reaches
    ``risk_level`` (default 0.25, ``z`` 2). High-risk spots are ranked by their distance to the
    nearest predicted tumour spot (closest first). A pathologist label, when present, is not used
    to flag; it only evaluates (how many high-risk spots are labelled cancer). It overrides the
    spot's other region.
tumour regions
    (see :func:`tumour_regions`) connected components of the predicted-cancer spots on the
    scale-1 spot graph (networkx); per region its size (spots), mean probability and boundary
    length (graph edges from the region to spots outside it, about one pitch of contour each).

Evaluation (:func:`boundary_scores`) derives the reference boundary the same way from the
pathologist's labels and compares it with the predicted boundary on the spots that carry a
label (predictions at unlabelled spots are ignored, so both boundaries come from the same spots):
``dice`` is the exact overlap (Dice = F1 of the two boundary sets), ``f1_tol`` the
tolerant contour F1 (a predicted boundary spot counts as correct when a reference boundary
spot lies within ``tolerance`` pitches, and vice versa for recall).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from spagraph.graph.neighbours import RADIUS_TOLERANCE, spot_pitch

REGIONS = ("tumour", "boundary", "healthy", "high_risk")


@dataclass
class RegionSettings:
    """How regions are drawn: ``distance_pitches`` (default 1) or ``k_hops`` (scale-1 graph hops)."""
    distance_pitches: float | None = 1.0
    k_hops: int | None = None
    max_spread: float = 0.1        # "low spread" for high-risk spots (std of the score)


# ------------------------------------------------------------------ positions


def positions_in_pitches(obj) -> np.ndarray:
    """Spot centres in pitch units from an AnnData (``obsm["spatial"]``), a PyG ``Data`` (``pos``,
    already in pitches) or an (n, 2) array (converted with its own pitch)."""
    if hasattr(obj, "obsm"):
        if "spatial" not in obj.obsm:
            raise ValueError("AnnData has no obsm['spatial'] (spot centres): cannot draw regions")
        pos = np.asarray(obj.obsm["spatial"], dtype=float)
        return pos / spot_pitch(pos)
    if hasattr(obj, "pos") and not isinstance(obj, np.ndarray):
        return np.asarray(obj.pos.detach().cpu().numpy() if hasattr(obj.pos, "detach") else obj.pos, dtype=float)
    pos = np.asarray(obj, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"expected AnnData, torch_geometric Data or (n, 2) positions; got array of shape {pos.shape}")
    return pos / spot_pitch(pos)


def _as_class(v, n: int, what: str) -> np.ndarray:
    """0/1/NaN float array of length n from a list / numpy / pandas (nullable) input."""
    if isinstance(v, (pd.Series, pd.arrays.IntegerArray, pd.arrays.FloatingArray, pd.arrays.BooleanArray)):
        arr = pd.array(v).astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    else:
        arr = np.array(v, dtype=float)          # a copy: callers' arrays are never modified
    if arr.shape != (n,):
        raise ValueError(f"{what} has shape {arr.shape}, expected ({n},) (one value per spot)")
    ok = np.isnan(arr) | (arr == 0) | (arr == 1)
    if not ok.all():
        raise ValueError(f"{what} must hold 0, 1 or NA; found {np.unique(arr[~ok])[:5]}")
    return arr


def _scale1_adjacency(obj, pos: np.ndarray):
    """Scale-1 neighbour graph as a scipy CSR matrix (from the PyG graph when given, else built)."""
    from scipy.sparse import coo_matrix
    n = len(pos)
    ei = getattr(obj, "edge_index_0", None) if not isinstance(obj, np.ndarray) else None
    if ei is not None:
        ei = np.asarray(ei.cpu().numpy() if hasattr(ei, "cpu") else ei)
        i, j = ei[0], ei[1]
    else:
        pairs = cKDTree(pos).query_pairs(RADIUS_TOLERANCE, output_type="ndarray")
        i, j = np.r_[pairs[:, 0], pairs[:, 1]], np.r_[pairs[:, 1], pairs[:, 0]]
    return coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()


def distance_to_other_class(obj, cls, k_hops: bool = False) -> np.ndarray:
    """Per spot, the distance (pitches, or scale-1 hops when ``k_hops``) to the nearest spot of the
    other class; ``inf`` when that class is absent, NaN for unclassified spots."""
    pos = positions_in_pitches(obj)
    c = _as_class(cls, len(pos), "class")
    out = np.full(len(pos), np.nan)
    adj = _scale1_adjacency(obj, pos) if k_hops else None
    for k in (0, 1):
        mine, other = np.where(c == k)[0], np.where(c == 1 - k)[0]
        if len(mine) == 0:
            continue
        if len(other) == 0:
            out[mine] = np.inf
            continue
        if k_hops:
            from scipy.sparse.csgraph import dijkstra
            d = dijkstra(adj, directed=False, indices=other, unweighted=True, min_only=True)
            out[mine] = d[mine]
        else:
            out[mine] = cKDTree(pos[other]).query(pos[mine], k=1)[0]
    return out


def boundary_mask(obj, cls, distance_pitches: float | None = 1.0, k_hops: int | None = None) -> np.ndarray:
    """Boolean (n,) mask of boundary spots of a 0/1/NaN class map (see the module docstring)."""
    if k_hops is not None:
        if int(k_hops) < 1:
            raise ValueError(f"k_hops must be >= 1, got {k_hops}")
        d = distance_to_other_class(obj, cls, k_hops=True)
        return np.nan_to_num(d, nan=np.inf) <= int(k_hops)
    if distance_pitches is None or distance_pitches <= 0:
        raise ValueError(f"distance_pitches must be > 0 (or give k_hops), got {distance_pitches}")
    d = distance_to_other_class(obj, cls)
    return np.nan_to_num(d, nan=np.inf) <= distance_pitches * RADIUS_TOLERANCE


def assign_regions(obj, score=None, pred=None, threshold: float | None = None,
                   distance_pitches: float | None = 1.0, k_hops: int | None = None,
                   high_risk=None) -> pd.Categorical:
    """Regions of one slice: categorical with categories ``tumour, boundary, healthy, high_risk``.

    Parameters
    ----------
    obj : AnnData (``obsm["spatial"]``), PyG slice graph (``pos`` in pitches, ``edge_index_0``)
        or (n, 2) positions.
    score, threshold : used when ``pred`` is not given (pred = score >= threshold).
    pred : (n,) 0/1 (NaN = unknown -> region NA).
    distance_pitches / k_hops : boundary width (module docstring); ``k_hops`` wins when set.
    high_risk : optional (n,) bool mask, put in the ``high_risk`` category.
    """
    pos = positions_in_pitches(obj)
    n = len(pos)
    if pred is None:
        if score is None or threshold is None:
            raise ValueError("assign_regions needs pred, or score and threshold")
        s = np.asarray(score, dtype=float)
        if s.shape != (n,):
            raise ValueError(f"score has shape {s.shape}, expected ({n},)")
        pred = np.where(np.isnan(s), np.nan, (s >= threshold).astype(float))
    c = _as_class(pred, n, "pred")
    bnd = boundary_mask(obj, c, distance_pitches, k_hops)
    lab = np.full(n, None, dtype=object)
    lab[c == 1] = "tumour"
    lab[c == 0] = "healthy"
    lab[bnd] = "boundary"
    if high_risk is not None:
        hr = np.asarray(high_risk, dtype=bool)
        if hr.shape != (n,):
            raise ValueError(f"high_risk has shape {hr.shape}, expected ({n},)")
        lab[hr] = "high_risk"
    return pd.Categorical(lab, categories=list(REGIONS))


# ------------------------------------------------------------------ evaluation


def boundary_scores(obj, label, pred, distance_pitches: float | None = 1.0, k_hops: int | None = None,
                    tolerance: float = 1.0) -> dict:
    """Predicted boundary vs the boundary drawn the same way from the pathologist's labels.

    Both boundaries are drawn on the same spot set, the labelled spots (the prediction at an
    undetermined spot is ignored, as that spot has no reference class), and compared there.
    Returns ``{"n", "n_ref", "n_pred", "dice", "precision", "recall", "f1_tol"}``; a score whose
    denominator is empty is ``None`` (never a made-up 0 or 1), except that two empty boundaries
    agree perfectly (dice 1).
    """
    pos = positions_in_pitches(obj)
    n = len(pos)
    y = _as_class(label, n, "label")
    p = _as_class(pred, n, "pred")
    p[np.isnan(y)] = np.nan      # same spot set on both sides: an unlabelled spot makes no class change
    ref = boundary_mask(obj, y, distance_pitches, k_hops)
    prd = boundary_mask(obj, p, distance_pitches, k_hops)
    m = ~np.isnan(y)
    ref, prd = ref & m, prd & m
    tp = int((ref & prd).sum())
    nr, npd = int(ref.sum()), int(prd.sum())
    out = {"n": int(m.sum()), "n_ref": nr, "n_pred": npd}
    out["dice"] = 1.0 if nr + npd == 0 else 2 * tp / (nr + npd)
    tol = tolerance * RADIUS_TOLERANCE
    if nr and npd:
        prec = float((cKDTree(pos[ref]).query(pos[prd], k=1)[0] <= tol).mean())
        rec = float((cKDTree(pos[prd]).query(pos[ref], k=1)[0] <= tol).mean())
    else:
        prec = None if npd == 0 else 0.0
        rec = None if nr == 0 else 0.0
    out["precision"], out["recall"] = prec, rec
    if prec is None or rec is None:
        out["f1_tol"] = 1.0 if (nr + npd == 0) else (0.0 if (prec == 0.0 or rec == 0.0) else None)
    else:
        out["f1_tol"] = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return out


# ------------------------------------------------------------------ risk


def nearest_distance(pos: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Distance (same units as ``pos``) from every spot to the nearest ``targets`` spot (mask);
    NaN when there is no target."""
    t = np.asarray(targets, dtype=bool)
    if not t.any():
        return np.full(len(pos), np.nan)
    return cKDTree(pos[t]).query(pos, k=1)[0]


def risk_table(obj, scores, threshold: float, label=None, pred=None, spot_ids=None, slice_name: str = "",
               max_spread: float | None = None, risk_level: float = 0.25, z: float = 2.0,
               spread=None) -> pd.DataFrame:
    """Per-spot risk of cancer in spots the model calls non-cancer (label-free; module docstring).

    Parameters
    ----------
    obj : AnnData / PyG graph / positions (as :func:`assign_regions`).
    scores : (n,) one calibrated probability per spot, or (r, n) of r seeds / MC-dropout passes.
    threshold : the slice's cut for the mean score, used when ``pred`` is not given.
    label : (n,) pathologist 0/1/NA, optional: reported (``label``), never used to flag.
    pred : (n,) the calls (default: mean score >= threshold).
    max_spread : when given, spots whose spread exceeds it are not flagged on their *upper bound*
        alone (their mean must reach ``risk_level``).
    risk_level, z : a predicted non-cancer spot is high-risk when ``score >= risk_level`` or
        ``score + z * spread >= risk_level``.
    spread : (n,) std to use instead of the std over the rows of ``scores`` (e.g. over MC-dropout
        passes while ``scores`` is the eval-mode probability).

    Returns
    -------
    DataFrame, one row per spot: ``slice, spot, score`` (mean), ``spread`` (std, 0 for one run),
    ``risk`` (= min(score + z * spread, 1), the upper bound; NaN for predicted-cancer / unknown
    spots), ``reference`` ("prediction"), ``reference_class`` (the call), ``label``,
    ``nearest_tumour_distance`` (pitches to the nearest predicted cancer spot; NaN when none),
    ``high_risk`` (bool), ``risk_rank`` (1 = the high-risk spot closest to a predicted tumour).
    """
    pos = positions_in_pitches(obj)
    n = len(pos)
    s = np.asarray(scores, dtype=float)
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2 or s.shape[1] != n:
        raise ValueError(f"scores must have shape ({n},) or (runs, {n}); got {np.shape(scores)}")
    if not 0 < risk_level <= 1:
        raise ValueError(f"risk_level must be in (0, 1], got {risk_level}")
    mean = s.mean(0)
    if spread is not None:
        spread = np.asarray(spread, dtype=float)
        if spread.shape != (n,):
            raise ValueError(f"spread has shape {spread.shape}, expected ({n},)")
    else:
        spread = s.std(0) if s.shape[0] > 1 else np.zeros(n)
    ref = _as_class(pred, n, "pred") if pred is not None else (mean >= threshold).astype(float)
    lab = _as_class(label, n, "label") if label is not None else np.full(n, np.nan)
    non_cancer = ref == 0
    upper = np.minimum(mean + z * spread, 1.0)
    risk = np.where(non_cancer, upper, np.nan)
    by_upper = upper >= risk_level
    if max_spread is not None:
        by_upper &= spread <= max_spread
    high = non_cancer & ((mean >= risk_level) | by_upper)
    dist = nearest_distance(pos, ref == 1)
    rank = np.full(n, np.nan)
    idx = np.flatnonzero(high)
    if len(idx):
        order = idx[np.lexsort((-mean[idx], np.nan_to_num(dist[idx], nan=np.inf)))]
        rank[order] = np.arange(1, len(order) + 1)
    ids = list(spot_ids) if spot_ids is not None else (
        list(map(str, obj.obs_names)) if hasattr(obj, "obs_names") else
        list(getattr(obj, "spot_ids", None) or range(n)))
    return pd.DataFrame({
        "slice": slice_name, "spot": ids, "score": mean, "spread": spread, "risk": risk,
        "reference": "prediction",
        "reference_class": pd.array(np.where(np.isnan(ref), np.nan, ref), dtype="Float32").astype("Int8"),
        "label": pd.array(lab, dtype="Float32").astype("Int8"),
        "nearest_tumour_distance": dist, "high_risk": high,
        "risk_rank": pd.array(rank, dtype="Float64").astype("Int64")})


# ------------------------------------------------------------------ tumour regions


def tumour_regions(obj, pred, prob=None) -> tuple[np.ndarray, pd.DataFrame]:
    """Connected components of predicted-cancer spots on the scale-1 spot graph.

    Parameters
    ----------
    obj : AnnData / PyG graph (its ``edge_index_0`` is used) / (n, 2) positions.
    pred : (n,) 0/1/NaN calls. prob : (n,) probabilities for the per-region mean (optional).

    Returns
    -------
    ``(region_id, table)``: (n,) int, 0 for spots outside every tumour region, 1.. by decreasing
    size (ties: the region holding the lowest spot index first); ``table`` one row per region:
    ``region, size, mean_probability, boundary_length`` (edges leaving the region),
    ``boundary_spots`` (region spots with a neighbour outside it).
    """
    import networkx as nx
    pos = positions_in_pitches(obj)
    n = len(pos)
    c = _as_class(pred, n, "pred")
    p = np.full(n, np.nan) if prob is None else np.asarray(prob, dtype=float)
    if p.shape != (n,):
        raise ValueError(f"prob has shape {p.shape}, expected ({n},)")
    adj = _scale1_adjacency(obj, pos).tocoo()
    tum = c == 1
    g = nx.Graph()
    g.add_nodes_from(np.flatnonzero(tum).tolist())
    keep = tum[adj.row] & tum[adj.col] & (adj.row != adj.col)
    g.add_edges_from(zip(adj.row[keep].tolist(), adj.col[keep].tolist()))
    comps = sorted((sorted(cc) for cc in nx.connected_components(g)), key=lambda cc: (-len(cc), cc[0]))
    rid = np.zeros(n, dtype=int)
    for k, cc in enumerate(comps, start=1):
        rid[cc] = k
    rows = []
    src, dst = adj.row, adj.col
    for k, cc in enumerate(comps, start=1):
        inside = rid == k
        leaving = inside[src] & ~inside[dst]
        rows.append({"region": k, "size": len(cc),
                     "mean_probability": float(np.nanmean(p[cc])) if np.isfinite(p[cc]).any() else None,
                     "boundary_length": int(leaving.sum()), "boundary_spots": int(len(np.unique(src[leaving])))})
    table = pd.DataFrame(rows, columns=["region", "size", "mean_probability", "boundary_length", "boundary_spots"])
    return rid, table
