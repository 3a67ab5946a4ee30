"""Bidirectional cross-attention fusion of image and gene token sequences."""
from __future__ import annotations

import torch
from torch import Tensor, nn


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
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

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
