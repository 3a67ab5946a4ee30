"""Fit and predict loops: full-graph for ordinary slices, spatial tiles beyond."""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch_geometric.data import Data

from spagraph.nn.losses import info_nce, weighted_bce
from spagraph.nn.model import ModelSettings, SpaGraphNet
from spagraph.train.early_stopping import EarlyStopping
from spagraph.train.metrics import auc_standard_error, binary_metrics
from spagraph.train.tiles import iter_tiles


@dataclass
class TrainSettings:
    epochs: int = 60
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 15            # early stopping on validation AUC (epochs without gain)
    min_epochs: int = 5
    val_smoothing: int = 1        # choose the epoch by the mean validation AUC of the last k epochs
    focal_gamma: float = 0.0      # > 0: focal loss
    class_weight: bool = True     # pos_weight = n_neg / n_pos of the training spots
    batch_mode: str = "auto"      # "full" | "tiles" | "auto" (tiles above max_full_nodes)
    max_full_nodes: int = 50_000
    tile_size: float = 40.0       # in spot pitches
    max_contrastive_spots: int = 1024
    device: str = "auto"          # "cpu" | "cuda" | "auto"
    grad_clip: float = 1.0
    ema_decay: float = 0.0        # > 0: validate, keep and return an exponential moving average of the weights
    one_se_rule: bool = True      # with a linear prior: keep the prior alone unless an epoch beats its
                                  # validation AUC by more than one standard error


@dataclass
class FitResult:
    model: SpaGraphNet
    best_epoch: int
    best_val_auc: float | None
    history: list[dict] = field(default_factory=list)
    kept_prior_by_se: bool = False   # the one-standard-error rule overrode a deep epoch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _use_tiles(data: Data, s: TrainSettings) -> bool:
    return s.batch_mode == "tiles" or (s.batch_mode == "auto" and data.num_nodes > s.max_full_nodes)


def _batches(data: Data, s: TrainSettings, rng: np.random.Generator | None = None):
    """Yield (graph, loss_mask) pieces of a slice: the whole graph, or tiles (interior only)."""
    if _use_tiles(data, s):
        for sub, _ in iter_tiles(data, s.tile_size, shuffle=rng is not None, generator=rng):
            yield sub, sub.interior
    else:
        yield data, torch.ones(data.num_nodes, dtype=torch.bool)


def _to(data: Data, device: torch.device) -> Data:
    return data if device.type == "cpu" else data.to(device)


def _loss(model: SpaGraphNet, out: dict, y: torch.Tensor, mask: torch.Tensor, pos_weight: float,
          s: TrainSettings, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    lab = mask & ~torch.isnan(y)
    cls = weighted_bce(out["logit"][lab], y[lab], pos_weight, s.focal_gamma) if lab.any() else out["logit"].sum() * 0
    total, parts = cls, {"bce": float(cls.detach())}
    w = model.settings.contrastive_weight
    both = mask & (out["m_img"] > 0) & (out["m_gene"] > 0)
    if w > 0 and model.img is not None and model.gene is not None and both.sum() > 1:
        idx = torch.nonzero(both).squeeze(1)
        if len(idx) > s.max_contrastive_spots:
            idx = idx[torch.randperm(len(idx), generator=gen)[: s.max_contrastive_spots].to(idx.device)]
        nce = info_nce(out["z_img"][idx], out["z_gene"][idx], model.settings.temperature)
        total = total + w * nce
        parts["nce"] = float(nce.detach())
    return total, parts


def slice_logits(model: SpaGraphNet, data: Data, s: TrainSettings | None = None) -> torch.Tensor:
    """Logits of every spot of a slice, (n,) on CPU: the whole graph or its tiles (interior
    spots of each), then the model's whole-slice scoring step (:meth:`SpaGraphNet.smooth_logits`).
    Runs in the model's current mode (eval for scores, train for MC dropout)."""
    s = s or TrainSettings()
    dev = next(model.parameters()).device
    if not _use_tiles(data, s):
        logit = model(_to(data, dev))["logit"].cpu()
    else:
        logit = torch.zeros(data.num_nodes)
        for sub, interior in iter_tiles(data, s.tile_size):
            logit[interior] = model(_to(sub, dev))["logit"].cpu()[: len(interior)]
    return model.smooth_logits(logit, data)


@torch.no_grad()
def predict_scores(model: SpaGraphNet, data: Data, s: TrainSettings | None = None) -> np.ndarray:
    """Cancer probability of every spot of a slice, (n,) float in [0, 1] (eval mode)."""
    model.eval()
    return torch.sigmoid(slice_logits(model, data, s)).numpy().astype(np.float64)


def validation_auc(model: SpaGraphNet, graphs: list[Data], s: TrainSettings) -> float | None:
    """Mean per-slice AUC over validation slices (slices where AUC is undefined are skipped)."""
    aucs = []
    for g in graphs:
        m = g.label_mask.numpy()
        if m.sum() == 0:
            continue
        r = binary_metrics(g.y.numpy()[m], predict_scores(model, g, s)[m], 0.5)
        if r["auc"] is not None:
            aucs.append(r["auc"])
    return float(np.mean(aucs)) if aucs else None


class WeightEMA:
    """Exponential moving average of a model's parameters, updated after every optimiser step.

    ``avg <- decay * avg + (1 - decay) * current``; buffers are copied. Smooths the noisy
    step-to-step weights of small-data training; the averaged copy is what gets validated.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for pa, pm in zip(self.module.parameters(), model.parameters()):
            pa.lerp_(pm.detach(), 1.0 - self.decay)
        for ba, bm in zip(self.module.buffers(), model.buffers()):
            ba.copy_(bm)


@torch.no_grad()
def fit_linear_prior(model: SpaGraphNet, train: list[Data], seed: int) -> None:
    """Fit the model's linear path(s) by L2 logistic regression on the training spots and freeze them.

    Features per spot: for each modality the input and its disc means at every scale, zeroed
    where the slice lacks that modality (as the model masks it); balanced class weights;
    ``C = settings.linear_C``. Only training labels are used.
    """
    from sklearn.linear_model import LogisticRegression
    paths = [(p, key, flag) for p, key, flag in ((model.wide_img, "x_img", "has_img"), (model.wide_gene, "x_gene", "has_gene"))
             if p is not None]
    if not paths:
        return
    X, y = [], []
    for g in train:
        m = g.label_mask
        X.append(torch.cat([p.features(g[key], g) * g[flag].float()[:, None] for p, key, flag in paths], 1)[m])
        y.append(g.y[m])
    clf = LogisticRegression(C=model.settings.linear_C, class_weight="balanced", max_iter=5000, random_state=seed)
    clf.fit(torch.cat(X).double().numpy(), torch.cat(y).numpy().astype(int))
    w = torch.from_numpy(clf.coef_[0]).float()
    start = 0
    for i, (p, _, _) in enumerate(paths):
        d = p.lin.weight.shape[1]
        p.lin.weight.copy_(w[start:start + d][None]); start += d
        p.lin.bias.fill_(float(clf.intercept_[0]) if i == len(paths) - 1 else 0.0)
        p.lin.weight.requires_grad_(False); p.lin.bias.requires_grad_(False)


def validation_auc_se(auc: float, graphs: list[Data]) -> float:
    """Standard error of a mean per-slice validation AUC: Hanley-McNeil per slice at ``auc``,
    combined as the SE of a mean of independent slices."""
    ses = []
    for g in graphs:
        y = g.y.numpy()[g.label_mask.numpy()]
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if n_pos and n_neg:
            ses.append(auc_standard_error(auc, n_pos, n_neg))
    return float(np.sqrt(np.sum(np.square(ses))) / len(ses)) if ses else float("inf")


def fit(train: list[Data], val: list[Data], model_settings: ModelSettings, s: TrainSettings, seed: int,
        on_epoch: Callable[[int, dict], None] | None = None, progress=None,
        init_state: dict | None = None) -> FitResult:
    """Train a SpaGraphNet on ``train`` slices, early-stopping on ``val`` slices' AUC.

    Only ``train`` labels enter the loss; only ``val`` labels choose the epoch. ``on_epoch``
    receives (epoch, record) after each epoch (for tracking / pruning; it may raise to stop).
    Returns the model at its best validation epoch (the last epoch when no validation).
    """
    if not train:
        raise ValueError("no training slices")
    seed_everything(seed)
    dev = resolve_device(s.device)
    g0 = train[0]
    model = SpaGraphNet(g0.x_img.shape[1], g0.x_gene.shape[1], g0.num_scales, g0.n_dir_bins, model_settings).to(dev)
    prior = model_settings.linear_path and model_settings.linear_fit == "prior"
    if prior:
        fit_linear_prior(model.cpu(), train, seed)
        model.to(dev)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr, weight_decay=s.weight_decay)
    ys = torch.cat([g.y[g.label_mask] for g in train])
    n_pos, n_neg = float((ys == 1).sum()), float((ys == 0).sum())
    if n_pos == 0 or n_neg == 0:
        names = [str(getattr(g, "name", None) or i) for i, g in enumerate(train)]
        raise ValueError(f"training slices {names} hold a single class ({int(n_pos)} cancer, {int(n_neg)} non-cancer "
                         "labelled spots): cannot train a classifier")
    pos_weight = n_neg / n_pos if s.class_weight else 1.0
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    stop = EarlyStopping(s.patience, s.min_epochs, has_val=bool(val))
    history, start_epoch = [], 0
    ema = WeightEMA(model, s.ema_decay) if s.ema_decay > 0 else None
    prior_state = None   # the prior-alone weights, kept for the one-SE rule
    if init_state is not None:  # resume within a fold
        model.load_state_dict(init_state["model"]); opt.load_state_dict(init_state["opt"])
        if ema is not None and init_state.get("ema") is not None:
            ema.module.load_state_dict(init_state["ema"])
        stop.best_state, stop.best_auc = init_state["best_state"], init_state["best_auc"]
        stop.best_epoch, stop.bad = init_state["best_epoch"], init_state["bad"]
        history, start_epoch = init_state["history"], init_state["epoch"] + 1
        rng.bit_generator.state = init_state["rng"]; gen.set_state(init_state["gen"])
        torch.set_rng_state(init_state["torch_rng"])
        prior_state = init_state.get("prior_state")
        if stop.should_stop(start_epoch - 1):
            start_epoch = s.epochs   # the checkpointed epoch had already met the early-stopping rule
    elif prior and val:
        # epoch -1 = the linear prior alone (deep part silent): a candidate like any epoch
        auc0 = validation_auc(model, val, s)
        stop.update(-1, auc0, model)
        history.append({"epoch": -1, "loss": None, "val_auc": auc0})
        if stop.best_epoch == -1:
            prior_state = stop.best_state   # EarlyStopping replaces, never mutates, its best state
    prior_rec = next((h for h in history if h["epoch"] == -1), None)
    for epoch in range(start_epoch, s.epochs):
        model.train()
        losses = []
        for gi in rng.permutation(len(train)):
            for piece, mask in _batches(train[gi], s, rng):
                piece = _to(piece, dev)
                out = model(piece, model_settings.modality_dropout)
                loss, parts = _loss(model, out, piece.y, mask.to(dev), pos_weight, s, gen)
                opt.zero_grad(); loss.backward()
                if s.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
                opt.step()
                if ema is not None:
                    ema.update(model)
                losses.append(parts)
        rec = {"epoch": epoch, "loss": float(np.mean([p["bce"] + model_settings.contrastive_weight * p.get("nce", 0)
                                                        for p in losses]))}
        if any("nce" in p for p in losses):
            rec["nce"] = float(np.mean([p["nce"] for p in losses if "nce" in p]))
        judged = ema.module if ema is not None else model
        auc = validation_auc(judged, val, s) if val else None
        rec["val_auc"] = auc
        history.append(rec)
        if auc is not None and s.val_smoothing > 1:
            recent = [h["val_auc"] for h in history[-s.val_smoothing:] if h["val_auc"] is not None]
            auc = float(np.mean(recent))
            rec["val_auc_smoothed"] = auc
        stop.update(epoch, auc, judged)
        if progress is not None:
            progress(epoch, rec)
        if on_epoch is not None:
            on_epoch(epoch, rec, lambda: {"model": model.state_dict(), "opt": opt.state_dict(), "best_state": stop.best_state,
                                          "best_auc": stop.best_auc, "best_epoch": stop.best_epoch, "bad": stop.bad,
                                          "history": history, "epoch": epoch, "rng": rng.bit_generator.state,
                                          "ema": ema.module.state_dict() if ema is not None else None,
                                          "prior_state": prior_state,
                                          "gen": gen.get_state(), "torch_rng": torch.get_rng_state()})
        if stop.should_stop(epoch):
            break
    kept = False
    if (s.one_se_rule and prior_state is not None and prior_rec["val_auc"] is not None and stop.best_epoch != -1
            and stop.best_auc - prior_rec["val_auc"] <= validation_auc_se(prior_rec["val_auc"], val)):
        # the simpler model unless the deep part's validation gain exceeds one standard error
        stop.best_state, stop.best_epoch, stop.best_auc, kept = prior_state, -1, prior_rec["val_auc"], True
    stop.restore_best(model)
    return FitResult(model=model, best_epoch=stop.best_epoch, best_val_auc=stop.best_val_auc, history=history,
                     kept_prior_by_se=kept)
