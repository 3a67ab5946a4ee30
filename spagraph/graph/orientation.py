"""Tissue orientation: turning and mirroring the direction bins of a slice graph.

Direction bins are absolute image angles (bin 0 centred on +x, counter-clockwise, see
:func:`spagraph.graph.neighbours.direction_bins`), but how a section lies on the slide is
arbitrary. With B bins, rotating the spot coordinates by ``360 / B`` degrees moves every edge
to the next bin, and mirroring the y axis sends bin b to bin ``-b mod B``; nothing else of the
graph changes (``tests/test_orientation.py`` checks both against graphs built from turned
coordinates). So a random cyclic shift and reflection of the bins is the augmentation
"the same tissue, laid down another way", exactly, with no re-binning or interpolation.
"""
from __future__ import annotations

import copy

import numpy as np
from torch_geometric.data import Data


def turn_bins(data: Data, shift: int, reflect: bool = False) -> Data:
    """A shallow copy of ``data`` whose ``edge_dir_k`` are mirrored (``reflect``: b -> -b mod B)
    and then shifted by ``shift`` bins (b -> b + shift mod B), at every scale.

    The same as building the graph from coordinates mirrored in y and then rotated by
    ``shift * 360 / B`` degrees. Other tensors are shared, not copied.
    """
    nb = int(data.n_dir_bins)
    out = copy.copy(data)
    for k in range(int(data.num_scales)):
        d = data[f"edge_dir_{k}"]
        if reflect:
            d = (-d) % nb
        out[f"edge_dir_{k}"] = (d + int(shift)) % nb
    return out


def random_turn(data: Data, rng: np.random.Generator) -> Data:
    """``turn_bins`` with a uniform random shift in [0, B) and a fair-coin reflection."""
    nb = int(data.n_dir_bins)
    shift, reflect = int(rng.integers(nb)), bool(rng.integers(2))
    if shift == 0 and not reflect:
        return data
    return turn_bins(data, shift, reflect)

