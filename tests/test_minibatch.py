"""Tile mini-batches over all training slices (spagraph/train/minibatch.py)."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from spagraph.graph import GraphSettings, build_slice_graph
from spagraph.nn import ModelSettings, SpaGraphNet
from spagraph.train.minibatch import epoch_coverage, merge_tiles, slice_tiles, tile_batches


def _graph(n=180, seed=0, name="s"):
    rng = np.random.default_rng(seed)
    r, c = np.divmod(np.arange(n), 15)
    pos = np.c_[c + 0.5 * (r % 2), r * np.sqrt(3) / 2] * 100.0
    a = ad.AnnData(np.zeros((n, 1), np.float32))
    a.obsm["spatial"] = pos
    a.obsm["gene_emb"] = rng.normal(size=(n, 4)).astype(np.float32)
    a.obs["cancer"] = pd.array((a.obsm["gene_emb"][:, 0] + rng.normal(0, 1, n) > 0).astype(int), dtype="Int8")
    return build_slice_graph(a, GraphSettings(scales=[1.0, 2.0], n_dir_bins=4), name=name)


@pytest.mark.parametrize("per_step", [1, 3, 100])
def test_one_epoch_puts_every_training_spot_in_the_loss_exactly_once(per_step):
    gs = [_graph(seed=s, n=120 + 30 * s) for s in range(3)]
    counts = epoch_coverage(gs, tile_size=4.0, tiles_per_step=per_step, rng=np.random.default_rng(0))
    for g, c in zip(gs, counts):
        assert len(c) == g.num_nodes and (c == 1).all()
    tiles = slice_tiles(gs, 4.0)
    assert len(tiles) > 6   # several tiles per slice, so several steps per epoch
    groups = list(tile_batches(tiles, 2, np.random.default_rng(0)))
    assert len(groups) == -(-len(tiles) // 2)
    assert any(len({int(t.slice_id) for t in grp}) > 1 for grp in groups)   # steps mix slices


def test_merged_tiles_give_each_interior_spot_its_whole_slice_logit():
    torch.manual_seed(0)
    gs = [_graph(seed=s) for s in range(2)]
    model = SpaGraphNet(0, 4, 2, 4, ModelSettings(hidden=8, heads=2, contrastive_weight=0.0, linear_path=True)).eval()
    torch.nn.init.normal_(model.head[-1].weight)   # the deep part speaks
    with torch.no_grad():
        full = [model(g)["logit"] for g in gs]
        tiles = slice_tiles(gs, 4.0)
        rng = np.random.default_rng(1)
        for group in tile_batches(tiles, 3, rng):
            m = merge_tiles(group)
            out = model(m)["logit"][m.interior]
            want = torch.cat([full[int(t.slice_id)][t.interior_index] for t in group])
            assert torch.allclose(out, want, atol=1e-5)


def test_merge_refuses_tiles_that_disagree_and_empty_lists():
    a, b = slice_tiles([_graph()], 4.0)[:2]
    b.n_dir_bins = 8
    with pytest.raises(ValueError, match="disagree"):
        merge_tiles([a, b])
    with pytest.raises(ValueError, match="no tiles"):
        merge_tiles([])


def test_fit_with_tile_minibatches_is_deterministic_and_takes_more_steps():
    from spagraph.train.fit import TrainSettings, fit, predict_scores
    gs = [_graph(seed=s) for s in range(3)]
    ms = ModelSettings(hidden=8, heads=2, contrastive_weight=0.0)
    base = dict(epochs=3, min_epochs=1, patience=5, lr=1e-2, tile_size=4.0)
    steps = []

    class CountingAdamW(torch.optim.AdamW):
        def step(self, *a, **k):
            steps[-1] += 1
            return super().step(*a, **k)

    orig = torch.optim.AdamW
    torch.optim.AdamW = CountingAdamW
    try:
        res = []
        for per_step in (2, 2, 0):
            steps.append(0)
            res.append(fit(gs[:2], [gs[2]], ms, TrainSettings(tiles_per_step=per_step, **base), seed=0))
    finally:
        torch.optim.AdamW = orig
    p = [predict_scores(r.model, gs[2]) for r in res]
    assert np.array_equal(p[0], p[1])
    assert not np.allclose(p[0], p[2])
    assert steps[2] == 3 * 2                                   # full graphs: one step per slice and epoch
    assert steps[0] == 3 * -(-len(slice_tiles(gs[:2], 4.0)) // 2) > steps[2]


def test_tile_minibatches_refuse_per_slice_statistics():
    from spagraph.train.fit import TrainSettings, fit
    gs = [_graph(seed=s) for s in range(3)]
    with pytest.raises(ValueError, match="hidden_norm"):
        fit(gs[:2], [gs[2]], ModelSettings(hidden=8, heads=2, contrastive_weight=0.0, hidden_norm="slice"),
            TrainSettings(tiles_per_step=2, tile_size=4.0, epochs=1), seed=0)
