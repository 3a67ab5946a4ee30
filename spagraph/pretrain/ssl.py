"""Self-supervised pretraining of the gene stream (input projection + MSFA layers) on unannotated slices.

Objectives (``pretrain.objective``):

- ``masked``: a random ``mask_rate`` of the spots have their gene embedding set to 0 (the
  training mean of the PCs) before the stream; a linear decoder must rebuild each masked spot's
  embedding from its MSFA scale tokens only (its neighbourhood; its own token saw only zeros).
  Loss: mean squared error over the masked spots divided by the mean square of their targets
  (1.0 = no better than predicting the mean).
- ``contrastive``: two views of each slice graph (each view drops 20 % of the embedding columns
  and 20 % of the edges of every scale, independently); the stream's mean token per spot goes
  through a small projection head, and InfoNCE (:func:`spagraph.nn.losses.info_nce`) pairs a spot's two views
  among up to 512 sampled spots.
- ``both``: the sum.

Why hand-written: the objectives act on spagraph's own token stream (:class:`spagraph.nn.model._Stream`)
and its multi-scale direction-binned graph; no library pretrains that layer.

The supervised fit then starts its gene stream from these weights
(:func:`spagraph.train.fit.fit`'s ``pretrained``); everything else is initialised as before.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from spagraph.nn.losses import info_nce
from spagraph.nn.model import ModelSettings, _Stream

log = logging.getLogger("spagraph")

VERSION = 1                  # bump when the pretraining computation changes (cache key)
VIEW_DROP = 0.2              # contrastive views: share of embedding columns and of edges dropped
MAX_CONTRASTIVE_SPOTS = 512  # spots sampled per slice for InfoNCE
GRAD_CLIP = 1.0


class _Pretrainer(nn.Module):
    """The gene stream plus the self-supervised heads (decoder, projection); only ``stream`` is kept.

    x (N, d) -> stream tokens (N, 1 + S, H); ``decode`` (N, S * H) -> (N, d); ``project`` (N, H) -> (N, H).
    """

    def __init__(self, d: int, settings: ModelSettings, n_scales: int, n_bins: int):
        super().__init__()
        if not settings.msfa:
            raise ValueError("pretraining trains the MSFA layers: model.msfa must be true")
        self.stream = _Stream(d, settings, n_scales, n_bins)
        h = settings.hidden
        self.decode = nn.Linear(n_scales * h, d)
        self.project = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, h))


def _mask_loss(m: _Pretrainer, g: Data, rate: float, gen: torch.Generator) -> Tensor:
    x = g.x_gene
    n = x.shape[0]
    masked = torch.rand(n, generator=gen) < rate
    if not masked.any():
        masked[int(torch.randint(n, (1,), generator=gen))] = True
    x_in = torch.where(masked[:, None], torch.zeros_like(x), x)
    tok = m.stream(x_in, g)                       # (N, 1 + S, H)
    rec = m.decode(tok[:, 1:].flatten(1))         # neighbourhood tokens only
    err = (rec[masked] - x[masked]).pow(2).mean()
    return err / x[masked].pow(2).mean().clamp_min(1e-8)


def _view(g: Data, gen: torch.Generator) -> tuple[Tensor, Data]:
    """An augmented copy: embedding columns dropped, edges of every scale dropped."""
    v = copy.copy(g)
    keep_col = (torch.rand(g.x_gene.shape[1], generator=gen) >= VIEW_DROP).float()
    for k in range(int(g.num_scales)):
        ei, ed = g[f"edge_index_{k}"], g[f"edge_dir_{k}"]
        keep = torch.rand(ei.shape[1], generator=gen) >= VIEW_DROP
        v[f"edge_index_{k}"], v[f"edge_dir_{k}"] = ei[:, keep], ed[keep]
    return g.x_gene * keep_col, v


def _contrastive_loss(m: _Pretrainer, g: Data, temperature: float, gen: torch.Generator) -> Tensor:
    n = g.x_gene.shape[0]
    idx = torch.randperm(n, generator=gen)[:MAX_CONTRASTIVE_SPOTS]
    z = []
    for _ in range(2):
        x, v = _view(g, gen)
        z.append(m.project(m.stream(x, v).mean(1)[idx]))
    return info_nce(z[0], z[1], temperature)


def pretrain_stream(graphs: list[Data], settings: ModelSettings, pt, progress=None) -> dict:
    """Pretrain a gene stream on unlabelled slice graphs.

    Parameters
    ----------
    graphs : slice graphs with ``x_gene`` (N, d) and the multi-scale edges (labels unused).
    settings : the model's settings (the stream is built exactly as in :class:`SpaGraphNet`).
    pt : the ``pretrain:`` settings (:class:`spagraph.experiment.config.PretrainConfig`).
    progress : optional ``progress(epoch, record)`` callback.

    Returns
    -------
    ``{"state": the stream's state_dict, "history": [{"epoch", "loss", ...}], "seconds"}``;
    deterministic for a given ``pt.seed`` on CPU.
    """
    if not graphs:
        raise ValueError("pretraining needs at least one slice graph")
    d = graphs[0].x_gene.shape[1]
    if d == 0 or any(g.x_gene.shape[1] != d for g in graphs):
        raise ValueError(f"pretraining slices need gene embeddings of one width; got "
                         f"{sorted({g.x_gene.shape[1] for g in graphs})}")
    t0 = time.perf_counter()
    torch.manual_seed(pt.seed)
    m = _Pretrainer(d, settings, int(graphs[0].num_scales), int(graphs[0].n_dir_bins))
    opt = torch.optim.AdamW(m.parameters(), lr=pt.lr, weight_decay=pt.weight_decay)
    rng = np.random.default_rng(pt.seed)
    gen = torch.Generator().manual_seed(pt.seed)
    history = []
    m.train()
    for epoch in range(pt.epochs):
        parts: dict[str, list[float]] = {"loss": []}
        for i in rng.permutation(len(graphs)):
            g = graphs[i]
            terms = {}
            if pt.objective in ("masked", "both"):
                terms["masked"] = _mask_loss(m, g, pt.mask_rate, gen)
            if pt.objective in ("contrastive", "both"):
                terms["contrastive"] = _contrastive_loss(m, g, settings.temperature, gen)
            loss = sum(terms.values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), GRAD_CLIP)
            opt.step()
            parts["loss"].append(float(loss.detach()))
            for k, v in terms.items():
                parts.setdefault(k, []).append(float(v.detach()))
        rec = {"epoch": epoch} | {k: float(np.mean(v)) for k, v in parts.items()}
        history.append(rec)
        if progress is not None:
            progress(epoch, rec)
    return {"state": {k: v.detach().clone() for k, v in m.stream.state_dict().items()}, "history": history,
            "seconds": round(time.perf_counter() - t0, 2)}


def load_pretrained(model, state: dict) -> None:
    """Put a pretrained stream's weights into ``model.gene`` (a :class:`SpaGraphNet`); a clear
    error when the shapes differ (another embedding width, hidden size or scale count)."""
    if model.gene is None:
        raise ValueError("pretrained gene-stream weights given, but the model has no gene stream")
    own = model.gene.state_dict()
    bad = [k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
    if bad or set(state) - set(own):
        raise ValueError(f"pretrained gene-stream weights do not fit the model (mismatched: {bad[:4]}"
                         f"{'; extra: ' + str(sorted(set(state) - set(own))[:4]) if set(state) - set(own) else ''})")
    model.gene.load_state_dict(state)


# ------------------------------------------------------------------ per fold, with the patient rule


_CACHE: dict[str, dict] = {}


# the model settings the gene stream (``_Stream``) is built from: the only ones pretraining reads
# (the prior's C and smoothing, the head, fusion and loss weights do not change the pretrained
# weights, so they stay out of the cache key; tests/test_pretrain.py checks the list against
# what ``_Stream`` actually reads)
STREAM_FIELDS = ("hidden", "hidden_norm", "input_dropout", "dropout", "msfa", "n_modes", "msfa_input", "token_norm")
# stream fields added later: left out of the cache key at their default, so cached weights keep their key
_STREAM_DEFAULTS = {"msfa_input": "hidden", "token_norm": False}


def content_key(sections: dict[str, Data], settings: ModelSettings, pt, graph_settings) -> str:
    """Hash of everything the pretrained weights depend on: the pool sections' names and gene
    embeddings (which carry the fold's gene encoder), their edges, the stream's model settings
    (:data:`STREAM_FIELDS`), the graph and pretrain settings, and :data:`VERSION`."""
    h = hashlib.sha256()
    model = {k: v for k, v in settings.model_dump(mode="json").items()
             if k in STREAM_FIELDS and _STREAM_DEFAULTS.get(k, object()) != v}
    meta = {"v": VERSION, "model": model, "graph": graph_settings.model_dump(mode="json"),
            "pretrain": {k: v for k, v in pt.model_dump(mode="json").items() if k not in ("cache_dir", "enabled")}}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(sections):
        g = sections[name]
        h.update(name.encode())
        h.update(np.ascontiguousarray(g.x_gene.numpy()).tobytes())
        for k in range(int(g.num_scales)):
            h.update(np.ascontiguousarray(g[f"edge_index_{k}"].numpy()).tobytes())
            h.update(np.ascontiguousarray(g[f"edge_dir_{k}"].numpy()).tobytes())
    return h.hexdigest()[:16]


def pool_graphs(cfg, test_slices: list[str], encoder, base_dir: Path | None = None, reader=None) -> dict[str, Data]:
    """Graphs of the pool sections allowed while ``test_slices`` are predicted
    (:func:`spagraph.pretrain.pool.read_allowed`), their gene embeddings from the fold's fitted
    ``encoder`` (transform only: the pool fits no statistic; genes a section lacks read as the
    training mean)."""
    from spagraph.experiment.data import resolve_path
    from spagraph.graph import build_slice_graph
    from spagraph.pretrain.pool import read_allowed
    pt = cfg.pretrain
    root = resolve_path(pt.pool, base_dir)
    adatas = read_allowed(root, test_slices, pt.names, pt.patient_pattern, reader=reader)
    gs = cfg.graph.model_copy(update={"feature_knn": 0})
    # hvg / pca encoders read genes a section lacks as the training mean; others have no such option
    kw = {"fill_missing": True} if "fill_missing" in inspect.signature(encoder.transform).parameters else {}
    out = {}
    for name, a in adatas.items():
        b = a.copy()
        b.obsm["gene_emb"] = np.asarray(encoder.transform(b, **kw), dtype=np.float32)
        out[name] = build_slice_graph(b, gs, label_key="__none__", name=name)
    return out


def pretrain_fold(cfg, test_slices: list[str], encoder, base_dir: Path | None = None) -> dict:
    """Pretrained gene-stream weights for one outer fold: the pool minus the test slices'
    patients, embedded with the fold's gene encoder, pretrained once per content key (memory,
    and ``pretrain.cache_dir`` on disk when set). Returns ``pretrain_stream``'s dict plus
    ``sections``, ``key`` and ``cache`` ("memory" | "disk" | "miss")."""
    from spagraph.utils import atomic_path
    graphs = pool_graphs(cfg, test_slices, encoder, base_dir)
    key = content_key(graphs, cfg.model, cfg.pretrain, cfg.graph)
    info = {"sections": sorted(graphs), "key": key}
    if key in _CACHE:
        return _CACHE[key] | info | {"cache": "memory"}
    path = Path(cfg.pretrain.cache_dir).expanduser() / f"{key}.pt" if cfg.pretrain.cache_dir else None
    if path is not None and path.exists():
        res = torch.load(path, weights_only=False)
        _CACHE[key] = res
        return res | info | {"cache": "disk"}
    log.info("pretraining the gene stream on %d pool sections (%s)", len(graphs), ", ".join(sorted(graphs)))
    res = pretrain_stream([graphs[n] for n in sorted(graphs)], cfg.model, cfg.pretrain)
    _CACHE[key] = res
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(res, tmp)
    return res | info | {"cache": "miss"}
