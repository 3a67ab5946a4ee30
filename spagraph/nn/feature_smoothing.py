"""Score smoothing over the slice's expression-neighbour graph (personalised-PageRank steps)."""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing


class FeatureGraphSmoothing(MessagePassing):
    r"""Pull each spot's score towards the scores of the spots that look like it.

    With :math:`N(i)` the spot's nearest neighbours in embedding space (``edge_index_feat``)
    and :math:`z^{(0)}` the model's logits,

    .. math::
        z^{(t+1)}_i = (1 - \alpha)\, z^{(0)}_i + \alpha\, \frac{1}{|N(i)|} \sum_{j \in N(i)} z^{(t)}_j

    for ``steps`` steps (one step is a blend with the neighbours' mean; many approach
    personalised PageRank). A spot without neighbours keeps its own score. Parameter-free and
    label-free: it only uses the slice's own embeddings, so it runs the same on a test slice.

    Parameters
    ----------
    alpha : weight of the neighbours, in [0, 1).
    steps : propagation steps.

    Shapes
    ------
    z (N,) or (N, F), edge_index (2, E) rows (source, destination) -> same shape as z.
    """

    def __init__(self, alpha: float, steps: int = 1):
        super().__init__(aggr="sum")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.alpha, self.steps = float(alpha), int(steps)

    def forward(self, z: Tensor, edge_index: Tensor) -> Tensor:
        if self.alpha == 0.0 or edge_index.numel() == 0:
            return z
        flat = z.dim() == 1
        z0 = z[:, None] if flat else z
        n = z0.size(0)
        deg = torch.bincount(edge_index[1], minlength=n).to(z0.dtype)[:, None]
        has = deg > 0
        out = z0
        for _ in range(self.steps):
            mean = self.propagate(edge_index, x=out, size=(n, n)) / deg.clamp_min(1)
            out = torch.where(has, (1 - self.alpha) * z0 + self.alpha * mean, z0)
        return out[:, 0] if flat else out

    def message(self, x_j: Tensor) -> Tensor:
        return x_j

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, steps={self.steps}"


def feature_edges(data, alpha: float) -> Tensor:
    """``data.edge_index_feat``, or a ValueError naming the slice when a smoothing of strength
    ``alpha`` is asked for on a graph built without ``graph.feature_knn``."""
    e = getattr(data, "edge_index_feat", None)
    if e is None:
        name = getattr(data, "name", None) or "(unnamed)"
        raise ValueError(f"slice {name}: scores are to be smoothed over expression neighbours (feature_smoothing="
                         f"{alpha}) but the graph has no edge_index_feat; set graph.feature_knn "
                         "(GraphSettings(feature_knn=k))")
    return e
