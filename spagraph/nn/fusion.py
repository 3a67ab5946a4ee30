"""Bidirectional cross-attention fusion of image and gene token sequences."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def reset_all(module: nn.Module) -> None:
    """Call ``reset_parameters`` of every sub-module of ``module`` that has one (not ``module``
    itself), then ``_reset_parameters`` of every ``nn.MultiheadAttention`` (its in-projections
    and zero biases), in the order construction initialises them."""
    attn = []
    for m in module.modules():
        if m is module:
            continue
        if isinstance(m, nn.MultiheadAttention):
            attn.append(m)
        elif hasattr(m, "reset_parameters"):
            m.reset_parameters()
    for m in attn:
        m._reset_parameters()


class CrossModalFusion(nn.Module):
    """Per-modality transformer over [self, scale 1..S] tokens, then image<->gene cross-attention.

    Image tokens attend to the gene tokens of the same spot and gene tokens to the image
    tokens (multi-token sequences, not a single token). A spot missing a modality has that
    modality's mask 0: nothing attends to its tokens (the cross-attention residual is
    gated off) and its pooled vector is zeroed.

    Shapes
    ------
    img, gene (N, T, H); m_img, m_gene (N,) float 0/1 ->
    fused (N, 2H), pooled image (N, H) and pooled gene (N, H) before cross-attention.
    """

    def __init__(self, hidden: int, heads: int = 4, layers: int = 1, dropout: float = 0.1, cross: bool = True):
        super().__init__()
        def enc():
            layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=2 * hidden, dropout=dropout,
                                               batch_first=True, norm_first=True)
            return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.enc_img, self.enc_gene = enc(), enc()
        self.cross = cross
        self.img_from_gene = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.gene_from_img = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm_img, self.norm_gene = nn.LayerNorm(hidden), nn.LayerNorm(hidden)

    def reset_parameters(self) -> None:
        """Re-draw every weight as at construction: the transformer layers' linear maps and norms,
        and both attentions' input projections (``nn.MultiheadAttention`` names that
        ``_reset_parameters``; it runs after its ``out_proj`` so the output bias is zero again)."""
        reset_all(self)

    def forward(self, img: Tensor, gene: Tensor, m_img: Tensor, m_gene: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        img, gene = self.enc_img(img), self.enc_gene(gene)
        p_img, p_gene = img.mean(1), gene.mean(1)
        if self.cross:
            a_img, _ = self.img_from_gene(img, gene, gene, need_weights=False)
            a_gene, _ = self.gene_from_img(gene, img, img, need_weights=False)
            img = self.norm_img(img + m_gene[:, None, None] * a_img)
            gene = self.norm_gene(gene + m_img[:, None, None] * a_gene)
        fused = torch.cat([img.mean(1) * m_img[:, None], gene.mean(1) * m_gene[:, None]], dim=1)
        return fused, p_img, p_gene
