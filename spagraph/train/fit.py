"""Fit and predict: one training loop (:func:`train_loop`) for spagraph and the torch baselines.

:func:`fit` reads as its steps: build the model and fit its linear prior
(:func:`build_model`), the class balance (:func:`positive_weight`), a fresh or resumed loop
state (:func:`start_state` / :func:`resume_state`), the prior alone as candidate epoch -1
(:func:`prior_candidate`), the epochs (:func:`train_loop`, with an optional weight EMA), then the
rule that may keep the prior over a deep epoch (:func:`prefer_prior`).
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch_geometric.data import Data

from spagraph.experiment.config import TrainConfig
from spagraph.graph.orientation import random_turn
from spagraph.nn.losses import info_nce, weighted_bce
from spagraph.nn.model import ModelSettings, SpaGraphNet
from spagraph.train.early_stopping import EarlyStopping
from spagraph.train.metrics import auc_standard_error, binary_metrics
from spagraph.train.tiles import iter_tiles

# The validated ``train:`` section of an experiment is the training settings (one set of defaults;
# ``seeds`` is read by the runner, not here).
TrainSettings = TrainConfig

GRAD_CLIP = 1.0                 # max gradient norm per optimiser step
MAX_CONTRASTIVE_SPOTS = 1024    # spots sampled per piece for the InfoNCE term


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
    """Yield (graph, loss_mask) pieces of a slice: the whole graph, or tiles (interior only).
    With ``s.orient_augment`` (training only: ``rng`` given) each piece's direction bins get a
    random cyclic shift and reflection (:func:`spagraph.graph.orientation.random_turn`)."""
    turn = s.orient_augment and rng is not None
    if _use_tiles(data, s):
        for sub, _ in iter_tiles(data, s.tile_size, shuffle=rng is not None, generator=rng):
            yield (random_turn(sub, rng) if turn else sub), sub.interior
    else:
        yield (random_turn(data, rng) if turn else data), torch.ones(data.num_nodes, dtype=torch.bool)


def _to(data: Data, device: torch.device) -> Data:
    return data if device.type == "cpu" else data.to(device)


def _loss(model: SpaGraphNet, out: dict, y: torch.Tensor, mask: torch.Tensor, pos_weight: float,
          s: TrainSettings, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    lab = mask & ~torch.isnan(y)
    cls = weighted_bce(out["logit"][lab], y[lab], pos_weight) if lab.any() else out["logit"].sum() * 0
    total, parts = cls, {"bce": float(cls.detach())}
    w = model.settings.contrastive_weight
    both = mask & (out["m_img"] > 0) & (out["m_gene"] > 0)
    if w > 0 and model.img is not None and model.gene is not None and both.sum() > 1:
        idx = torch.nonzero(both).squeeze(1)
        if len(idx) > MAX_CONTRASTIVE_SPOTS:
            idx = idx[torch.randperm(len(idx), generator=gen)[:MAX_CONTRASTIVE_SPOTS].to(idx.device)]
        nce = info_nce(out["z_img"][idx], out["z_gene"][idx], model.settings.temperature)
        total = total + w * nce
        parts["nce"] = float(nce.detach())
    parts["loss"] = float(total.detach())
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




# ------------------------------------------------------------------ the training loop


@dataclass
class LoopState:
    """Everything a training loop carries from epoch to epoch (and a checkpoint holds)."""
    stop: EarlyStopping
    rng: np.random.Generator          # slice order, tiles, orientation turns
    gen: torch.Generator              # contrastive sub-sampling
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    ema: "WeightEMA | None" = None
    prior_state: dict | None = None   # the prior-alone weights (candidate epoch -1), for prefer_prior


def train_loop(model: torch.nn.Module, opt: torch.optim.Optimizer, state: LoopState, epochs: int,
               steps: Callable[[np.random.Generator], Iterable[tuple[torch.Tensor, dict]]],
               validate: Callable[[torch.nn.Module], float | None],
               after_epoch: Callable[[int, dict], None] | None = None) -> None:
    """Epochs ``state.start_epoch .. epochs - 1`` of: for each (loss, parts) that ``steps(rng)``
    yields, one optimiser step (gradient norm clipped at :data:`GRAD_CLIP`, then the weight EMA
    when ``state.ema``); then ``validate`` the model (the EMA copy when there is one), record
    the epoch in ``state.history`` and ``state.stop``, call ``after_epoch(epoch, record)``, and
    stop early by ``state.stop``'s rule. ``parts`` holds floats: ``loss`` (the total) and
    optional named terms, averaged into the epoch record (``bce`` is not repeated there).

    Shared by :func:`fit` and the torch baselines (:mod:`spagraph.train.baselines`).
    """
    for epoch in range(state.start_epoch, epochs):
        model.train()
        parts = []
        for loss, p in steps(state.rng):
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            if state.ema is not None:
                state.ema.update(model)
            parts.append(p)
        rec = {"epoch": epoch, "loss": float(np.mean([p["loss"] for p in parts])) if parts else None}
        for k in sorted({k for p in parts for k in p} - {"loss", "bce"}):
            rec[k] = float(np.mean([p[k] for p in parts if k in p]))
        judged = state.ema.module if state.ema is not None else model
        rec["val_auc"] = validate(judged)
        state.history.append(rec)
        state.stop.update(epoch, rec["val_auc"], judged)
        if after_epoch is not None:
            after_epoch(epoch, rec)
        if state.stop.should_stop(epoch):
            break


# ------------------------------------------------------------------ fit, step by step


def build_model(train: list[Data], model_settings: ModelSettings, s: TrainSettings, seed: int,
                warm_start: dict | None = None) -> SpaGraphNet:
    """A seeded SpaGraphNet sized for the training slices, its linear prior fitted (training
    labels only) and frozen when ``linear_path`` and ``linear_fit == "prior"``. ``warm_start``:
    a partial state dict (e.g. pretrained streams, :mod:`spagraph.pretrain.contrastive`) loaded
    over the fresh weights before the prior is fitted; its keys must exist in the model."""
    seed_everything(seed)
    g0 = train[0]
    model = SpaGraphNet(g0.x_img.shape[1], g0.x_gene.shape[1], g0.num_scales, g0.n_dir_bins, model_settings)
    if warm_start:
        unknown = model.load_state_dict(warm_start, strict=False).unexpected_keys
        if unknown:
            raise ValueError(f"warm_start holds {len(unknown)} weight(s) the model lacks, e.g. {unknown[:3]}")
    if has_prior(model_settings):
        fit_linear_prior(model, train, seed)
    return model.to(resolve_device(s.device))


def has_prior(model_settings: ModelSettings) -> bool:
    return bool(model_settings.linear_path and model_settings.linear_fit == "prior")


def positive_weight(train: list[Data], s: TrainSettings) -> float:
    """``n_neg / n_pos`` of the training spots (1 without ``class_weight``); a clear error when
    the training slices hold one class only."""
    ys = torch.cat([g.y[g.label_mask] for g in train])
    n_pos, n_neg = float((ys == 1).sum()), float((ys == 0).sum())
    if n_pos == 0 or n_neg == 0:
        names = [str(getattr(g, "name", None) or i) for i, g in enumerate(train)]
        raise ValueError(f"training slices {names} hold a single class ({int(n_pos)} cancer, {int(n_neg)} non-cancer "
                         "labelled spots): cannot train a classifier")
    return n_neg / n_pos if s.class_weight else 1.0


def start_state(model: torch.nn.Module, s: TrainSettings, seed: int, has_val: bool) -> LoopState:
    """The loop state of a fresh fit (random streams seeded by ``seed``)."""
    return LoopState(stop=EarlyStopping(s.patience, s.min_epochs, has_val=has_val),
                     rng=np.random.default_rng(seed), gen=torch.Generator().manual_seed(seed),
                     ema=WeightEMA(model, s.ema_decay) if s.ema_decay > 0 else None)


def resume_state(state: LoopState, model: torch.nn.Module, opt: torch.optim.Optimizer, saved: dict,
                 epochs: int) -> None:
    """Continue a fit from :func:`checkpoint_state`'s dict (model, optimiser, EMA, early stopping,
    history and every random stream), at the epoch after the saved one."""
    model.load_state_dict(saved["model"]); opt.load_state_dict(saved["opt"])
    if state.ema is not None and saved.get("ema") is not None:
        state.ema.module.load_state_dict(saved["ema"])
    st = state.stop
    st.best_state, st.best_auc, st.best_epoch, st.bad = saved["best_state"], saved["best_auc"], saved["best_epoch"], saved["bad"]
    state.history, state.start_epoch = saved["history"], saved["epoch"] + 1
    state.rng.bit_generator.state = saved["rng"]; state.gen.set_state(saved["gen"])
    torch.set_rng_state(saved["torch_rng"])
    state.prior_state = saved.get("prior_state")
    if st.should_stop(state.start_epoch - 1):
        state.start_epoch = epochs   # the checkpointed epoch had already met the early-stopping rule


def checkpoint_state(state: LoopState, model: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int) -> dict:
    """What :func:`resume_state` needs to continue after ``epoch``."""
    st = state.stop
    return {"model": model.state_dict(), "opt": opt.state_dict(), "best_state": st.best_state,
            "best_auc": st.best_auc, "best_epoch": st.best_epoch, "bad": st.bad, "history": state.history,
            "epoch": epoch, "rng": state.rng.bit_generator.state,
            "ema": state.ema.module.state_dict() if state.ema is not None else None,
            "prior_state": state.prior_state, "gen": state.gen.get_state(), "torch_rng": torch.get_rng_state()}


def prior_candidate(model: SpaGraphNet, val: list[Data], s: TrainSettings, state: LoopState) -> None:
    """Epoch -1: the linear prior alone (the deep part starts silent) is a candidate like any
    epoch; its weights are kept for :func:`prefer_prior`."""
    auc0 = validation_auc(model, val, s)
    state.stop.update(-1, auc0, model)
    state.history.append({"epoch": -1, "loss": None, "val_auc": auc0})
    if state.stop.best_epoch == -1:
        state.prior_state = state.stop.best_state   # EarlyStopping replaces, never mutates, its best state


def paired_validation_gain(model: SpaGraphNet, deep_state: dict, prior_state: dict, val: list[Data],
                           s: TrainSettings) -> tuple[float, float]:
    """Mean over validation slices of AUC(deep) - AUC(prior) on the same spots, and its standard
    error from DeLong's paired variance per slice (:func:`spagraph.train.metrics.delong_paired`),
    combined as for a mean of independent slices. ``model`` is used as scratch and left holding
    ``deep_state``."""
    from spagraph.train.metrics import delong_paired
    scores = []
    for state in (prior_state, deep_state):
        model.load_state_dict(state)
        scores.append([predict_scores(model, g, s) for g in val])
    diffs, vars_ = [], []
    for i, g in enumerate(val):
        m = g.label_mask.numpy()
        if m.sum() == 0:
            continue
        a_deep, a_prior, v = delong_paired(g.y.numpy()[m], scores[1][i][m], scores[0][i][m])
        if np.isfinite(v) and not np.isnan(a_deep):
            diffs.append(a_deep - a_prior); vars_.append(v)
    if not diffs:
        return 0.0, float("inf")
    return float(np.mean(diffs)), float(np.sqrt(np.sum(vars_)) / len(diffs))


def prefer_prior(state: LoopState, val: list[Data], model: SpaGraphNet | None = None,
                 s: TrainSettings | None = None) -> bool:
    """The override rule (``train.one_se_rule``): keep the prior alone unless the best deep
    epoch's validation AUC beats the prior's by more than one standard error. The standard
    error (``train.prior_rule_se``): ``hanley_mcneil``, one AUC's unpaired SE at the prior's AUC
    (:func:`validation_auc_se`); ``delong``, the paired SE of the AUC difference on the same
    validation spots (:func:`paired_validation_gain`; needs ``model`` and ``s``). Returns True
    when it overrode a deep epoch."""
    prior = next((h for h in state.history if h["epoch"] == -1), None)
    st = state.stop
    if state.prior_state is None or prior is None or prior["val_auc"] is None or st.best_epoch == -1:
        return False
    if s is not None and s.prior_rule_se == "delong":
        gain, se = paired_validation_gain(model, st.best_state, state.prior_state, val, s)
    else:
        gain, se = st.best_auc - prior["val_auc"], validation_auc_se(prior["val_auc"], val)
    if gain > se:
        return False
    st.best_state, st.best_epoch, st.best_auc = state.prior_state, -1, prior["val_auc"]
    return True


def spagraph_steps(model: SpaGraphNet, train: list[Data], s: TrainSettings, pos_weight: float, gen: torch.Generator,
                   target: list[Data] | None = None):
    """``steps(rng)`` for :func:`train_loop`: every piece of every training slice (slices in
    random order; whole graphs or tiles; orientation-augmented with ``s.orient_augment``), or with
    ``s.tiles_per_step`` > 0 mini-batches of tiles mixed over all training slices
    (:mod:`spagraph.train.minibatch`). With label-free ``target`` slices and ``s.coral_weight``,
    ``s.mmd_weight`` or ``s.adversarial_weight`` > 0, each step adds those terms between its
    training spots' fused features and a target slice's (:class:`spagraph.train.adapt.Alignment`;
    the adversarial discriminator steps after the model)."""
    dev = next(model.parameters()).device
    tiles = None
    if s.tiles_per_step > 0:
        from spagraph.train.minibatch import slice_tiles
        if model.settings.hidden_norm == "slice":
            raise ValueError("train.tiles_per_step > 0 mixes tiles of several slices in one step, so model.hidden_norm: "
                             "slice would normalise over a mixture of slices: use one of the two")
        tiles = slice_tiles(train, s.tile_size)      # cut once; shuffled and grouped every epoch
    from spagraph.train.adapt import Alignment, pick_index, uses_target
    align = Alignment(s, len(train), len(target), gen.initial_seed()) if uses_target(s) and target else None
    if align and any(bool(t.label_mask.any()) for t in target):
        raise ValueError("alignment targets (CORAL / MMD / adversarial) must carry no labels: pass them through "
                         "spagraph.train.adapt.strip_labels")

    def pieces(rng: np.random.Generator):   # (graph, loss mask, training-slice index of each node)
        if tiles is not None:
            from spagraph.train.minibatch import merge_tiles, tile_batches
            for group in tile_batches(tiles, s.tiles_per_step, rng):
                merged = merge_tiles([random_turn(t, rng) if s.orient_augment else t for t in group])
                yield merged, merged.interior, torch.cat([torch.full((t.num_nodes,), int(t.slice_id)) for t in group])
        else:
            for gi in rng.permutation(len(train)):
                for piece, mask in _batches(train[gi], s, rng):
                    yield piece, mask, torch.full((piece.num_nodes,), int(gi))

    def steps(rng: np.random.Generator):
        if align:
            align.start_epoch()
        for piece, mask, which in pieces(rng):
            piece = _to(piece, dev)
            mask = mask.to(dev)
            out = model(piece, model.settings.modality_dropout)
            total, parts = _loss(model, out, piece.y, mask, pos_weight, s, gen)
            if align:
                ti = pick_index(len(target), rng)
                a, extra = align.loss(out["h"][mask], which[mask.cpu()], model(_to(target[ti], dev))["h"], ti, gen)
                total = total + a
                parts.update(extra)
                parts["loss"] = float(total.detach())
            yield total, parts
            if align:
                align.after_step()
    steps.align = align   # its state travels in training checkpoints (fit)
    return steps


def fit(train: list[Data], val: list[Data], model_settings: ModelSettings, s: TrainSettings, seed: int,
        on_epoch: Callable[[int, dict, Callable[[], dict]], None] | None = None, progress=None,
        init_state: dict | None = None, pretrained: dict | None = None,
        warm_start: dict | None = None, target: list[Data] | None = None) -> FitResult:
    """Train a SpaGraphNet on ``train`` slices, early-stopping on ``val`` slices' AUC.

    ``target``: label-free slices (:func:`spagraph.train.adapt.strip_labels`) the CORAL, MMD and
    adversarial terms align to when their weights are > 0 (the test slice; its labels never enter).

    Only ``train`` labels enter the loss (and the linear prior); only ``val`` labels choose the
    epoch. ``on_epoch(epoch, record, state_fn)`` runs after each epoch (tracking, pruning,
    checkpoints: ``state_fn()`` is the dict ``init_state`` resumes from; it may raise to stop).
    ``pretrained``: gene-stream weights from :func:`spagraph.pretrain.ssl.pretrain_fold` to start from.
    Returns the model at its best validation epoch (the last epoch when no validation).
    ``warm_start``: initial weights for part of the model (see :func:`build_model`).
    """
    if not train:
        raise ValueError("no training slices")
    model = build_model(train, model_settings, s, seed, warm_start)
    if pretrained is not None:   # self-supervised start of the gene stream (spagraph.pretrain)
        from spagraph.pretrain.ssl import load_pretrained
        load_pretrained(model, pretrained)
    pos_weight = positive_weight(train, s)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr, weight_decay=s.weight_decay)
    state = start_state(model, s, seed, has_val=bool(val))
    if init_state is not None:
        resume_state(state, model, opt, init_state, s.epochs)
    elif has_prior(model_settings) and val:
        prior_candidate(model, val, s, state)

    steps = spagraph_steps(model, train, s, pos_weight, state.gen, target)
    if steps.align is not None and init_state is not None:   # the adversarial discriminator, ramp
        steps.align.load_state_dict(init_state.get("align"))

    def checkpoint(epoch: int) -> dict:
        out = checkpoint_state(state, model, opt, epoch)
        return out if steps.align is None else out | {"align": steps.align.state_dict()}

    def after_epoch(epoch: int, rec: dict) -> None:
        if progress is not None:
            progress(epoch, rec)
        if on_epoch is not None:
            on_epoch(epoch, rec, lambda: checkpoint(epoch))

    train_loop(model, opt, state, s.epochs, steps,
               (lambda m: validation_auc(m, val, s)) if val else (lambda m: None), after_epoch)
    kept = s.one_se_rule and prefer_prior(state, val, model, s)
    state.stop.restore_best(model)
    return FitResult(model=model, best_epoch=state.stop.best_epoch, best_val_auc=state.stop.best_val_auc,
                     history=state.history, kept_prior_by_se=kept)
