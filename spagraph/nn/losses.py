"""Training losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def weighted_bce(logits: Tensor, y: Tensor, pos_weight: float = 1.0, focal_gamma: float = 0.0) -> Tensor:
    """Class-weighted binary cross-entropy, optionally focal.

    logits, y : (n,). ``pos_weight`` multiplies the loss of positive spots.
    """
    pw = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    if focal_gamma <= 0:
        return F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw)
    ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    p = torch.sigmoid(logits)
    pt = torch.where(y > 0.5, p, 1 - p)
    w = torch.where(y > 0.5, pw, torch.ones_like(pw))
    return (w * (1 - pt).pow(focal_gamma) * ce).mean()


def info_nce(z_a: Tensor, z_b: Tensor, temperature: float = 0.1) -> Tensor:
    """Symmetric InfoNCE: row i of ``z_a`` should match row i of ``z_b`` among all rows.

    z_a, z_b : (n, d), L2-normalised inside.
    """
    z_a = F.normalize(z_a, dim=1)
    z_b = F.normalize(z_b, dim=1)
    logits = z_a @ z_b.t() / temperature
    target = torch.arange(len(z_a), device=z_a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
