"""SpaGraphNet: MSFA token streams per modality, cross-modal fusion, classification head."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from spagraph.experiment.config import ModelConfig
from spagraph.nn.disc_mean import with_disc_means
from spagraph.nn.feature_smoothing import FeatureGraphSmoothing, feature_edges
from spagraph.nn.fusion import CrossModalFusion, reset_all
from spagraph.nn.msfa import MSFAConv


# The validated ``model:`` section of an experiment is the model's settings (one set of defaults).
ModelSettings = ModelConfig


class _Stream(nn.Module):
    """One modality: input projection + one MSFA token per scale -> (N, 1 + S, H).

    x (N, d_in) -> (N, 1 + S, H): token 0 the projected spot itself, token k the MSFA aggregate at
    scale k (of the projected spots, or of the inputs with ``msfa_input: input``)."""

    def __init__(self, d_in: int, s: ModelSettings, n_scales: int, n_bins: int):
        super().__init__()
        # hidden_norm "slice": statistics of the slice being processed, in training and scoring alike
        # (AdaBN-style label-free adaptation, spagraph/train/adapt.py)
        # hidden_norm "none": no normalisation (with only a few input columns, a LayerNorm of their
        # projection keeps mostly their direction, little of their magnitude)
        norm = {"slice": lambda: nn.BatchNorm1d(s.hidden, track_running_stats=False), "none": nn.Identity,
                "layer": lambda: nn.LayerNorm(s.hidden)}[s.hidden_norm]()
        self.proj = nn.Sequential(nn.Dropout(s.input_dropout), nn.Linear(d_in, s.hidden), norm,
                                  nn.GELU(), nn.Dropout(s.dropout))
        # msfa_input "input": each scale aggregates the input embeddings, not the activated hidden spots
        # (whose neighbourhood means are means of a nonlinear function of the inputs: a product of two
        # ring means is learnt several times slower through them, benchmarks/README.md)
        self.from_input = s.msfa_input == "input"
        d_msfa = d_in if self.from_input else s.hidden
        self.convs = nn.ModuleList([MSFAConv(d_msfa, s.hidden, n_bins, s.n_modes) for _ in range(n_scales)]
                                   if s.msfa else [])
        self.token_norms = (nn.ModuleList([nn.LayerNorm(s.hidden) for _ in self.convs]) if s.token_norm
                            else None)
        self.scale_emb = nn.Parameter(torch.zeros(1 + len(self.convs), s.hidden))
        self.act = nn.GELU()

    def reset_parameters(self) -> None:
        reset_all(self)
        nn.init.zeros_(self.scale_emb)

    def forward(self, x: Tensor, data: Data) -> Tensor:
        x = self.proj[0](x)                        # input dropout, shared by the self and the scale tokens
        h = self.proj[1:](x)
        src = x if self.from_input else h
        toks = [self.act(conv(src, data[f"edge_index_{k}"], data[f"edge_dir_{k}"])) for k, conv in enumerate(self.convs)]
        if self.token_norms is not None:
            toks = [norm(t) for norm, t in zip(self.token_norms, toks)]
        return torch.stack([h] + toks, dim=1) + self.scale_emb


class _LinearPath(nn.Module):
    """Linear logit on a modality's input and its disc means at every scale (a "wide" term
    beside the deep MSFA + fusion network; it alone is a spatially smoothed linear model).

    x (N, F) -> (N,).
    """

    def __init__(self, d_in: int, n_scales: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.lin = nn.Linear(d_in * (1 + n_scales), 1)
        self.n_scales = n_scales

    def reset_parameters(self) -> None:
        """Back to an unfitted, trainable linear map (a fitted prior is frozen; this thaws it)."""
        self.lin.reset_parameters()
        self.lin.weight.requires_grad_(True); self.lin.bias.requires_grad_(True)

    def features(self, x: Tensor, data: Data) -> Tensor:
        """(N, F * (1 + S)): the input and its disc means at every scale."""
        return with_disc_means(x, data, self.n_scales)

    def forward(self, x: Tensor, data: Data) -> Tensor:
        f = self.features(x, data)
        return self.lin(self.drop(f) if self.lin.weight.requires_grad else f).squeeze(1)


class SpaGraphNet(nn.Module):
    """Spot classifier on a slice graph.

    Parameters
    ----------
    d_img, d_gene : embedding sizes (0 = modality absent from the whole experiment).
    n_scales, n_bins : as in the graph (``data.num_scales``, ``data.n_dir_bins``).

    ``forward(data)`` returns a dict with ``logit`` (N,), ``z_img`` / ``z_gene`` (N, H) pooled
    per-modality vectors before cross-attention (for the contrastive term), ``h`` (N, 2H) the
    fused vector the head reads (for feature alignment), and ``m_img`` / ``m_gene`` (N,) the
    modality masks actually used.

    ``smooth_logits(logit, data)`` is the scoring step after ``forward`` on a whole slice: with
    ``settings.feature_smoothing`` > 0 the logits are smoothed over the slice's
    expression-neighbour graph (:class:`FeatureGraphSmoothing` on ``data.edge_index_feat``).
    It is not part of ``forward``, because those edges span the whole slice, not a spatial tile;
    training losses see the unsmoothed logits.
    """

    def __init__(self, d_img: int, d_gene: int, n_scales: int, n_bins: int, settings: ModelSettings | None = None):
        super().__init__()
        s = self.settings = settings or ModelSettings()
        if d_img <= 0 and d_gene <= 0:
            raise ValueError("the model needs at least one modality (image or gene embeddings)")
        self.d_img, self.d_gene = d_img, d_gene
        self.img = _Stream(d_img, s, n_scales, n_bins) if d_img > 0 else None
        self.gene = _Stream(d_gene, s, n_scales, n_bins) if d_gene > 0 else None
        self.fusion = CrossModalFusion(s.hidden, s.heads, s.layers, s.dropout, cross=s.cross_attention)
        self.head = nn.Sequential(nn.Linear(2 * s.hidden + 2, s.hidden), nn.GELU(), nn.Dropout(s.dropout),
                                  nn.Linear(s.hidden, 1))
        self.wide_img = _LinearPath(d_img, n_scales, s.input_dropout) if s.linear_path and d_img > 0 else None
        self.wide_gene = _LinearPath(d_gene, n_scales, s.input_dropout) if s.linear_path and d_gene > 0 else None
        self.smooth = FeatureGraphSmoothing(s.feature_smoothing)
        self._silence_deep_part()

    def _silence_deep_part(self) -> None:
        if self.settings.linear_path:
            # the deep part starts silent: training starts from the smoothed linear model
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def reset_parameters(self) -> None:
        """Re-initialise every learned weight as at construction (streams, MSFA layers, fusion
        with its attentions, head, linear paths; the deep part silent again with a linear path)."""
        for m in (self.img, self.gene, self.wide_img, self.wide_gene):
            if m is not None:
                m.reset_parameters()
        self.fusion.reset_parameters()
        reset_all(self.head)
        self._silence_deep_part()

    def forward(self, data: Data, modality_dropout: float = 0.0) -> dict[str, Tensor]:
        n = data.num_nodes
        dev = self.head[0].weight.device
        m_img = (data.has_img.float() if self.img is not None else torch.zeros(n)).to(dev)
        m_gene = (data.has_gene.float() if self.gene is not None else torch.zeros(n)).to(dev)
        if self.training and modality_dropout > 0:
            both = (m_img * m_gene) > 0
            drop = (torch.rand(n, device=dev) < modality_dropout) & both
            which = torch.rand(n, device=dev) < 0.5
            m_img = torch.where(drop & which, torch.zeros_like(m_img), m_img)
            m_gene = torch.where(drop & ~which, torch.zeros_like(m_gene), m_gene)
        H = self.settings.hidden
        t = 1 + (len(self.img.convs) if self.img is not None else len(self.gene.convs))
        # A tile piece of spagraph.train.tiles.iter_tiles (``interior_first``) lists its interior
        # spots first: only those rows are scored (the halo only feeds their MSFA messages), so
        # fusion and head run on them alone and the halo rows of every output are 0. Other graphs
        # (whole slices, merged mini-batches of tiles) are computed in full, as before.
        r = int(data.interior.sum()) if getattr(data, "interior_first", False) else n
        img_tok = self.img(data.x_img, data)[:r] * m_img[:r, None, None] if self.img is not None else None
        gene_tok = self.gene(data.x_gene, data)[:r] * m_gene[:r, None, None] if self.gene is not None else None
        if (r < n or not self.training) and (img_tok is None or gene_tok is None):
            fused, z_img, z_gene = self._fuse_one_modality(img_tok, gene_tok, m_img[:r], m_gene[:r], t)
        else:
            zeros = torch.zeros(r, t, H, device=dev)
            fused, z_img, z_gene = self.fusion(zeros if img_tok is None else img_tok,
                                               zeros if gene_tok is None else gene_tok, m_img[:r], m_gene[:r])
        logit = self.head(torch.cat([fused, m_img[:r, None], m_gene[:r, None]], dim=1)).squeeze(1)
        if self.wide_img is not None:
            logit = logit + m_img[:r] * self.wide_img(data.x_img, data)[:r]
        if self.wide_gene is not None:
            logit = logit + m_gene[:r] * self.wide_gene(data.x_gene, data)[:r]
        if r < n:
            logit, z_img, z_gene, fused = (torch.cat([v, v.new_zeros((n - r,) + v.shape[1:])])
                                           for v in (logit, z_img, z_gene, fused))
        return {"logit": logit, "z_img": z_img, "z_gene": z_gene, "h": fused, "m_img": m_img, "m_gene": m_gene}

    def _fuse_one_modality(self, img_tok: Tensor | None, gene_tok: Tensor | None, m_img: Tensor, m_gene: Tensor,
                           t: int) -> tuple[Tensor, Tensor, Tensor]:
        """``self.fusion`` for a model with one modality only, without the other stream's
        transformer and the cross-attentions, which there act on all-zero tokens and are gated off
        by that modality's zero mask: the fused vector is the same (the absent half is 0, the
        present half is ``norm(tokens + 0 * attention)`` = ``norm(tokens)``); the absent
        modality's pooled vector (read only by the contrastive term, which needs both) is its
        encoder's output for zero tokens, computed once. About half the cost of the fusion.

        Used when scoring and for tile pieces. Full-graph training keeps the full computation:
        the absent stream's dropout draws are part of the random stream that existing gene-only
        runs were trained with, and their weights stay reproducible."""
        f = self.fusion
        present, m = (gene_tok, m_gene) if img_tok is None else (img_tok, m_img)
        enc, norm, other = (f.enc_gene, f.norm_gene, f.enc_img) if img_tok is None else (f.enc_img, f.norm_img, f.enc_gene)
        h = enc(present)
        pooled = h.mean(1)
        if f.cross:
            h = norm(h)
        absent = other(present.new_zeros(1, t, present.shape[2])).mean(1).expand(len(present), -1)
        half = h.mean(1) * m[:, None]
        zero = torch.zeros_like(half)
        if img_tok is None:
            return torch.cat([zero, half], dim=1), absent, pooled
        return torch.cat([half, zero], dim=1), pooled, absent

    def smooth_logits(self, logit: Tensor, data: Data) -> Tensor:
        """Whole-slice logits (N,) -> smoothed over ``data.edge_index_feat`` (unchanged when off)."""
        if self.smooth.alpha == 0.0:
            return logit
        return self.smooth(logit, feature_edges(data, self.smooth.alpha).to(logit.device))
