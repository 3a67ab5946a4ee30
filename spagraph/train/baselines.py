"""Baselines scored by exactly the same protocol as spagraph (``model_type: baseline``).

``cfg.baseline`` selects one of:

``logreg``          sklearn logistic regression (class_weight balanced) on standardised features
                    (``standardise: false``: as they are, e.g. PCs, whose scale carries meaning);
                    ``smooth: true`` appends the mean neighbour features at every graph scale,
                    ``smooth: disc`` the disc means (the spot itself included) at every scale:
                    spatially smoothed features. ``feature_smoothing: a`` (0 < a < 1) then smooths
                    its logits over the expression-neighbour graph (``graph.feature_knn``), as
                    spagraph's ``model.feature_smoothing`` does.
``mlp``             a torch MLP on the concatenated features, no graph.
``gcn|sage|gat``    two PyG stock layers (GCNConv / SAGEConv / GATConv) on the scale-1 edges.
``spacancer_like``  after SpaCancer's description: per spot the 8-direction binned neighbour means
                    of the features (every graph scale) next to its own features, one token per
                    modality, single-token cross-attention between the image and gene vectors,
                    and a GLU-gated MLP classifier (genes only: the gene path alone).

Common keys: ``features`` ("gene" | "img" | "both", default "both"), ``hidden`` (64),
``dropout`` (0.2), ``lr`` / ``weight_decay`` / ``epochs`` / ``patience`` (default: ``cfg.train``),
``C`` (logreg, 1.0), ``heads`` (gat / spacancer_like, 4).

Honesty: feature standardisation is fitted on the training slices only; only training labels
enter a loss; only validation labels choose the epoch (mean per-slice validation AUC, the
same early-stopping rule as :func:`spagraph.train.fit.fit`). Thresholds and test metrics are
the runner's common code. Deterministic given the seed (CPU).

Limits: the torch baselines train and predict on the full graph of each slice (one step per
training slice per epoch); ``train.batch_mode`` / tiles are not used, so they are meant for
ordinary slices (tens of thousands of spots), not the 1M-spot tiled setting.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from spagraph.nn.feature_smoothing import FeatureGraphSmoothing, feature_edges
from spagraph.train.early_stopping import EarlyStopping
from spagraph.train.fit import LoopState, seed_everything, train_loop
from spagraph.train.metrics import binary_metrics

log = logging.getLogger("spagraph")

KINDS = ("logreg", "mlp", "gcn", "sage", "gat", "spacancer_like")
FEATURES = ("gene", "img", "both")
KNOWN_KEYS = {"kind", "features", "smooth", "hidden", "dropout", "lr", "weight_decay", "epochs", "patience",
              "min_epochs", "C", "heads", "max_iter", "standardise", "feature_smoothing"}

Predictor = Callable[[Data], np.ndarray]


# ----------------------------------------------------------------------------- features

def _modalities(graphs: list[Data], features: str) -> list[str]:
    """The feature keys a baseline uses, checked against the graphs' widths."""
    if features not in FEATURES:
        raise ValueError(f"baseline.features must be one of {FEATURES}, got {features!r}")
    want = {"gene": ["x_gene"], "img": ["x_img"], "both": ["x_gene", "x_img"]}[features]
    have = [k for k in want if graphs[0][k].shape[1] > 0]
    if not have:
        raise ValueError(f"baseline.features={features!r}: the slices have no "
                         f"{' or '.join(k[2:] for k in want)} embedding (check embed.image_encoder / gene_encoder)")
    if len(have) < len(want):
        log.warning("baseline.features=%r: no %s embedding in these slices; using %s only", features,
                    [k[2:] for k in want if k not in have], [k[2:] for k in have])
    return have


def neighbour_means(x: Tensor, edge_index: Tensor, n: int) -> Tensor:
    """Mean of the source features over each destination's neighbours (0 with none), (n, F)."""
    if edge_index.numel() == 0:
        return torch.zeros(n, x.shape[1], dtype=x.dtype)
    return scatter(x[edge_index[0]], edge_index[1], dim=0, dim_size=n, reduce="mean")


def direction_bin_means(x: Tensor, edge_index: Tensor, edge_dir: Tensor, n: int, n_bins: int) -> Tensor:
    """Per-direction-sector neighbour means, flattened to (n, n_bins * F) (empty sector: 0)."""
    f = x.shape[1]
    if edge_index.numel() == 0:
        return torch.zeros(n, n_bins * f, dtype=x.dtype)
    slot = edge_index[1] * n_bins + edge_dir
    out = scatter(x[edge_index[0]], slot, dim=0, dim_size=n * n_bins, reduce="mean")
    return out.view(n, n_bins * f)


def raw_features(g: Data, keys: list[str], smooth: bool | str = False) -> Tensor:
    """Concatenated node features (+ neighbour means at each scale with ``smooth``; + disc means,
    the spot included, with ``smooth="disc"``), (n, F)."""
    x = torch.cat([g[k].float() for k in keys], dim=1)
    if "x_img" in keys and len(keys) > 1:
        x = torch.cat([x, g.has_img.float()[:, None]], dim=1)   # a slice without image: zeros + flag 0
    if smooth == "disc":
        from spagraph.nn.disc_mean import with_disc_means
        x = with_disc_means(x, g, g.num_scales)
    elif smooth:
        x = torch.cat([x] + [neighbour_means(x, g[f"edge_index_{k}"], g.num_nodes) for k in range(g.num_scales)], 1)
    return x


class Standardiser:
    """Per-column mean / std fitted on training spots only (constant columns keep std 1)."""

    def __init__(self, xs: list[Tensor]):
        x = torch.cat(xs, 0).double()
        self.mean = x.mean(0)
        sd = x.std(0, unbiased=False)
        self.std = torch.where(sd > 1e-8, sd, torch.ones_like(sd))

    def __call__(self, x: Tensor) -> Tensor:
        return ((x.double() - self.mean) / self.std).float()


def _labelled(g: Data) -> tuple[np.ndarray, np.ndarray]:
    m = g.label_mask.numpy()
    return m, g.y.numpy()[m].astype(int)


def _class_counts(graphs: list[Data]) -> tuple[int, int]:
    ys = np.concatenate([_labelled(g)[1] for g in graphs])
    n_pos, n_neg = int((ys == 1).sum()), int((ys == 0).sum())
    if n_pos == 0 or n_neg == 0:
        names = [str(getattr(g, "name", None) or i) for i, g in enumerate(graphs)]
        raise ValueError(f"training slices {names} hold a single class ({n_pos} cancer, {n_neg} non-cancer "
                         "labelled spots): cannot train a classifier")
    return n_pos, n_neg


def _mean_val_auc(score_fn: Callable[[Data], np.ndarray], graphs: list[Data]) -> float | None:
    aucs = []
    for g in graphs:
        m, y = _labelled(g)
        if m.sum() == 0:
            continue
        r = binary_metrics(y, score_fn(g)[m], 0.5)
        if r["auc"] is not None:
            aucs.append(r["auc"])
    return float(np.mean(aucs)) if aucs else None


# ----------------------------------------------------------------------------- logistic regression

def _fit_logreg(b: dict, train: list[Data], val: list[Data], seed: int, keys: list[str]) -> tuple[Predictor, dict]:
    from sklearn.linear_model import LogisticRegression
    smooth = b.get("smooth", False)
    if smooth not in (True, False, "disc"):
        raise ValueError(f"baseline.smooth must be true, false or 'disc', got {smooth!r}")
    xs = [raw_features(g, keys, smooth) for g in train]
    scaler = Standardiser(xs) if b.get("standardise", True) else (lambda x: x.float())
    X = np.concatenate([scaler(x).numpy()[_labelled(g)[0]] for x, g in zip(xs, train)])
    y = np.concatenate([_labelled(g)[1] for g in train])
    clf = LogisticRegression(C=float(b.get("C", 1.0)), class_weight="balanced", max_iter=int(b.get("max_iter", 2000)),
                             random_state=seed)
    clf.fit(X, y)
    alpha = float(b.get("feature_smoothing", 0.0))
    smoother = FeatureGraphSmoothing(alpha) if alpha > 0 else None

    def predict(g: Data) -> np.ndarray:
        z = torch.from_numpy(clf.decision_function(scaler(raw_features(g, keys, smooth)).numpy()).astype(np.float64))
        if smoother is not None:
            z = smoother(z, feature_edges(g, alpha))
        return torch.sigmoid(z).numpy().astype(np.float64)

    return predict, {"best_epoch": None, "best_val_auc": _mean_val_auc(predict, val) if val else None,
                     "n_features": int(X.shape[1])}


# ----------------------------------------------------------------------------- torch models

class MLP(nn.Module):
    """Spot-wise classifier: [Linear, GELU, Dropout] x 2 -> Linear(1)."""

    def __init__(self, d_in: int, hidden: int = 64, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, b: dict) -> Tensor:
        return self.net(b["x"]).squeeze(1)


class StockGNN(nn.Module):
    """Two PyG stock graph layers (GCN / GraphSAGE / GAT) on the scale-1 edges, then Linear(1)."""

    def __init__(self, kind: str, d_in: int, hidden: int = 64, dropout: float = 0.2, heads: int = 4):
        super().__init__()
        from torch_geometric.nn import GATConv, GCNConv, SAGEConv
        if kind == "gcn":
            self.c1, self.c2 = GCNConv(d_in, hidden), GCNConv(hidden, hidden)
        elif kind == "sage":
            self.c1, self.c2 = SAGEConv(d_in, hidden), SAGEConv(hidden, hidden)
        elif kind == "gat":
            if hidden % heads:
                raise ValueError(f"baseline gat: hidden ({hidden}) must be divisible by heads ({heads})")
            self.c1 = GATConv(d_in, hidden // heads, heads=heads, dropout=dropout)
            self.c2 = GATConv(hidden, hidden // heads, heads=heads, dropout=dropout)
        else:
            raise ValueError(f"unknown GNN kind {kind!r}")
        self.drop = nn.Dropout(dropout)
        self.act = nn.GELU()
        self.out = nn.Linear(hidden, 1)

    def forward(self, b: dict) -> Tensor:
        h = self.drop(b["x"])
        h = self.drop(self.act(self.c1(h, b["edge_index"])))
        h = self.drop(self.act(self.c2(h, b["edge_index"])))
        return self.out(h).squeeze(1)


class SpaCancerLike(nn.Module):
    """Single-token image<->gene cross-attention and a GLU-gated classifier.

    Each modality's input is [own features || 8-direction neighbour means at every scale]
    (precomputed, standardised), projected to one ``hidden`` token. The gene token attends to
    the image token and the image token to the gene token (one key each: the attention output
    is the projected value of the other modality, gated off where a spot has no image).
    Fused = [gene' || image'] -> Linear -> GLU -> Dropout -> Linear(1). Genes only: the
    fusion degenerates to the gene token.
    """

    def __init__(self, d_gene: int, d_img: int, hidden: int = 64, heads: int = 4, dropout: float = 0.2):
        super().__init__()
        if d_gene <= 0 and d_img <= 0:
            raise ValueError("spacancer_like needs image or gene features")

        def proj(d):
            return nn.Sequential(nn.Dropout(dropout), nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.GELU()) if d > 0 else None
        self.gene, self.img = proj(d_gene), proj(d_img)
        self.both = d_gene > 0 and d_img > 0
        if self.both:
            self.g_from_i = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
            self.i_from_g = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
            self.norm_g, self.norm_i = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        d_fused = hidden * (2 if self.both else 1)
        self.head = nn.Sequential(nn.Linear(d_fused, 2 * hidden), nn.GLU(dim=1), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, b: dict) -> Tensor:
        toks = []
        if self.both:
            g = self.gene(b["x_gene"])[:, None]      # (N, 1, H)
            i = self.img(b["x_img"])[:, None]
            m = b["has_img"].float()[:, None, None]
            a_g, _ = self.g_from_i(g, i, i, need_weights=False)
            a_i, _ = self.i_from_g(i, g, g, need_weights=False)
            g = self.norm_g(g + m * a_g)
            i = self.norm_i(i + a_i) * m
            toks = [g[:, 0], i[:, 0]]
        else:
            toks = [self.gene(b["x_gene"]) if self.gene is not None else self.img(b["x_img"])]
        return self.head(torch.cat(toks, 1)).squeeze(1)


def _spacancer_inputs(g: Data, key: str) -> Tensor:
    x = g[key].float()
    n, nb = g.num_nodes, int(g.n_dir_bins)
    return torch.cat([x] + [direction_bin_means(x, g[f"edge_index_{k}"], g[f"edge_dir_{k}"], n, nb)
                            for k in range(g.num_scales)], dim=1)


def _prepare(kind: str, train: list[Data], keys: list[str], b: dict):
    """Build the per-graph input dicts (standardised on training spots) and the model factory."""
    if kind == "spacancer_like":
        raws = {k: [_spacancer_inputs(g, k) for g in train] for k in keys}
        scalers = {k: Standardiser(v) for k, v in raws.items()}

        def inputs(g: Data) -> dict:
            d = {"has_img": g.has_img}
            for k in keys:
                d[k] = scalers[k](_spacancer_inputs(g, k))
            return d
        d_gene = raws["x_gene"][0].shape[1] if "x_gene" in keys else 0
        d_img = raws["x_img"][0].shape[1] if "x_img" in keys else 0
        return inputs, lambda: SpaCancerLike(d_gene, d_img, int(b.get("hidden", 64)), int(b.get("heads", 4)),
                                             float(b.get("dropout", 0.2))), d_gene + d_img
    scaler = Standardiser([raw_features(g, keys) for g in train])

    def inputs(g: Data) -> dict:
        return {"x": scaler(raw_features(g, keys)), "edge_index": g["edge_index_0"]}
    d_in = int(scaler.mean.shape[0])
    if kind == "mlp":
        return inputs, lambda: MLP(d_in, int(b.get("hidden", 64)), float(b.get("dropout", 0.2))), d_in
    return inputs, lambda: StockGNN(kind, d_in, int(b.get("hidden", 64)), float(b.get("dropout", 0.2)),
                                    int(b.get("heads", 4))), d_in


def _fit_torch(kind: str, b: dict, cfg, train: list[Data], val: list[Data], seed: int, keys: list[str],
               on_epoch) -> tuple[Predictor, dict]:
    seed_everything(seed)
    inputs, make, d_in = _prepare(kind, train, keys, b)
    model = make()
    tc = cfg.train
    epochs = int(b.get("epochs", tc.epochs))
    patience, min_epochs = int(b.get("patience", tc.patience)), int(b.get("min_epochs", tc.min_epochs))
    opt = torch.optim.AdamW(model.parameters(), lr=float(b.get("lr", tc.lr)),
                            weight_decay=float(b.get("weight_decay", tc.weight_decay)))
    n_pos, n_neg = _class_counts(train)
    pos_weight = torch.tensor(n_neg / n_pos if tc.class_weight else 1.0)
    tr = [(inputs(g), g.label_mask, g.y) for g in train]
    cache: dict[int, dict] = {}

    @torch.no_grad()
    def predict(g: Data) -> np.ndarray:
        model.eval()
        key = id(g)
        d = cache.get(key) if key in cache and cache[key]["_g"] is g else None
        if d is None:
            d = inputs(g)
        return torch.sigmoid(model(d)).numpy().astype(np.float64)

    for g in val:   # validation inputs computed once per fit (they never change)
        cache[id(g)] = inputs(g) | {"_g": g}
    state = LoopState(stop=EarlyStopping(patience, min_epochs, has_val=bool(val)), rng=np.random.default_rng(seed),
                      gen=torch.Generator().manual_seed(seed))

    def steps(rng: np.random.Generator):
        for gi in rng.permutation(len(tr)):
            d, m, y = tr[gi]
            loss = nn.functional.binary_cross_entropy_with_logits(model(d)[m], y[m], pos_weight=pos_weight)
            yield loss, {"loss": float(loss.detach())}

    # the same loop as spagraph's fit: clipped AdamW steps, early stopping on mean validation AUC
    train_loop(model, opt, state, epochs, steps, (lambda _m: _mean_val_auc(predict, val)) if val else (lambda _m: None),
               on_epoch)
    stop, history = state.stop, state.history
    stop.restore_best(model)
    cache.clear()
    n_params = sum(p.numel() for p in model.parameters())
    return predict, {"best_epoch": stop.best_epoch, "best_val_auc": stop.best_val_auc,
                     "history": history, "n_features": int(d_in), "n_params": int(n_params)}


# ----------------------------------------------------------------------------- entry point

def fit_baseline(cfg, train_graphs: list[Data], val_graphs: list[Data], seed: int,
                 on_epoch: Callable[[int, dict], None] | None = None) -> tuple[Predictor, dict]:
    """Fit the baseline named by ``cfg.baseline`` on the training slices.

    Returns ``(predictor, info)``: ``predictor(graph)`` gives (n,) float64 scores in [0, 1] for
    every spot of a graph; ``info`` holds ``best_epoch``, ``best_val_auc`` (mean per-slice
    validation AUC of the returned model), ``kind``, ``features``, ``n_features`` (and
    ``history`` for the torch baselines).
    """
    b = dict(cfg.baseline or {})
    kind = b.get("kind")
    if kind not in KINDS:
        raise ValueError(f"baseline.kind must be one of {KINDS}, got {kind!r}")
    unknown = set(b) - KNOWN_KEYS
    if unknown:
        raise ValueError(f"baseline: unknown key(s) {sorted(unknown)}; known: {sorted(KNOWN_KEYS)}")
    for key in ("smooth", "feature_smoothing"):
        if b.get(key) and kind != "logreg":
            raise ValueError(f"baseline.{key} applies to kind 'logreg' only (got kind {kind!r})")
    a = b.get("feature_smoothing", 0.0)
    if not isinstance(a, (int, float)) or not 0 <= a < 1:
        raise ValueError(f"baseline.feature_smoothing must be a number in [0, 1), got {a!r}")
    if not train_graphs:
        raise ValueError("no training slices")
    features = b.get("features", "both")
    keys = _modalities(train_graphs, features)
    _class_counts(train_graphs)
    if kind == "logreg":
        seed_everything(seed)
        pred, info = _fit_logreg(b, train_graphs, val_graphs, seed, keys)
    else:
        pred, info = _fit_torch(kind, b, cfg, train_graphs, val_graphs, seed, keys, on_epoch)
    info.update({"kind": kind, "features": features, "modalities": [k[2:] for k in keys]})
    return pred, info
