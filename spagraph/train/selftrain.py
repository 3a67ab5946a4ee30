"""Transductive self-training with graph consistency on the unannotated test slice (issue 16, item 2).

A cross-patient model ranks a new slice's spots with a slice-wide error (patient shift), while
*within* one slice there is no patient shift. Self-training uses the cross-patient model only to
name the spots it is sure about, then fits a graph network on that slice alone:

1. **pseudo-labels** (:func:`pseudo_labels`): a two-component Gaussian mixture on the slice's
   current log-odds (:func:`spagraph.decide.prevalence.mixture_fit`, the one
   ``threshold.method: mixture_spatial`` uses), its posterior of the high component averaged over
   each spot and its scale-1 neighbours (:func:`spagraph.decide.rules.neighbourhood_mean`);
   cancer where that mean is >= ``train.self_train_confidence``, non-cancer where it is <=
   1 - confidence, unlabelled between. Fallback when the mixture does not split the slice (no
   fit, a component under 2 %) or leaves a class with fewer than max(5, 5 %) spots: the top and
   bottom :data:`FALLBACK_QUANTILE` of the scores.
2. **a graph network on the slice itself** (:func:`refine_round`): a fresh
   :class:`~spagraph.nn.model.SpaGraphNet` with the fold's model settings, built by
   :func:`spagraph.train.fit.build_model` on the pseudo-labelled slice (so its linear prior is a
   logistic regression on this slice's confident spots), then ``train.self_train_epochs``
   full-slice steps of :func:`spagraph.train.fit.train_loop` (the one training loop; no
   validation, the last epoch is kept) at ``train.self_train_lr`` on the pseudo-labels' weighted
   BCE plus ``train.self_train_consistency`` x the graph-consistency term
   (:func:`consistency_loss`: neighbouring spots' probabilities agree, on ``edge_index_0``).
3. the slice's new ranking = ``blend`` x the refined logits + (1 - ``blend``) x the cross-patient
   logits (each standardised over the slice); the next round's pseudo-labels come from it
   (``train.self_train_rounds`` rounds).

The returned scores are the cross-patient model's own probabilities **re-ordered** by the new
ranking (:func:`rank_map`): the slice's score distribution is unchanged, only which spot holds
which score moves. So calibration, thresholds and prevalence estimates downstream (fitted on
validation scores of the cross-patient model) see scores on the scale they were fitted for;
AUC-type metrics see the new ranking.

Settings (fixed a priori, 2026-11-30, before any test-section number; ``train.self_train_*``):
2 rounds (one round names spots from the shifted scores; a second lets the slice's own model
relabel its borderline spots, more rounds compound confirmation bias); 100 full-slice steps at
lr 1e-3 (the base fit moves its deep part little in ~170 steps at 3e-4, benchmarks/README.md;
one slice is 300-700 spots, so 100 steps at 1e-3 is enough to fit it without tiles); confidence
0.9 (the mixture_spatial decision rule calls at 0.5; 0.9 keeps the spots the mixture is sure of);
consistency weight 1.0 (squared probability gaps are <= 1 per edge, the same order as the BCE);
blend 0.5 (the slice's own fit and the cross-patient ranking weigh equally: neither is trusted
alone, the first is fitted to the second's errors on the confident spots).

Label-free: :func:`self_train_scores` refuses a slice that carries labels (pass it through
:func:`spagraph.train.adapt.strip_labels`); ``tests/test_selftrain.py`` checks that shuffling the
slice's labels leaves the scores identical.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

FALLBACK_QUANTILE = 0.2     # top / bottom share of spots named when the mixture does not split the slice
MIN_CLASS_SHARE = 0.05      # each pseudo-class needs at least max(5, this share of the slice) spots


def standardise(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=float)
    sd = z.std()
    return (z - z.mean()) / sd if sd > 1e-12 else z - z.mean()


def rank_map(order_scores: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` re-assigned so that their order follows ``order_scores``: the spot ranked k-th by
    ``order_scores`` gets the k-th smallest of ``values`` (ties broken by position, stable)."""
    out = np.empty(len(values), dtype=float)
    out[np.argsort(order_scores, kind="stable")] = np.sort(np.asarray(values, dtype=float))
    return out


def pseudo_labels(z: np.ndarray, edge_index: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, str]:
    """``(labels (n,) float 0/1, mask (n,) bool of the named spots, method)`` from log-odds ``z``.

    ``method``: ``mixture`` (spatially averaged mixture posteriors at ``confidence``) or
    ``quantile`` (fallback: top / bottom :data:`FALLBACK_QUANTILE`)."""
    from spagraph.decide.prevalence import fit_logit_mixture
    from spagraph.decide.rules import neighbourhood_mean
    z = np.asarray(z, dtype=float)
    n = len(z)
    need = max(5, int(np.ceil(MIN_CLASS_SHARE * n)))
    gm = fit_logit_mixture(z)
    if gm is not None and gm.weights_.min() >= 0.02:
        r = gm.predict_proba(z[:, None])[:, int(np.argmax(gm.means_.ravel()))]
        r = neighbourhood_mean(r, edge_index, n)
        pos, neg = r >= confidence, r <= 1.0 - confidence
        if pos.sum() >= need and neg.sum() >= need:
            return pos.astype(float), pos | neg, "mixture"
    k = max(need, int(round(FALLBACK_QUANTILE * n)))
    order = np.argsort(z, kind="stable")
    pos = np.zeros(n, dtype=bool); pos[order[n - k:]] = True
    neg = np.zeros(n, dtype=bool); neg[order[:k]] = True
    return pos.astype(float), pos | neg, "quantile"


def consistency_loss(logit: Tensor, edge_index: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over edges (i, j) of ``(sigmoid(logit_i) - sigmoid(logit_j))^2`` (both ends in ``mask``
    when given); 0 (with a graph) without edges."""
    if mask is not None:
        keep = mask[edge_index[0]] & mask[edge_index[1]]
        edge_index = edge_index[:, keep]
    if edge_index.shape[1] == 0:
        return logit.sum() * 0
    p = torch.sigmoid(logit)
    return ((p[edge_index[0]] - p[edge_index[1]]) ** 2).mean()


def _steps(model, g: Data, s, pos_weight: float, gen: torch.Generator, weight: float):
    """``steps(rng)`` for :func:`spagraph.train.fit.train_loop`: each piece of the pseudo-labelled
    slice (whole graph, or tiles on a large slice), its pseudo-label BCE plus ``weight`` x
    :func:`consistency_loss` on the piece's scale-1 edges."""
    from spagraph.train.fit import _batches, _loss, _to
    dev = next(model.parameters()).device

    def steps(rng: np.random.Generator):
        for piece, mask in _batches(g, s, rng):
            piece, mask = _to(piece, dev), mask.to(dev)
            out = model(piece, model.settings.modality_dropout)
            total, parts = _loss(model, out, piece.y, mask, pos_weight, s, gen)
            if weight > 0:
                c = consistency_loss(out["logit"], piece.edge_index_0, mask)
                total = total + weight * c
                parts["consistency"], parts["loss"] = float(c.detach()), float(total.detach())
            yield total, parts
    return steps


def refine_round(g: Data, labels: np.ndarray, mask: np.ndarray, model_settings, s, seed: int) -> np.ndarray:
    """One round: a graph network fitted on the slice's pseudo-labels (see the module text);
    returns its logits (n,) on the slice."""
    from spagraph.train.fit import build_model, positive_weight, slice_logits, start_state, train_loop
    pg = copy.copy(g)
    y = np.full(g.num_nodes, np.nan)
    y[mask] = labels[mask]
    pg.y = torch.tensor(y, dtype=torch.float32)
    pg.label_mask = torch.from_numpy(np.asarray(mask, dtype=bool))
    rs = s.model_copy(update={"lr": s.self_train_lr, "epochs": s.self_train_epochs, "tiles_per_step": 0,
                              "coral_weight": 0.0, "ema_decay": 0.0})
    model = build_model([pg], model_settings, rs, seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=rs.lr, weight_decay=rs.weight_decay)
    state = start_state(model, rs, seed, has_val=False)
    train_loop(model, opt, state, rs.epochs,
               _steps(model, pg, rs, positive_weight([pg], rs), state.gen, s.self_train_consistency), lambda m: None)
    state.stop.restore_best(model)
    model.eval()
    with torch.no_grad():
        return slice_logits(model, g, rs).numpy().astype(np.float64)


def self_train_scores(model, data: Data, s, seed: int = 0, info: dict | None = None) -> np.ndarray:
    """Cancer probabilities (n,) of the label-free slice ``data`` after ``s.self_train_rounds``
    rounds of self-training from ``model``'s scores (module text); ``model``'s own probabilities
    re-ordered by the refined ranking. ``info`` (a dict) receives per-round pseudo-label counts
    and methods, and the last round's pseudo-labels (``labels``, ``mask``) for diagnosis.

    ``s``: the training settings (``train.self_train_*``); the model settings are ``model``'s."""
    from spagraph.train.fit import slice_logits
    if bool(data.label_mask.any()) or not bool(torch.isnan(data.y).all()):
        raise ValueError(f"self-training on slice {getattr(data, 'name', '?')!r}: it carries labels; pass it "
                         "through spagraph.train.adapt.strip_labels (the test slice's labels never enter)")
    if s.self_train_rounds < 1:
        raise ValueError(f"train.self_train_rounds must be >= 1 to self-train, got {s.self_train_rounds}")
    model.eval()
    with torch.no_grad():
        z0 = slice_logits(model, data, s).numpy().astype(np.float64)
    base = standardise(z0)
    current = base
    ei = data.edge_index_0.numpy()
    rounds = []
    for r in range(s.self_train_rounds):
        labels, mask, how = pseudo_labels(current, ei, s.self_train_confidence)
        zr = refine_round(data, labels, mask, model.settings, s, seed + 1000 * (r + 1))
        current = s.self_train_blend * standardise(zr) + (1.0 - s.self_train_blend) * base
        rounds.append({"method": how, "n_pos": int((labels[mask] == 1).sum()), "n_neg": int((labels[mask] == 0).sum())})
        if info is not None:
            info["labels"], info["mask"] = labels, mask
    if info is not None:
        info["rounds"] = rounds
    # the model's own logits re-ordered (float32, as predict_scores computes them): the same values
    return torch.sigmoid(torch.from_numpy(rank_map(current, z0)).float()).numpy().astype(np.float64)
