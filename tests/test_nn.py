import numpy as np
import pandas as pd
import pytest
import torch
import anndata as ad

from spagraph.graph import build_slice_graph, GraphSettings
from spagraph.nn import MSFAConv, SpaGraphNet, ModelSettings
from spagraph.train.tiles import iter_tiles
from spagraph.train.fit import predict_scores, TrainSettings


def small_graph(n=12, seed=0, d_gene=6, d_img=4):
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(n), np.arange(n))
    pos = np.c_[xx.ravel(), yy.ravel()].astype(float) * 50 + rng.normal(0, 3, (n * n, 2))
    a = ad.AnnData(np.zeros((n * n, 2), np.float32))
    a.obsm["spatial"] = pos
    a.obsm["gene_emb"] = rng.normal(size=(n * n, d_gene)).astype(np.float32)
    if d_img:
        a.obsm["img_emb"] = rng.normal(size=(n * n, d_img)).astype(np.float32)
    a.obs["cancer"] = pd.array(rng.integers(0, 2, n * n), dtype="Int8")
    return build_slice_graph(a, GraphSettings(scales=[1.0, 2.0], n_dir_bins=8))


def test_msfa_bin_means_match_slow_reference():
    g = small_graph()
    torch.manual_seed(0)
    x = torch.randn(g.num_nodes, 3)
    conv = MSFAConv(3, 5, n_bins=8)
    means, count = conv.bin_means(x, g.edge_index_1, g.edge_dir_1)
    src, dst = g.edge_index_1.tolist()
    dirs = g.edge_dir_1.tolist()
    ref = np.zeros((g.num_nodes, 8, 3)); cnt = np.zeros((g.num_nodes, 8))
    for s, d, b in zip(src, dst, dirs):
        ref[d, b] += x[s].numpy(); cnt[d, b] += 1
    ref = np.where(cnt[..., None] > 0, ref / np.maximum(cnt, 1)[..., None], 0)
    assert np.allclose(means.detach().numpy(), ref, atol=1e-5)
    assert np.array_equal(count.numpy(), cnt)
    # full layer output equals the formula on the reference means
    out = conv(x, g.edge_index_1, g.edge_dir_1)
    modes = np.einsum("nbf,bk->nkf", ref, conv.mix.detach().numpy()).reshape(g.num_nodes, -1)
    feat = np.concatenate([modes, np.log1p(cnt)], 1)
    expected = feat @ conv.lin.weight.detach().numpy().T + conv.lin.bias.detach().numpy()
    assert np.allclose(out.detach().numpy(), expected, atol=1e-4)


def test_msfa_reset_parameters_starts_isotropic():
    conv = MSFAConv(4, 4, n_bins=8, n_modes=2)
    assert torch.allclose(conv.mix[:, 0], torch.full((8,), 1 / 8))


def test_masked_image_modality_changes_nothing_on_image_values():
    g = small_graph()
    model = SpaGraphNet(g.x_img.shape[1], g.x_gene.shape[1], g.num_scales, g.n_dir_bins, ModelSettings()).eval()
    g.has_img[:] = False
    a = model(g)["logit"]
    g.x_img = torch.randn_like(g.x_img) * 100  # image values of masked spots must not matter
    b = model(g)["logit"]
    assert torch.allclose(a, b, atol=1e-5)
    g.has_img[:] = True
    c = model(g)["logit"]
    assert not torch.allclose(a, c)


def test_gene_only_model_runs():
    g = small_graph(d_img=0)
    model = SpaGraphNet(0, g.x_gene.shape[1], g.num_scales, g.n_dir_bins).eval()
    out = model(g)
    assert out["logit"].shape == (g.num_nodes,) and torch.isfinite(out["logit"]).all()


def test_tiled_inference_equals_full_graph():
    g = small_graph(n=20)
    model = SpaGraphNet(g.x_img.shape[1], g.x_gene.shape[1], g.num_scales, g.n_dir_bins).eval()
    full = predict_scores(model, g, TrainSettings(batch_mode="full"))
    tiled = predict_scores(model, g, TrainSettings(batch_mode="tiles", tile_size=4.0))
    assert np.allclose(full, tiled, atol=1e-5)
    covered = np.concatenate([i.numpy() for _, i in iter_tiles(g, 4.0)])
    assert sorted(covered.tolist()) == list(range(g.num_nodes))


@pytest.mark.parametrize("linear_path", [False, True])
def test_reset_parameters_redraws_every_weight(linear_path):
    g = small_graph()
    s = ModelSettings(hidden=8, heads=2, linear_path=linear_path)
    model = SpaGraphNet(g.x_img.shape[1], g.x_gene.shape[1], g.num_scales, g.n_dir_bins, s)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(123.0)
    model.reset_parameters()
    for name, p in model.named_parameters():
        p, f = p.detach(), fresh[name]
        # nothing left at the poisoned value (nn.MultiheadAttention's in_proj_weight used to be)
        assert (p.abs() < 50).all(), name
        if f.numel() < 2:
            continue
        if f.std() > 0:   # randomly initialised weights are random again, on the same scale
            assert 0.2 < float(p.std() / f.std()) < 5, name
        else:             # constant initialisations (zeros, ones) come back exactly
            assert torch.equal(p, f), name
    if linear_path:
        assert torch.count_nonzero(model.head[-1].weight) == 0   # the deep part silent again
    model.eval()
    assert torch.isfinite(model(g)["logit"]).all()


def test_scale_token_options():
    # msfa_input "input": a scale token is GELU(MSFA of the input embeddings), layer-normalised with token_norm;
    # hidden_norm "none": no normalisation after the input projection
    g = small_graph()
    torch.manual_seed(0)
    s = ModelSettings(hidden=8, heads=2, msfa_input="input", token_norm=True, hidden_norm="none", dropout=0.0)
    model = SpaGraphNet(g.x_img.shape[1], g.x_gene.shape[1], g.num_scales, g.n_dir_bins, s).eval()
    stream = model.gene
    assert [c.in_channels for c in stream.convs] == [g.x_gene.shape[1]] * g.num_scales
    with torch.no_grad():
        model.reset_parameters()
        stream.scale_emb.normal_()
        for norm in stream.token_norms:                     # non-trivial affine maps
            norm.weight.normal_(); norm.bias.normal_()
        toks = stream(g.x_gene, g)
        for k, conv in enumerate(stream.convs):
            ref = stream.token_norms[k](torch.nn.functional.gelu(conv(g.x_gene, g[f"edge_index_{k}"], g[f"edge_dir_{k}"])))
            assert torch.allclose(toks[:, 1 + k], ref + stream.scale_emb[1 + k], atol=1e-5)
        lin = stream.proj[1](g.x_gene)                       # self token: Linear + GELU, no norm
        assert torch.allclose(toks[:, 0], torch.nn.functional.gelu(lin) + stream.scale_emb[0], atol=1e-5)
        assert torch.isfinite(model(g)["logit"]).all()
    # off by default: the default model has no token norms and aggregates the hidden spots
    d = SpaGraphNet(g.x_img.shape[1], g.x_gene.shape[1], g.num_scales, g.n_dir_bins, ModelSettings(hidden=8, heads=2))
    assert d.gene.token_norms is None and d.gene.convs[0].in_channels == 8


def test_scale_token_options_keep_default_config_hashes(tmp_path):
    from spagraph.experiment.config import load_config
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "experiments" / "her2st_loso.yaml"
    base = load_config(path).config_hash()
    assert load_config(path, ["model.msfa_input=hidden", "model.token_norm=false"]).config_hash() == base
    assert load_config(path, ["model.token_norm=true"]).config_hash() != base
    assert load_config(path, ["model.msfa_input=input"]).config_hash() != base
