"""Direction-bin turns are true symmetries of the slice graph, and the augmentation uses them."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from spagraph.graph import GraphSettings, build_slice_graph
from spagraph.graph.orientation import random_turn, turn_bins


def _slice(pos, seed=0):
    rng = np.random.default_rng(seed)
    n = len(pos)
    a = ad.AnnData(np.zeros((n, 1), np.float32))
    a.obsm["spatial"] = pos
    a.obsm["gene_emb"] = rng.normal(size=(n, 3)).astype(np.float32)
    a.obs["cancer"] = pd.array(rng.integers(0, 2, n), dtype="Int8")
    return a


def _jittered_hex(n=150, seed=0):
    # jitter keeps edge angles off the sector boundaries, where rounding could pick either bin
    rng = np.random.default_rng(seed)
    r, c = np.divmod(np.arange(n), 15)
    pos = np.c_[c + 0.5 * (r % 2), r * np.sqrt(3) / 2] * 100.0
    return pos + rng.normal(0, 4.0, pos.shape)


def _graph(pos, bins):
    return build_slice_graph(_slice(pos), GraphSettings(scales=[1.0, 2.0, 3.0], n_dir_bins=bins), name="s")


@pytest.mark.parametrize("bins", [4, 6, 8])
@pytest.mark.parametrize("steps", [1, 3])
def test_rotating_coordinates_by_one_sector_shifts_every_bin(bins, steps):
    pos = _jittered_hex()
    t = 2 * np.pi * steps / bins
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    g, gr = _graph(pos, bins), _graph(pos @ rot.T + 1000.0, bins)
    shifted = turn_bins(g, steps)
    for k in range(g.num_scales):
        assert torch.equal(g[f"edge_index_{k}"], gr[f"edge_index_{k}"])   # same edges, same order
        assert torch.equal(shifted[f"edge_dir_{k}"], gr[f"edge_dir_{k}"])
        assert not torch.equal(g[f"edge_dir_{k}"], gr[f"edge_dir_{k}"])   # the bins did move


@pytest.mark.parametrize("bins", [4, 8])
def test_mirroring_coordinates_reflects_bins_and_turns_compose(bins):
    pos = _jittered_hex(seed=1)
    mirrored = pos * np.array([1.0, -1.0])
    g, gm = _graph(pos, bins), _graph(mirrored, bins)
    for k in range(g.num_scales):
        assert torch.equal(g[f"edge_index_{k}"], gm[f"edge_index_{k}"])
        assert torch.equal(turn_bins(g, 0, reflect=True)[f"edge_dir_{k}"], gm[f"edge_dir_{k}"])
    # mirror, then rotate by two sectors == turn_bins(shift=2, reflect=True)
    t = 2 * np.pi * 2 / bins
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    gmr = _graph(mirrored @ rot.T, bins)
    assert torch.equal(turn_bins(g, 2, reflect=True).edge_dir_1, gmr.edge_dir_1)
    # the original graph is left as it was
    assert torch.equal(g.edge_dir_0, _graph(pos, bins).edge_dir_0)


def test_random_turn_draws_every_shift_and_both_reflections():
    g = _graph(_jittered_hex(), 8)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        t = random_turn(g, rng)
        d0, d1 = g.edge_dir_0.long(), t.edge_dir_0.long()
        found = [(s, r) for s in range(8) for r in (False, True) if torch.equal(turn_bins(g, s, r).edge_dir_0, d1)]
        assert found, "a random turn must be one of the 16 symmetries"
        seen.add(found[0])
        assert torch.equal(t.edge_index_0, g.edge_index_0) and torch.equal(t.x_gene, g.x_gene)
        assert d0.shape == d1.shape
    assert len(seen) == 16


def test_orient_augment_trains_deterministically_and_changes_training():
    from spagraph.nn import ModelSettings
    from spagraph.train.fit import TrainSettings, fit, predict_scores
    gs = [_graph(_jittered_hex(seed=s), 8) for s in range(3)]
    ms = ModelSettings(hidden=8, heads=2, contrastive_weight=0.0)
    base = dict(epochs=3, min_epochs=1, patience=5, lr=1e-2)
    a = fit(gs[:2], [gs[2]], ms, TrainSettings(orient_augment=True, **base), seed=0)
    b = fit(gs[:2], [gs[2]], ms, TrainSettings(orient_augment=True, **base), seed=0)
    c = fit(gs[:2], [gs[2]], ms, TrainSettings(orient_augment=False, **base), seed=0)
    pa, pb, pc = (predict_scores(r.model, gs[2]) for r in (a, b, c))
    assert np.array_equal(pa, pb)
    assert not np.allclose(pa, pc)
