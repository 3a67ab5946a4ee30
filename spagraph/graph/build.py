"""AnnData slice (with embeddings) -> ``torch_geometric.data.Data``."""
from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Data

from spagraph.experiment.config import GraphConfig
from spagraph.graph.neighbours import feature_knn_edges, multiscale_edges, spot_pitch


# How a slice becomes a graph: the validated ``graph:`` section of an experiment (one set of
# defaults). scales: neighbourhood radii in spot pitches (median nearest-neighbour distance);
# n_dir_bins: direction sectors B of the neighbour offset angle; shells: rings instead of discs;
# feature_knn > 0: also link every spot to its nearest neighbours in embedding space within the
# slice (``edge_index_feat``, no labels involved); feature_knn_on: "gene" or "img" defines them.
GraphSettings = GraphConfig


def build_slice_graph(adata, settings: GraphSettings | None = None, img_key: str = "img_emb",
                      gene_key: str = "gene_emb", label_key: str = "cancer",
                      name: str | None = None) -> Data:
    """Build the multi-scale spatial graph of one slice.

    Parameters
    ----------
    adata : AnnData with ``obsm["spatial"]`` (n, 2), ``obsm[gene_key]`` and optionally
        ``obsm[img_key]``; labels in ``obs[label_key]`` (1/0/NA) when present.

    Returns
    -------
    Data with
        ``x_gene`` (n, d_gene) float32 (zeros (n, 0) when absent), ``x_img`` (n, d_img) float32
        (zeros (n, 0) when the slice has no image), ``has_img`` / ``has_gene`` (n,) bool,
        ``pos`` (n, 2) in pitch units, ``y`` (n,) float32 with NaN for undetermined,
        ``label_mask`` (n,) bool, and per scale k: ``edge_index_k`` (2, e_k), ``edge_dir_k`` (e_k,);
        with ``settings.feature_knn`` > 0 ``edge_index_feat`` (2, n * k) from
        each spot's nearest neighbours in embedding space; ``num_scales``, ``n_dir_bins``,
        ``pitch`` (original units), ``spot_ids``.
    """
    settings = settings or GraphSettings()
    n = adata.n_obs
    if "spatial" not in adata.obsm:
        raise ValueError(f"slice {name or ''}: obsm['spatial'] (spot centres) is missing")
    pos = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    try:
        pitch = spot_pitch(pos)
    except ValueError as e:
        raise ValueError(f"slice {name or '(unnamed)'}: obsm['spatial']: {e}") from None
    edges = multiscale_edges(pos, settings.scales, settings.n_dir_bins, pitch=pitch, shells=settings.shells)

    def _feat(key):
        if key in adata.obsm:
            x = np.asarray(adata.obsm[key], dtype=np.float32)
            if not np.isfinite(x).all():
                raise ValueError(f"slice {name or ''}: obsm['{key}'] holds NaN/Inf values")
            return torch.from_numpy(x), torch.ones(n, dtype=torch.bool)
        return torch.zeros(n, 0), torch.zeros(n, dtype=torch.bool)

    x_img, has_img = _feat(img_key)
    x_gene, has_gene = _feat(gene_key)
    if label_key in adata.obs:
        lab = adata.obs[label_key]
        y = np.asarray(lab.astype("Float32").to_numpy(dtype=np.float32, na_value=np.nan))
    else:
        y = np.full(n, np.nan, dtype=np.float32)
    data = Data(x_img=x_img, x_gene=x_gene, has_img=has_img, has_gene=has_gene,
                pos=torch.from_numpy((pos - pos.min(0)) / pitch).float(),
                y=torch.from_numpy(y), label_mask=torch.from_numpy(~np.isnan(y)),
                num_nodes=n)
    for k, e in enumerate(edges):
        data[f"edge_index_{k}"] = torch.from_numpy(e["edge_index"])
        data[f"edge_dir_{k}"] = torch.from_numpy(e["dir"])
    if settings.feature_knn > 0:
        if settings.feature_knn_on not in ("gene", "img"):
            raise ValueError(f"feature_knn_on must be 'gene' or 'img', got {settings.feature_knn_on!r}")
        order = [x_gene, x_img] if settings.feature_knn_on == "gene" else [x_img, x_gene]
        feats = next((x for x in order if x.shape[1] > 0), None)
        if feats is None:
            raise ValueError(f"slice {name or ''}: feature_knn needs an embedding (obsm['{gene_key}'] or obsm['{img_key}'])")
        data.edge_index_feat = torch.from_numpy(feature_knn_edges(feats.numpy(), settings.feature_knn))
    data.num_scales = len(edges)
    data.n_dir_bins = settings.n_dir_bins
    data.pitch = pitch
    data.spot_ids = list(map(str, adata.obs_names))
    data.name = name
    return data
