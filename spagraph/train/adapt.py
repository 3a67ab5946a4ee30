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


def pick_index(n: int, rng: np.random.Generator) -> int:
    """Index of this step's label-free target slice among ``n`` (uniform; no draw when there is
    one)."""
    return int(rng.integers(n)) if n > 1 else 0


def uses_target(s) -> bool:
    """Whether training settings ``s`` align to label-free target slices (any of the CORAL, MMD
    or adversarial terms on)."""
    return s.coral_weight > 0 or s.mmd_weight > 0 or s.adversarial_weight > 0


# ---------------------------------------------------------------- gradient reversal (DANN)


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = float(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.scale * grad, None


def reverse_gradient(x: Tensor, scale: float = 1.0) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-scale`` in the backward pass
    (Ganin & Lempitsky's gradient-reversal layer): what is below it learns to *increase* the loss
    of what is above it. ``x`` any shape."""
    return _ReverseGrad.apply(x, scale)


def dann_ramp(progress: float) -> float:
    """Ganin & Lempitsky's schedule for the reversal scale, ``2 / (1 + exp(-10 p)) - 1`` at training
    progress ``p`` in [0, 1]: 0 at the start (the discriminator learns first), near 1 from p ~ 0.5."""
    return float(2.0 / (1.0 + np.exp(-10.0 * float(progress))) - 1.0)


class SliceDiscriminator(torch.nn.Module):
    """Predicts which slice a spot's fused hidden features come from: (n, d) -> (n, n_slices)
    logits. Two linear layers with a ReLU (width ``d``), as small as Ganin & Lempitsky's."""

    def __init__(self, d: int, n_slices: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.ReLU(), torch.nn.Linear(d, n_slices))

    def reset_parameters(self) -> None:
        for m in self.net:
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


# ---------------------------------------------------------------- MMD


MAX_MMD_SPOTS = 1024   # spots per side of the MMD term (random subset): the kernel matrix is quadratic


def median_bandwidth(x: Tensor, y: Tensor) -> Tensor:
    """The median heuristic: the median pairwise Euclidean distance over the pooled rows of
    ``x`` and ``y`` (distinct pairs), detached (a fixed bandwidth, not a learned one); 1 when all
    rows coincide."""
    z = torch.cat([x, y]).detach()
    d = torch.cdist(z, z)
    iu = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
    med = d[iu[0], iu[1]].median() if len(z) > 1 else z.new_tensor(0.0)
    return med if float(med) > 0 else z.new_tensor(1.0)


def mmd_loss(source: Tensor, target: Tensor, bandwidth: Tensor | float | None = None) -> Tensor:
    """Squared maximum mean discrepancy (biased V-statistic, so >= 0) between feature sets
    (n_s, d) and (n_t, d) under the Gaussian kernel ``exp(-||a - b||^2 / (2 sigma^2))``, ``sigma``
    the median heuristic (:func:`median_bandwidth`) unless given. 0 (with a graph) when either set
    is empty. Written here because the kernel two-sample statistic is three means of one kernel
    matrix and needs to be differentiable in torch (no well-kept torch library provides it)."""
    if source.shape[0] == 0 or target.shape[0] == 0:
        return source.sum() * 0
    sigma = median_bandwidth(source, target) if bandwidth is None else torch.as_tensor(bandwidth, dtype=source.dtype)
    g = 1.0 / (2.0 * sigma ** 2)
    k = lambda a, b: torch.exp(-g * torch.cdist(a, b) ** 2)
    return k(source, source).mean() + k(target, target).mean() - 2.0 * k(source, target).mean()


def _subsample(h: Tensor, n: int, gen: torch.Generator) -> Tensor:
    if h.shape[0] <= n:
        return h
    return h[torch.randperm(h.shape[0], generator=gen)[:n].to(h.device)]


# ---------------------------------------------------------------- the terms of one fit


class Alignment:
    """The label-free alignment terms of one fit, between the fused hidden features (the head's
    input, ``out["h"]``) of a training step's spots and those of a target slice (labels stripped):

    - CORAL (``s.coral_weight``): :func:`coral_loss`;
    - MMD (``s.mmd_weight``): :func:`mmd_loss`, at most :data:`MAX_MMD_SPOTS` spots per side;
    - with ``s.align_ramp`` the CORAL and MMD weights are scaled by the same ramp as the reversal
      (:func:`dann_ramp`: 0 in the first epoch, so the class loss shapes the features first);
    - adversarial (``s.adversarial_weight``, DANN): a :class:`SliceDiscriminator` over the
      training slices and the target slice(s) reads the features through
      :func:`reverse_gradient` with scale ``dann_ramp(epoch / s.epochs)``; its cross-entropy (the
      mean over the step's training spots and the mean over the target spots, averaged, so
      the two sides weigh the same) is added with weight ``s.adversarial_weight``. The
      discriminator learns to tell the slices apart and the model to make them
      indistinguishable. It has its own AdamW (learning rate ``s.lr * s.adversarial_lr_scale``,
      the model's ``weight_decay``; gradient norm clipped like the model's), stepped by :meth:`after_step` after the model's step. It
      is not a part of the model: it never enters the model's state dict or a saved model; a
      training checkpoint carries it (:meth:`state_dict`, key ``align``) so a resumed fit goes on
      as the uninterrupted one. Its initial weights come from ``seed`` alone (the global random
      stream is left untouched).
    """

    def __init__(self, s, n_train: int, n_target: int, seed: int):
        self.s, self.n_train, self.n_target, self.seed = s, n_train, n_target, int(seed)
        self.disc: SliceDiscriminator | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.epoch = -1
        self._pending: dict | None = None   # a checkpoint's discriminator, loaded once its device is known

    def start_epoch(self) -> None:
        self.epoch += 1

    @property
    def reversal_scale(self) -> float:
        return dann_ramp(max(self.epoch, 0) / self.s.epochs)

    def _discriminator(self, d: int, device) -> SliceDiscriminator:
        if self.disc is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + 7919)   # its own stream, fixed by the fit's seed
                self.disc = SliceDiscriminator(d, self.n_train + self.n_target).to(device)
            self.opt = torch.optim.AdamW(self.disc.parameters(), lr=self.s.lr * self.s.adversarial_lr_scale,
                                         weight_decay=self.s.weight_decay)
            if self._pending is not None:   # resumed: the checkpoint's weights and optimiser state, on this device
                self.disc.load_state_dict(self._pending["disc"])
                self.opt.load_state_dict(self._pending["opt"])
                self._pending = None
        return self.disc

    def loss(self, h_src: Tensor, src_slice: Tensor, h_tgt: Tensor, tgt_index: int,
             gen: torch.Generator) -> tuple[Tensor, dict]:
        """The weighted sum of the switched-on terms and their values by name. ``h_src`` (n_s, d)
        training spots' features, ``src_slice`` (n_s,) their training-slice indices, ``h_tgt``
        (n_t, d) the target slice's, ``tgt_index`` which target slice it is."""
        s = self.s
        total, parts = h_src.sum() * 0, {}
        ramp = self.reversal_scale if s.align_ramp else 1.0
        if s.coral_weight > 0:
            c = coral_loss(h_src, h_tgt)
            total, parts["coral"] = total + ramp * s.coral_weight * c, float(c.detach())
        if s.mmd_weight > 0:
            m = mmd_loss(_subsample(h_src, MAX_MMD_SPOTS, gen), _subsample(h_tgt, MAX_MMD_SPOTS, gen))
            total, parts["mmd"] = total + ramp * s.mmd_weight * m, float(m.detach())
        if s.align_ramp:
            parts["ramp"] = ramp
        if s.adversarial_weight > 0 and h_src.shape[0] > 0 and h_tgt.shape[0] > 0:
            disc = self._discriminator(h_src.shape[1], h_src.device)
            lam = self.reversal_scale
            ce = torch.nn.functional.cross_entropy
            a_src = ce(disc(reverse_gradient(h_src, lam)), src_slice.to(h_src.device).long())
            a_tgt = ce(disc(reverse_gradient(h_tgt, lam)),
                       torch.full((h_tgt.shape[0],), self.n_train + tgt_index, dtype=torch.long, device=h_tgt.device))
            a = 0.5 * (a_src + a_tgt)
            total = total + s.adversarial_weight * a
            parts["disc_ce"], parts["reversal"] = float(a.detach()), lam
        return total, parts

    def state_dict(self) -> dict:
        """What a training checkpoint needs to continue: the epoch count and, once it exists, the
        discriminator's width, weights and optimiser state."""
        out = {"epoch": self.epoch, "d": None}
        if self.disc is not None:
            out.update(d=self.disc.net[0].in_features, disc=self.disc.state_dict(), opt=self.opt.state_dict())
        elif self._pending is not None:
            out.update(self._pending)
        return out

    def load_state_dict(self, state: dict | None) -> None:
        """Continue from :meth:`state_dict`'s dict (``None``: from the start)."""
        if state is None:
            return
        self.epoch = int(state["epoch"])
        self.disc, self.opt = None, None
        self._pending = {k: state[k] for k in ("d", "disc", "opt")} if state.get("d") is not None else None

    def after_step(self) -> None:
        """The discriminator's optimiser step (after the model's ``backward``), then its
        gradients cleared."""
        if self.opt is not None:
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad()
