"""Label-free adaptation to the unannotated test slice (issue 16, item 2).

Like per-slice normalisation, these use the test slice's *features* and never its labels:

- **slice statistics in the deep path** (AdaBN-style; ``model.hidden_norm: slice``): the input
  projection of each modality stream normalises every hidden unit by the mean and variance over
  the spots of the slice being processed (``BatchNorm1d`` without running statistics), in
  training and in scoring alike. A training slice is normalised by its own statistics, the test
  slice by its own: the per-slice shift of the hidden features is removed, as AdaBN does by
  re-estimating batch-norm statistics on the target domain. Needs whole-slice passes (one
  slice per forward); with tiles the statistics are a tile's.
- **CORAL** (``train.coral_weight`` > 0): a term ``w * ||C_s - C_t||_F^2 / (4 d^2)`` between the
  covariance of the fused hidden features (the head's input) of the training spots of a step and
  that of a target slice's spots (Sun & Saenko's deep CORAL), so the head sees test-slice features
  distributed as the training ones.

Targets enter :func:`spagraph.train.fit.fit` through :func:`strip_labels` only: a copy whose
``y`` is NaN and ``label_mask`` all False, so no code downstream can read a test label
(``tests/test_adapt.py``: shuffling the test slice's labels leaves every score identical).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data


def strip_labels(g: Data) -> Data:
    """A shallow copy of a slice graph with its labels removed: ``y`` all NaN, ``label_mask``
    all False. Features, positions and edges are shared, not copied."""
    out = copy.copy(g)
    out.y = torch.full((g.num_nodes,), float("nan"))
    out.label_mask = torch.zeros(g.num_nodes, dtype=torch.bool)
    return out


def covariance(h: Tensor) -> Tensor:
    """(d, d) sample covariance of the rows of ``h`` (n, d), n >= 2."""
    c = h - h.mean(0, keepdim=True)
    return c.T @ c / (h.shape[0] - 1)


def coral_loss(source: Tensor, target: Tensor) -> Tensor:
    """Deep CORAL distance ``||cov(source) - cov(target)||_F^2 / (4 d^2)`` between two feature
    sets (n_s, d) and (n_t, d); 0 (with a graph) when either has fewer than 2 rows."""
    if source.shape[0] < 2 or target.shape[0] < 2:
        return source.sum() * 0
    d = source.shape[1]
    return ((covariance(source) - covariance(target)) ** 2).sum() / (4.0 * d * d)


def pick_target(targets: list[Data], rng: np.random.Generator) -> Data:
    """One label-free target slice for this step (uniform when there are several)."""
    return targets[int(rng.integers(len(targets)))] if len(targets) > 1 else targets[0]
