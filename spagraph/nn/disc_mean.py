"""Isotropic neighbourhood mean over a disc, the spot itself included."""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing


class DiscMean(MessagePassing):
    r"""Mean of a spot's own features and those of its neighbours at one scale.

    .. math::
        \bar x_i = \frac{x_i + \sum_{j \in N(i)} x_j}{1 + |N(i)|}

    Parameter-free; with the disc edges of scale s this is the spatial smoothing of radius
    s pitches that a linear model on "spatially smoothed expression" uses.

    Shapes
    ------
    x (N, F), edge_index (2, E) rows (source, destination) -> (N, F).
    """

    def __init__(self):
        super().__init__(aggr="sum")

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        n = x.size(0)
        total = x + self.propagate(edge_index, x=x, size=(n, n))
        deg = 1.0 + torch.bincount(edge_index[1], minlength=n).to(x.dtype)
        return total / deg[:, None]

    def message(self, x_j: Tensor) -> Tensor:
        return x_j


def with_disc_means(x: Tensor, data, n_scales: int) -> Tensor:
    """(N, F * (1 + S)): ``x`` and its disc means at each of the graph's first ``n_scales``
    scales (``data.edge_index_k``): spatially smoothed features."""
    disc = DiscMean()
    return torch.cat([x] + [disc(x, data[f"edge_index_{k}"]) for k in range(n_scales)], dim=1)
