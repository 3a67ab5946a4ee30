"""Spatial neighbourhoods at several scales, in units of the slice's spot pitch.

Everything here is vectorised over spots (KD-tree queries, no Python loop over spots),
so that a 1M-spot slice builds in seconds.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

# A neighbour exactly one pitch away must fall inside scale 1.0 despite rounding of
# coordinates (her2st pixel positions are rounded; hex grids are not perfectly regular).
RADIUS_TOLERANCE = 1.1


def spot_pitch(pos: np.ndarray) -> float:
    """Median nearest-neighbour distance of a point cloud.

    Parameters
    ----------
    pos : (n, 2) float array of spot centres.

    Returns
    -------
    float, the pitch in the units of ``pos``. Raises ``ValueError`` with fewer than
    two distinct spots.
    """
    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"spot coordinates must have shape (n, 2), got {pos.shape}")
    if len(pos) < 2:
        raise ValueError(f"a slice needs at least 2 spots to define a spot pitch, got {len(pos)}")
    if not np.isfinite(pos).all():
        bad = int((~np.isfinite(pos)).any(axis=1).sum())
        raise ValueError(f"{bad} spot(s) have NaN/Inf coordinates")
    # stacked duplicates must not hide the real neighbour distance: the distinct rows, in
    # lexicographic order (what np.unique(pos, axis=0) returns, ~8x faster at 10^6 spots)
    srt = pos[np.lexsort((pos[:, 1], pos[:, 0]))]
    distinct = srt[np.r_[True, (srt[1:] != srt[:-1]).any(1)]]
    if len(distinct) < 2:
        raise ValueError("all spots share the same coordinates: cannot define a spot pitch")
    d, _ = cKDTree(distinct).query(distinct, k=2)
    return float(np.median(d[:, 1]))


def direction_bins(offset: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin the angle of 2-D offset vectors into ``n_bins`` equal sectors.

    Bin 0 is centred on the +x direction; bins advance counter-clockwise (in the
    (x, y) frame of ``offset``).

    Parameters
    ----------
    offset : (e, 2) array, source minus destination position.
    n_bins : number of sectors B >= 1.

    Returns
    -------
    (e,) int64 array with values in ``[0, n_bins)``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    ang = np.arctan2(offset[:, 1], offset[:, 0])  # (-pi, pi]
    width = 2 * np.pi / n_bins
    b = np.floor((ang + width / 2) / width).astype(np.int64) % n_bins
    return b


def multiscale_edges(pos: np.ndarray, scales: list[float], n_bins: int = 8,
                     pitch: float | None = None, shells: bool = False) -> list[dict[str, np.ndarray]]:
    """Directed neighbour edges for each scale.

    Scale ``s`` links every pair of spots closer than ``s * pitch * RADIUS_TOLERANCE``
    (a disc). With ``shells=True`` scale ``k`` keeps only pairs farther than scale ``k-1``'s
    radius (rings), so scales carry disjoint neighbourhoods.

    Returns
    -------
    list with one dict per scale: ``edge_index`` (2, e) int64 rows (source, destination),
    both directions present; ``dir`` (e,) int64 direction bin of source seen from
    destination; ``dist`` (e,) float32 distance in pitch units.
    """
    pos = np.asarray(pos, dtype=np.float64)
    if pitch is None:
        pitch = spot_pitch(pos)
    scales = sorted(float(s) for s in scales)
    if not scales or scales[0] <= 0:
        raise ValueError(f"scales must be positive numbers of spot pitches, got {scales}")
    tree = cKDTree(pos)
    r_max = scales[-1] * pitch * RADIUS_TOLERANCE
    pairs = tree.query_pairs(r_max, output_type="ndarray")  # (p, 2) with i < j
    i, j = pairs[:, 0], pairs[:, 1]
    d = _chunked(lambda a, b: np.linalg.norm(pos[i[a:b]] - pos[j[a:b]], axis=1) / pitch, len(i), np.float64)
    del pairs
    # Both directions once at the largest radius, grouped by destination (then source), with
    # their direction bins; each scale is a boolean subset of it, which keeps that order. (Sorting
    # and binning once instead of once per scale: about a third less build time at 1M spots.)
    src_all = np.concatenate([i, j])
    dst_all = np.concatenate([j, i])
    del i, j
    order = np.lexsort((src_all, dst_all))
    src_all, dst_all = src_all[order], dst_all[order]
    d_all = np.concatenate([d, d])[order]
    del d, order
    bins_all = _chunked(lambda a, b: direction_bins(pos[src_all[a:b]] - pos[dst_all[a:b]], n_bins), len(src_all), np.int64)
    out = []
    prev_r = -1.0
    for s in scales:
        r = s * RADIUS_TOLERANCE
        keep = d_all <= r
        if shells:
            keep &= d_all > prev_r
        prev_r = r
        everything = bool(keep.all())
        src, dst = (src_all, dst_all) if everything else (src_all[keep], dst_all[keep])
        dist = d_all.astype(np.float32) if everything else d_all[keep].astype(np.float32)
        bins = bins_all if everything else bins_all[keep]
        out.append({"edge_index": np.stack([src, dst]).astype(np.int64), "dir": bins, "dist": dist})
    return out


def _chunked(fn, n: int, dtype, chunk: int = 1 << 20) -> np.ndarray:
    """``fn(0, n)`` computed as ``fn(a, b)`` over row chunks into one array, on torch's intra-op
    thread count (numpy's elementwise kernels release the GIL): the same values, elementwise."""
    import torch
    threads = torch.get_num_threads()
    if threads <= 1 or n <= 2 * chunk:
        return fn(0, n)
    from concurrent.futures import ThreadPoolExecutor
    out = np.empty(n, dtype=dtype)

    def one(a):
        out[a:min(a + chunk, n)] = fn(a, min(a + chunk, n))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(0, n, chunk)))
    return out


# Above this many spots feature_knn_edges switches from exact to approximate search (method="auto").
ANN_THRESHOLD = 200_000


def feature_knn_edges(x: np.ndarray, k: int, chunk: int = 2048, method: str = "auto",
                      ann_threshold: int = ANN_THRESHOLD, seed: int = 0) -> np.ndarray:
    """Directed edges from each spot's ``k`` nearest neighbours in a feature space (Euclidean,
    the spot itself excluded) to the spot: the slice's *expression-neighbour* graph.

    Exact search: a KD-tree up to 8 dimensions, beyond it blocks of ``chunk`` rows against all
    spots (float32 distances of the centred features, ``torch.topk`` of k + 8 candidates, then
    those ranked by exact float64 distances), memory ``chunk * n * 4`` bytes. Vectorised, no loop
    over spots, but O(n^2 d): on one core about 2 s for 20k spots and 50 s for 100k spots in 20
    dimensions; meant for slices up to some 10^5 spots.

    Above ``ann_threshold`` spots (``method="auto"``) the search is approximate: see
    :func:`approx_knn` (recall@10 against exact search is printed by ``benchmarks/scale.py``).
    ``method``: "auto" | "exact" | "ivf" (:func:`approx_knn`) | "pynndescent".

    Parameters
    ----------
    x : (n, d) features of one slice (e.g. its gene embedding).
    k : neighbours per spot; fewer when the slice has ``k`` spots or less.

    Returns
    -------
    (2, n * min(k, n - 1)) int64 rows (source = neighbour, destination = spot), grouped by
    destination, nearest first. Not symmetric.
    """
    import torch
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-d (spots, dims) array, got shape {x.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not np.isfinite(x).all():
        raise ValueError("features hold NaN/Inf values")
    n = len(x)
    kk = min(int(k), n - 1)
    if kk < 1:
        return np.zeros((2, 0), dtype=np.int64)
    if method not in ("auto", "exact", "ivf", "pynndescent"):
        raise ValueError(f"feature kNN method must be auto, exact, ivf or pynndescent, got {method!r}")
    if method == "auto":
        method = "ivf" if n > ann_threshold and x.shape[1] > 8 else "exact"
    if method == "ivf":
        src = approx_knn(x, kk, seed=seed)
    elif method == "pynndescent":
        from pynndescent import NNDescent
        idx, _ = NNDescent(x.astype(np.float32), n_neighbors=min(n, max(2 * kk, 30)), random_state=seed,
                           low_memory=True).neighbor_graph
        src = _drop_self(idx, kk)
    elif x.shape[1] <= 8:
        _, idx = cKDTree(x).query(x, k=kk + 1)
        idx = np.asarray(idx).reshape(n, kk + 1)
        rows = np.arange(n)[:, None]
        is_self = idx == rows
        # drop the spot itself (column 0 unless duplicates tie with it; no self found: the farthest)
        drop = np.where(is_self.any(1), is_self.argmax(1), kk)
        keep = np.ones_like(idx, dtype=bool)
        keep[np.arange(n), drop] = False
        src = idx[keep].reshape(n, kk)
    else:
        xc = x - x.mean(0)                                   # centred: less cancellation in float32
        t = torch.from_numpy(xc.astype(np.float32))
        sq = (t * t).sum(1)
        n_cand = min(kk + 8, n - 1)
        src = np.empty((n, kk), dtype=np.int64)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            # |x_j|^2 - 2 x_i.x_j ranks the j like |x_i - x_j|^2 does (|x_i|^2 is constant per row)
            d2 = torch.addmm(sq[None, :], t[a:b], t.T, alpha=-2.0)
            d2[torch.arange(b - a), torch.arange(a, b)] = float("inf")      # never the spot itself
            cand = torch.topk(d2, n_cand, dim=1, largest=False, sorted=False).indices.numpy()
            # float32 candidates, ranked again by exact float64 distances (ties: lower index first)
            exact = ((xc[cand] - xc[a:b, None]) ** 2).sum(2)
            order = np.lexsort((cand, exact), axis=1)[:, :kk]
            src[a:b] = np.take_along_axis(cand, order, axis=1)
    return np.stack([src.ravel(), np.repeat(np.arange(n), kk)]).astype(np.int64)


def _drop_self(idx: np.ndarray, kk: int) -> np.ndarray:
    """(n, m) neighbour lists, nearest first, possibly holding the row itself -> (n, kk) without it."""
    n = len(idx)
    rows = np.arange(n)[:, None]
    keep = idx != rows
    order = np.argsort(~keep, axis=1, kind="stable")      # non-self entries first, order kept
    return np.take_along_axis(idx, order, axis=1)[:, :kk]


def approx_knn(x: np.ndarray, k: int, seed: int = 0, n_probe: int | None = None, oversample: int = 8,
               cell_size: int = 512) -> np.ndarray:
    """Approximate ``k`` nearest neighbours (Euclidean, self excluded) of every row of ``x``: (n, k),
    nearest first (ties: lower index first).

    Inverted-file search (:func:`_ivf_knn`): k-means cells of about ``cell_size`` rows; every
    row probes the ``n_probe`` cells whose centroids are nearest to it and gets the exact
    ``k`` nearest among their members (float32 products, the best ``k + oversample`` re-ranked by
    exact float64 distances). Cost ~ ``n * n_probe * cell_size * d`` flops: linear in ``n`` for a
    fixed probe count. Recall falls as the cell count grows at a fixed probe count (expression-like
    data, 20 dims, 8 probes of 512-row cells: recall@10 0.994 at 2.5x10^5 rows, 0.92 at 10^6), so
    the default probe count grows with the square root of the cell count (:func:`default_probes`;
    16 probes at 10^6 rows). Deterministic for a given ``seed``.

    Why hand-written: on this project's CPU machines pynndescent spends about 2 min compiling
    (numba) before each run's first search and ~25 s per 10^5 spots after it; faiss (not a
    dependency) took as long as this for its HNSW index at 2.5x10^5 rows (27 s CPU, recall 0.98).
    """
    import torch
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    k = min(int(k), n - 1)
    xc = x - x.mean(0)
    t = torch.from_numpy(xc.astype(np.float32))
    n_c = n_cells(n, cell_size)
    return _ivf_knn(xc, t, k, seed, default_probes(n_c) if n_probe is None else n_probe, oversample, cell_size)


def n_cells(n: int, cell_size: int = 512) -> int:
    """k-means cells of the approximate kNN for ``n`` rows."""
    return max(1, min(n // max(1, int(cell_size)), int(np.sqrt(n) * 8)))


def default_probes(n_c: int) -> int:
    """Cells each row probes: 8 up to ~500 cells, then growing as the square root of the cell
    count (16 at ~2000 cells, i.e. 10^6 rows of 512-row cells)."""
    return int(max(8, round(8 * np.sqrt(n_c / 500))))


def _ivf_knn(xc: np.ndarray, t, k: int, seed: int, n_probe: int, oversample: int, cell_size: int) -> np.ndarray:
    """Stage 1 of :func:`approx_knn`: inverted-file search over k-means cells, every row probing
    the ``n_probe`` cells whose centroids are nearest to *it* (not to its cell's centroid: a row
    near its cell's border needs the cells across that border).

    Exact within the probed cells, in two dense passes: (1) each cell's rows against its own
    members (one matrix product per cell) give every row its ``k + oversample`` best so far and
    their largest distance, a bound; (2) all rows probing cell ``j`` against ``j``'s members, one
    matrix product per block, keeping only entries under the row's bound (few: most of a probed
    cell is farther than the own cell's best). The kept entries and the first pass's lists are
    re-ranked together by exact float64 distances. Selection work thus touches each row's own
    cell only; the other probes cost a product and a comparison."""
    import torch
    n = len(xc)
    sq = (t * t).sum(1)
    n_c = n_cells(n, cell_size)
    p = min(int(n_probe), n_c)
    gen = torch.Generator().manual_seed(seed)
    sample = t[torch.randperm(n, generator=gen)[: min(n, 32 * n_c)]]
    cent = sample[torch.randperm(len(sample), generator=gen)[:n_c]].clone()

    def nearest(rows: torch.Tensor, m: int) -> torch.Tensor:
        out = torch.empty(len(rows), m, dtype=torch.long)
        csq = (cent * cent).sum(1)
        for a in range(0, len(rows), 16384):
            b = min(a + 16384, len(rows))
            d = torch.addmm(csq[None, :], rows[a:b], cent.T, alpha=-2.0)
            out[a:b] = d.argmin(1)[:, None] if m == 1 else torch.topk(d, m, dim=1, largest=False).indices
        return out

    for _ in range(10):                                   # Lloyd iterations on the sample
        lab = nearest(sample, 1)[:, 0]
        sums = torch.zeros_like(cent).index_add_(0, lab, sample)
        cnt = torch.bincount(lab, minlength=n_c).to(sums.dtype)
        nz = cnt > 0
        cent[nz] = sums[nz] / cnt[nz, None]
    probes = nearest(t, p).numpy()                         # (n, p), the row's own cell first
    lab = probes[:, 0]
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(n_c + 1))
    m = min(k + oversample, n - 1)
    kk = min(k, m)
    # pass 1: own cell. d2 below omits the row's own |x|^2 (a constant per row), `qsq` adds it back
    qsq = sq.numpy()
    own_i = np.full((n, m), -1, dtype=np.int64)
    own_d = np.full((n, m), np.inf, dtype=np.float32)
    bound = np.full(n, np.inf, dtype=np.float32)
    for j in range(n_c):
        mem = order[bounds[j]:bounds[j + 1]]
        if len(mem) < 2:
            continue
        mt = torch.from_numpy(mem)
        cand_t, cand_sq = t[mt].T.contiguous(), sq[mt][None, :]
        mm = min(m, len(mem) - 1)
        for a in range(0, len(mem), 4096):
            qa = mem[a:a + 4096]
            d2 = torch.addmm(cand_sq, t[torch.from_numpy(qa)], cand_t, alpha=-2.0)
            d2[torch.arange(len(qa)), torch.arange(a, a + len(qa))] = float("inf")   # never the row itself
            top = torch.topk(d2, mm, dim=1, largest=False, sorted=True)
            own_i[qa, :mm] = mem[top.indices.numpy()]
            own_d[qa, :mm] = top.values.numpy()
            if mm >= kk:       # the k-th best so far, with a little slack for float32 rounding
                kth = top.values[:, kk - 1].numpy() + qsq[qa]
                bound[qa] = kth + 1e-4 * np.abs(kth) + 1e-6 - qsq[qa]
    # pass 2: the other probed cells, entries under each row's bound only
    other = probes[:, 1:].ravel()
    rows_of = np.repeat(np.arange(n), p - 1)
    by_cell = np.argsort(other, kind="stable")
    o_bounds = np.searchsorted(other[by_cell], np.arange(n_c + 1))
    hit_q, hit_c, hit_d = [], [], []
    bound_t = torch.from_numpy(bound)
    for j in range(n_c):
        mem = order[bounds[j]:bounds[j + 1]]
        qs_all = rows_of[by_cell[o_bounds[j]:o_bounds[j + 1]]]
        if len(mem) == 0 or len(qs_all) == 0:
            continue
        mt = torch.from_numpy(mem)
        cand_t, cand_sq = t[mt].T.contiguous(), sq[mt][None, :]
        for a in range(0, len(qs_all), 4096):
            qs = torch.from_numpy(qs_all[a:a + 4096])
            d2 = torch.addmm(cand_sq, t[qs], cand_t, alpha=-2.0)
            r, c = torch.nonzero(d2 < bound_t[qs][:, None], as_tuple=True)
            hit_q.append(qs[r].numpy().astype(np.int32)); hit_c.append(mem[c.numpy()].astype(np.int32))
            hit_d.append(d2[r, c].numpy())
    # merge: per row, its own-cell list and its kept entries, the m smallest by float32 distance
    # (one sort of a (row, distance) key), then re-ranked by exact float64 distances
    # (int32 row / candidate ids: the kept entries are the largest arrays here, ~50 per row at 10^6)
    q_all = np.concatenate([np.repeat(np.arange(n, dtype=np.int32), m)] + hit_q)
    del hit_q
    c_all = np.concatenate([own_i.ravel().astype(np.int32)] + hit_c)
    del hit_c, own_i
    d_all = np.concatenate([own_d.ravel()] + hit_d)
    del hit_d, own_d
    d_all += qsq[q_all]
    np.maximum(d_all, 0, out=d_all)                                    # true squared distance, >= 0
    d_all[c_all < 0] = np.inf                                          # empty slots sort last
    key = q_all.astype(np.int64) << 32
    key |= d_all.view(np.uint32)                # bits of a non-negative float32 sort like its value
    del d_all
    o = np.argsort(key)
    del key
    q_all, c_all = q_all[o], c_all[o]
    del o
    start = np.searchsorted(q_all, np.arange(n))
    rank = np.arange(len(q_all)) - start[q_all]
    sel = rank < m
    cand = np.full((n, m), -1, dtype=np.int64)
    cand[q_all[sel], rank[sel]] = c_all[sel]
    del q_all, c_all, rank, sel
    if (cand[:, :k] < 0).any():
        raise RuntimeError("approximate kNN found fewer than k candidates for some rows")
    src = np.empty((n, k), dtype=np.int64)
    for a in range(0, n, 65536):
        rows = np.arange(a, min(a + 65536, n))
        top = cand[rows]
        exact = ((xc[np.maximum(top, 0)] - xc[rows, None]) ** 2).sum(2)
        exact[top < 0] = np.inf
        o = np.lexsort((top, exact), axis=1)[:, :k]
        src[rows] = np.take_along_axis(top, o, axis=1)
    return src
