"""Tile mini-batches over all training slices: many optimiser steps per epoch on small data.

Full-graph training takes one optimiser step per training slice and epoch (about 6 on her2st).
Here every training slice is cut once into spatial tiles with a halo
(:func:`spagraph.train.tiles.iter_tiles`: the interior spots' outputs on a tile equal their
outputs on the whole slice), and each epoch shuffles the tiles of *all* slices together and
merges ``tiles_per_step`` of them into one disjoint graph per optimiser step. The loss counts
each tile's interior spots only, so one epoch sees every training spot exactly once
(:func:`epoch_coverage`, checked in ``tests/test_minibatch.py``), mixed across slices and
patients within a step.

Why hand-written: ``torch_geometric.data.Batch`` would turn the per-graph integers
(``num_scales``, ``n_dir_bins``) into tensors and offset only keys it recognises; merging the
handful of per-node and per-edge tensors the model reads is a few lines.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch_geometric.data import Data

from spagraph.train.tiles import NODE_KEYS, iter_tiles


def slice_tiles(graphs: list[Data], tile_size: float) -> list[Data]:
    """Every tile (with halo, ``sub.interior`` marking its own spots) of every graph, in a
    fixed order; each tile remembers its slice (``sub.slice_id``) and the global indices of
    its interior spots (``sub.interior_index``)."""
    tiles = []
    for gi, g in enumerate(graphs):
        for sub, interior in iter_tiles(g, tile_size):
            sub.slice_id = gi
            sub.interior_index = interior
            tiles.append(sub)
    return tiles


def merge_tiles(tiles: list[Data]) -> Data:
    """One disjoint graph of several tiles: node tensors concatenated, edge indices offset.
    The result has ``interior`` (its loss mask) and the tiles' ``num_scales`` / ``n_dir_bins``
    (which must agree)."""
    if not tiles:
        raise ValueError("merge_tiles: no tiles")
    t0 = tiles[0]
    ns, nb = int(t0.num_scales), int(t0.n_dir_bins)
    for t in tiles[1:]:
        if int(t.num_scales) != ns or int(t.n_dir_bins) != nb:
            raise ValueError(f"merge_tiles: tiles disagree on scales / direction bins ({t.num_scales}, {t.n_dir_bins}) "
                             f"vs ({ns}, {nb})")
    offs = np.cumsum([0] + [t.num_nodes for t in tiles[:-1]])
    out = Data(num_nodes=int(sum(t.num_nodes for t in tiles)))
    for key in NODE_KEYS + ("interior",):
        out[key] = torch.cat([t[key] for t in tiles])
    for k in range(ns):
        out[f"edge_index_{k}"] = torch.cat([t[f"edge_index_{k}"] + int(o) for t, o in zip(tiles, offs)], dim=1)
        out[f"edge_dir_{k}"] = torch.cat([t[f"edge_dir_{k}"] for t in tiles])
    out.num_scales, out.n_dir_bins = ns, nb
    return out


def tile_batches(tiles: list[Data], tiles_per_step: int, rng: np.random.Generator) -> Iterator[list[Data]]:
    """One epoch: the tiles in a fresh random order, in groups of ``tiles_per_step`` (the last
    group may be smaller)."""
    if tiles_per_step < 1:
        raise ValueError(f"tiles_per_step must be >= 1, got {tiles_per_step}")
    order = rng.permutation(len(tiles))
    for i in range(0, len(order), tiles_per_step):
        yield [tiles[j] for j in order[i:i + tiles_per_step]]


def epoch_coverage(graphs: list[Data], tile_size: float, tiles_per_step: int, rng: np.random.Generator) -> list[np.ndarray]:
    """How many times one epoch of :func:`tile_batches` puts each spot of each graph into the
    loss (interior spots only): a list of (n_i,) int arrays. All ones means every training spot
    counts exactly once per epoch."""
    counts = [np.zeros(g.num_nodes, dtype=np.int64) for g in graphs]
    for group in tile_batches(slice_tiles(graphs, tile_size), tiles_per_step, rng):
        for t in group:
            np.add.at(counts[int(t.slice_id)], t.interior_index.numpy(), 1)
    return counts
