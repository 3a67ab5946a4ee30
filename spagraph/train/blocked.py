"""Spatially blocked cross-validation inside one slice (her2st A1: the one annotated section with H&E).

The slice is cut into spatial blocks (:func:`spatial_blocks`: k-means on the spot centres, or x/y
quadrants at the medians). Each block in turn is predicted by a model that never saw its labels:

* the *training* labels are those of the other blocks minus one *validation* block (the next block
  in cyclic order), which chooses the epoch (early stopping, and the prior-versus-deep rule);
* the model is then refitted on all the other blocks for the chosen number of epochs (no
  validation), and scores the predicted block.

The predicted block's labels are removed from every graph handed to training (``y`` NaN,
``label_mask`` False, :func:`label_view`); its spots keep their features (label-free inputs, as a
test slice's own expression and image are), so message passing sees them as unlabelled
neighbours. :func:`zscore_features` standardises each modality over the whole slice without
labels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch_geometric.data import Data


def spatial_blocks(xy: np.ndarray, scheme: str, n_blocks: int = 4, seed: int = 0) -> np.ndarray:
    """(n,) int block of every spot: ``kmeans`` (k-means on the coordinates, ``n_blocks``
    clusters, sklearn, 10 restarts) or ``quadrants`` (x and y split at their medians: 4 blocks)."""
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < n_blocks:
        raise ValueError(f"spot coordinates must be (n >= {n_blocks}, 2), got shape {xy.shape}")
    if scheme == "kmeans":
        from sklearn.cluster import KMeans
        return KMeans(n_blocks, n_init=10, random_state=seed).fit_predict(xy).astype(int)
    if scheme == "quadrants":
        return ((xy[:, 0] > np.median(xy[:, 0])).astype(int) * 2 + (xy[:, 1] > np.median(xy[:, 1])).astype(int))
    raise ValueError(f"unknown block scheme {scheme!r}; known: kmeans, quadrants")


def zscore_features(data: Data, keys: tuple[str, ...] = ("x_img", "x_gene")) -> Data:
    """A copy of ``data`` with each feature column of ``keys`` standardised over all spots of the
    slice (mean 0, sd 1; constant columns 0). Label-free: the slice's own features only."""
    out = data.clone()
    for k in keys:
        x = out[k]
        if x.shape[1] == 0:
            continue
        sd = x.std(0, unbiased=False)
        out[k] = ((x - x.mean(0)) / torch.where(sd > 1e-8, sd, torch.ones_like(sd))).float()
    return out


def label_view(data: Data, keep: np.ndarray) -> Data:
    """A copy of ``data`` whose labels exist only on spots ``keep`` (bool (n,)): every other spot
    has ``y`` NaN and ``label_mask`` False (its features are untouched)."""
    keep = torch.as_tensor(np.asarray(keep, dtype=bool))
    out = data.clone()
    out.y = torch.where(keep, data.y, torch.full_like(data.y, float("nan")))
    out.label_mask = data.label_mask & keep
    return out


@dataclass
class BlockedResult:
    scores: np.ndarray                    # (n,) out-of-block score of every spot (NaN: unscored)
    per_block: list[dict] = field(default_factory=list)   # block, n, auc, val_block, best_epoch


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None


def blocked_scores(data: Data, blocks: np.ndarray,
                   fit_block: Callable[[Data, Data | None, int | None], tuple[np.ndarray, int | None]]) -> BlockedResult:
    """Out-of-block scores of every labelled spot.

    ``fit_block(train_view, val_view, epochs)`` fits on ``train_view``'s labels and returns
    (scores of every spot of the slice, chosen epoch). It is called twice per predicted block:
    with the validation block (``val_view``; ``epochs`` None) to choose the epoch, then with
    ``val_view`` None and that epoch on all other blocks (a refit). Neither call sees a label of
    the predicted block. Per block: its AUC on its own labelled spots.
    """
    blocks = np.asarray(blocks)
    ids = list(np.unique(blocks))
    y = data.y.numpy()
    lab = data.label_mask.numpy()
    scores = np.full(len(y), np.nan)
    per = []
    for i, b in enumerate(ids):
        te = blocks == b
        vb = ids[(i + 1) % len(ids)]
        va = blocks == vb
        train_view = label_view(data, ~te & ~va)
        val_view = label_view(data, va)
        _, epoch = fit_block(train_view, val_view, None)
        s, _ = fit_block(label_view(data, ~te), None, epoch)
        scores[te] = np.asarray(s)[te]
        m = te & lab
        per.append({"block": int(b), "n": int(m.sum()), "val_block": int(vb), "epoch": epoch,
                    "auc": _auc(y[m].astype(int), scores[m])})
    return BlockedResult(scores=scores, per_block=per)


def spagraph_block_fitter(model_settings, train_settings, seed: int, warm_start: dict | None = None):
    """``fit_block`` for :func:`blocked_scores` running :func:`spagraph.train.fit.fit`: with a
    validation view, early stopping (and the prior-versus-deep rule) choose the epoch; the refit
    trains ``epoch + 1`` epochs without validation (the linear prior alone when ``epoch`` is -1).
    ``warm_start``: initial weights of the deep part (:mod:`spagraph.pretrain.contrastive`)."""
    from spagraph.train.fit import build_model, fit, predict_scores

    def fit_block(train_view: Data, val_view: Data | None, epochs: int | None):
        if val_view is not None:
            r = fit([train_view], [val_view], model_settings, train_settings, seed, warm_start=warm_start)
            return predict_scores(r.model, train_view, train_settings), int(r.best_epoch)
        if epochs is not None and epochs < 0:
            model = build_model([train_view], model_settings, train_settings, seed)   # the prior alone
            return predict_scores(model, train_view, train_settings), -1
        ts = train_settings.model_copy(update={"epochs": int(epochs) + 1, "min_epochs": 1})
        r = fit([train_view], [], model_settings, ts, seed, warm_start=warm_start)
        return predict_scores(r.model, train_view, ts), r.best_epoch
    return fit_block


def logreg_block_fitter(feature_fn: Callable[[Data], np.ndarray], C: float = 0.1):
    """``fit_block`` for :func:`blocked_scores`: sklearn standardisation + L2 logistic regression
    on ``feature_fn(graph)`` (n, F), fitted on the labelled spots of the view (no epochs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit_block(train_view: Data, val_view: Data | None, epochs: int | None):
        X = feature_fn(train_view)
        m = train_view.label_mask.numpy()
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
        clf.fit(X[m], train_view.y.numpy()[m].astype(int))
        return clf.predict_proba(X)[:, 1], None
    return fit_block
