"""Paths that make million-spot slices affordable give the same scores as the plain ones:
one-modality fusion when scoring, interior-only scoring of tile pieces, and the approximate
feature kNN's recall at the probe count used above the exact-search threshold."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from spagraph.graph import GraphSettings, build_slice_graph
from spagraph.graph.neighbours import feature_knn_edges
from spagraph.nn import ModelSettings, SpaGraphNet
from spagraph.train.fit import TrainSettings, predict_scores
from spagraph.train.tiles import iter_tiles


def graph(n=16, d_gene=6, d_img=0, seed=0, knn=0):
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(n), np.arange(n))
    a = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(n * n)]))
    a.obsm["spatial"] = np.c_[xx.ravel(), yy.ravel()].astype(float) * 50 + rng.normal(0, 3, (n * n, 2))
    if d_gene:
        a.obsm["gene_emb"] = rng.normal(size=(n * n, d_gene)).astype(np.float32)
    if d_img:
        a.obsm["img_emb"] = rng.normal(size=(n * n, d_img)).astype(np.float32)
    a.obs["cancer"] = pd.array(rng.integers(0, 2, n * n), dtype="Int8")
    return build_slice_graph(a, GraphSettings(scales=[1.0, 2.0], n_dir_bins=8, feature_knn=knn,
                                              feature_knn_on="gene" if d_gene else "img"))


def both_streams_logit(model, g):
    """The fusion over both token streams, the absent one all zeros (what the model computed
    before it skipped the absent stream when scoring)."""
    n, H = g.num_nodes, model.settings.hidden
    t = 1 + len((model.gene or model.img).convs)
    zeros = torch.zeros(n, t, H)
    m_img = g.has_img.float() if model.img is not None else torch.zeros(n)
    m_gene = g.has_gene.float() if model.gene is not None else torch.zeros(n)
    img = model.img(g.x_img, g) * m_img[:, None, None] if model.img is not None else zeros
    gene = model.gene(g.x_gene, g) * m_gene[:, None, None] if model.gene is not None else zeros
    fused, _, _ = model.fusion(img, gene, m_img, m_gene)
    return model.head(torch.cat([fused, m_img[:, None], m_gene[:, None]], 1)).squeeze(1)


@pytest.mark.parametrize("d_gene,d_img", [(6, 0), (0, 5)])
@torch.no_grad()
def test_one_modality_scoring_equals_both_stream_fusion(d_gene, d_img):
    g = graph(d_gene=d_gene, d_img=d_img)
    torch.manual_seed(0)
    model = SpaGraphNet(d_img, d_gene, g.num_scales, g.n_dir_bins, ModelSettings(hidden=16, heads=2)).eval()
    for p in model.parameters():      # no zero biases / silent parts: every term counts
        p.add_(torch.randn_like(p) * 0.2)
    got = model(g)["logit"]
    assert torch.allclose(got, both_streams_logit(model, g), atol=1e-6, rtol=0)
    model.train()                     # full-graph training still runs both streams (same random draws)
    torch.manual_seed(1); a = model(g)["logit"]
    torch.manual_seed(1); b = model(g)["logit"]
    assert torch.equal(a, b)


@pytest.mark.parametrize("d_img", [0, 4])
@torch.no_grad()
def test_tile_pieces_score_interior_only_and_match_full_graph(d_img):
    g = graph(n=24, d_img=d_img, knn=5)
    model = SpaGraphNet(d_img, 6, g.num_scales, g.n_dir_bins, ModelSettings(hidden=16, heads=2,
                                                                             feature_smoothing=0.5)).eval()
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.2)
    full = predict_scores(model, g, TrainSettings(batch_mode="full"))
    tiled = predict_scores(model, g, TrainSettings(batch_mode="tiles", tile_size=5.0))
    assert np.allclose(full, tiled, atol=1e-5)
    sub, interior = next(iter_tiles(g, 5.0))
    out = model(sub)
    r = len(interior)
    assert r < sub.num_nodes and (out["logit"][r:] == 0).all() and (out["z_gene"][r:] == 0).all()
    assert out["logit"].shape == (sub.num_nodes,)


def test_tile_training_step_reaches_the_halo_through_messages_only():
    g = graph(n=20)
    model = SpaGraphNet(0, 6, g.num_scales, g.n_dir_bins, ModelSettings(hidden=16, heads=2)).train()
    sub, interior = next(iter_tiles(g, 5.0))
    x = sub.x_gene.clone().requires_grad_(True)
    sub.x_gene = x
    out = model(sub)
    r = len(interior)
    out["logit"].sum().backward()
    assert x.grad[:r].abs().sum() > 0 and x.grad[r:].abs().sum() > 0   # halo spots feed interior messages


@torch.no_grad()
def test_merged_tile_batches_are_computed_in_full():
    """Mini-batches of merged tiles (train.tiles_per_step) interleave interiors and halos: the
    model must not take a prefix as the interior there; they run as before (every row scored)."""
    from spagraph.train.minibatch import merge_tiles
    g = graph(n=20)
    model = SpaGraphNet(0, 6, g.num_scales, g.n_dir_bins, ModelSettings(hidden=16, heads=2)).eval()
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.2)
    tiles = [sub for sub, _ in iter_tiles(g, 5.0)][:2]
    merged = merge_tiles(tiles)
    assert not merged.interior[: int(merged.interior.sum())].all()     # interiors not a prefix
    got = model(merged)["logit"]
    assert (got != 0).all()
    alone = torch.cat([model(t)["logit"][: int(t.interior.sum())] for t in tiles])
    assert torch.allclose(got[merged.interior], alone, atol=1e-5)
