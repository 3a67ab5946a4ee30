"""Spatial tiles with a halo, for slices too large for one full-graph pass.

A tile's *interior* is the spots of one square cell of the slice; its *halo* is every
spot that sends an edge (at any scale) into the interior. Because the model does one
MSFA hop per scale, the interior spots' outputs on the tile subgraph equal their outputs
on the full graph: the halo is exactly as wide as the largest MSFA radius. Cost is
linear in the tile's edges (edges are grouped by destination; no pass over all edges
per tile).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch_geometric.data import Data

NODE_KEYS = ("x_img", "x_gene", "has_img", "has_gene", "pos", "y", "label_mask")


def _dst_ptr(edge_index: torch.Tensor, n: int) -> np.ndarray:
    dst = edge_index[1].numpy()
    if len(dst) > 1 and (np.diff(dst) < 0).any():
        raise ValueError("tiling needs edges grouped by destination (as build_slice_graph writes them)")
    return np.searchsorted(dst, np.arange(n + 1))


def _gather_ranges(ptr: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    start, stop = ptr[nodes], ptr[nodes + 1]
    lens = stop - start
    if lens.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    offs = np.repeat(start - np.cumsum(np.r_[0, lens[:-1]]), lens)
    return np.arange(lens.sum()) + offs


def iter_tiles(data: Data, tile_size: float = 40.0, shuffle: bool = False,
               generator: np.random.Generator | None = None) -> Iterator[tuple[Data, torch.Tensor]]:
    """Yield ``(subgraph, interior_global_index)`` for each non-empty spatial tile.

    ``tile_size`` is in spot pitches (``data.pos`` units). The subgraph holds the interior
    spots first, then the halo; ``subgraph.interior`` (n_sub,) bool marks the interior and
    ``subgraph.interior_first`` says so (:class:`~spagraph.nn.model.SpaGraphNet` then runs its
    fusion and head on the interior rows only).
    """
    n = data.num_nodes
    pos = data.pos.numpy()
    cell = np.floor(pos / tile_size).astype(np.int64)
    cid = cell[:, 0] * (cell[:, 1].max() + 1) + cell[:, 1]
    order = np.argsort(cid, kind="stable")
    bounds = np.flatnonzero(np.r_[True, cid[order][1:] != cid[order][:-1], True])
    tiles = [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
    if shuffle:
        (generator or np.random.default_rng(0)).shuffle(tiles)
    ptrs = [_dst_ptr(data[f"edge_index_{k}"], n) for k in range(data.num_scales)]
    local = np.full(n, -1, dtype=np.int64)
    for interior in tiles:
        eids = [_gather_ranges(ptrs[k], interior) for k in range(data.num_scales)]
        srcs = [data[f"edge_index_{k}"][0].numpy()[e] for k, e in enumerate(eids)]
        allsrc = np.concatenate(srcs) if srcs else np.zeros(0, np.int64)
        in_int = np.zeros(n, dtype=bool); in_int[interior] = True
        halo = np.unique(allsrc[~in_int[allsrc]])
        nodes = np.concatenate([interior, halo])
        local[nodes] = np.arange(len(nodes))
        sub = Data(num_nodes=len(nodes))
        idx = torch.from_numpy(nodes)
        for key in NODE_KEYS:
            sub[key] = data[key][idx]
        for k, e in enumerate(eids):
            ei = data[f"edge_index_{k}"][:, torch.from_numpy(e)].numpy()
            sub[f"edge_index_{k}"] = torch.from_numpy(local[ei])
            sub[f"edge_dir_{k}"] = data[f"edge_dir_{k}"][torch.from_numpy(e)]
        sub.num_scales, sub.n_dir_bins = data.num_scales, data.n_dir_bins
        sub.interior = torch.zeros(len(nodes), dtype=torch.bool)
        sub.interior[: len(interior)] = True
        sub.interior_first = True      # SpaGraphNet scores these rows only (the halo feeds messages)
        local[nodes] = -1
        yield sub, torch.from_numpy(interior)
