"""Multi-scale spatial feature aggregation (MSFA): direction-aware neighbour means."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter


class MSFAConv(MessagePassing):
    r"""Direction-binned neighbour aggregation at one spatial scale.

    For destination spot :math:`i` and direction sector :math:`b`,

    .. math::
        m_{i,b} = \frac{1}{|N_b(i)|} \sum_{j \in N_b(i)} x_j ,\qquad
        o_{i,b} = \log(1 + |N_b(i)|)

    (an empty sector gives :math:`m_{i,b}=0`). The B sector means are mixed into K
    direction modes with learned weights :math:`M \in R^{B \times K}` (mode 0 starts as the
    isotropic mean, so the layer starts rotation invariant and learns asymmetry only if it
    helps), concatenated with the occupancies and projected:

    .. math::
        h_i = W [\, \textstyle\sum_b M_{b,1} m_{i,b} \,\|\, \dots \,\|\, \sum_b M_{b,K} m_{i,b} \,\|\, o_i \,] + c

    Parameters
    ----------
    in_channels, out_channels : feature sizes F_in, F_out.
    n_bins : direction sectors B (edges carry ``edge_dir`` in ``[0, B)``).
    n_modes : direction modes K.

    Shapes
    ------
    x (N, F_in), edge_index (2, E) rows (source, destination), edge_dir (E,) -> (N, F_out).
    """

    def __init__(self, in_channels: int, out_channels: int, n_bins: int = 8, n_modes: int = 2):
        super().__init__(aggr=None)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.n_bins, self.n_modes = n_bins, n_modes
        self.mix = nn.Parameter(torch.empty(n_bins, n_modes))
        self.lin = nn.Linear(n_modes * in_channels + n_bins, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.mix.normal_(0.0, 0.1 / self.n_bins)
            self.mix[:, 0] = 1.0 / self.n_bins
        self.lin.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_dir: Tensor) -> Tensor:
        means, occupancy = self.bin_means(x, edge_index, edge_dir)
        modes = torch.einsum("nbf,bk->nkf", means, self.mix).flatten(1)
        return self.lin(torch.cat([modes, torch.log1p(occupancy)], dim=1))

    def bin_means(self, x: Tensor, edge_index: Tensor, edge_dir: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sector neighbour means (N, B, F) and neighbour counts (N, B)."""
        n = x.size(0)
        means = self.propagate(edge_index, x=x, edge_dir=edge_dir, size=(n, n))
        slot = edge_index[1] * self.n_bins + edge_dir
        count = torch.bincount(slot, minlength=n * self.n_bins).to(x.dtype).view(n, self.n_bins)
        return means, count

    def message(self, x_j: Tensor) -> Tensor:
        return x_j

    def aggregate(self, inputs: Tensor, index: Tensor, edge_dir: Tensor, dim_size: int) -> Tensor:
        slot = index * self.n_bins + edge_dir
        out = scatter(inputs, slot, dim=0, dim_size=dim_size * self.n_bins, reduce="mean")
        return out.view(dim_size, self.n_bins, -1)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"n_bins={self.n_bins}, n_modes={self.n_modes})")
