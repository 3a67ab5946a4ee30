"""Blocked cross-validation inside one slice (spagraph.train.blocked) and the image-gene
contrastive pretraining with its patient rule (spagraph.pretrain.contrastive)."""
import numpy as np
import pytest
import torch

from spagraph.io.graph_task import graph_task_graphs
from spagraph.nn import ModelSettings
from spagraph.pretrain.contrastive import (PRETRAINED_PREFIXES, PatientRuleError, check_patient_rule,
                                           load_pretrain_slices, pretrain_contrastive)
from spagraph.train.blocked import (blocked_scores, label_view, logreg_block_fitter, spagraph_block_fitter,
                                    spatial_blocks, zscore_features)
from spagraph.train.fit import TrainSettings, build_model

MS = ModelSettings(hidden=8, heads=2, dropout=0.0, input_dropout=0.0, modality_dropout=0.0)
TS = TrainSettings(epochs=4, min_epochs=1, patience=4, lr=1e-2, batch_mode="full", device="cpu")


def _graph(seed=0, n=160):
    return zscore_features(graph_task_graphs(1, n, seed=seed, noise=1.0, patch_spots=10)[0])


def _permute_within(g, keep, seed=0):
    """A copy of g with the labels of spots ``keep`` permuted among themselves."""
    out = g.clone()
    idx = np.flatnonzero(keep)
    y = out.y.clone()
    y[idx] = y[idx[np.random.default_rng(seed).permutation(len(idx))]]
    out.y = y
    return out


def test_spatial_blocks_schemes():
    xy = np.random.default_rng(0).uniform(0, 100, (200, 2))
    q = spatial_blocks(xy, "quadrants")
    assert sorted(np.unique(q)) == [0, 1, 2, 3] and np.bincount(q).min() >= 40
    k = spatial_blocks(xy, "kmeans")
    assert len(np.unique(k)) == 4
    with pytest.raises(ValueError, match="unknown block scheme"):
        spatial_blocks(xy, "hexagons")


def test_no_view_handed_to_fit_holds_a_predicted_label():
    g = _graph()
    blocks = spatial_blocks(g.pos.numpy(), "quadrants")
    seen = []

    def recorder(train_view, val_view, epochs):
        seen.append((train_view.label_mask.numpy().copy(), np.isnan(train_view.y.numpy()),
                     None if val_view is None else val_view.label_mask.numpy().copy()))
        return np.zeros(g.num_nodes), 0
    blocked_scores(g, blocks, recorder)
    assert len(seen) == 8                                   # 4 blocks x (choose epoch, refit)
    for i, b in enumerate(np.unique(blocks)):
        te = blocks == b
        for tr_mask, y_nan, va_mask in seen[2 * i: 2 * i + 2]:
            assert not tr_mask[te].any() and y_nan[te].all()
            if va_mask is not None:
                assert not va_mask[te].any() and not (va_mask & tr_mask).any() and va_mask.any()
        assert seen[2 * i + 1][0][~te].sum() == g.label_mask.numpy()[~te].sum()   # the refit: all other blocks


@pytest.mark.parametrize("fitter", ["logreg", "spagraph"])
def test_shuffling_the_predicted_block_labels_leaves_its_scores_identical(fitter):
    g = _graph(seed=3)
    blocks = spatial_blocks(g.pos.numpy(), "quadrants")
    fb = (logreg_block_fitter(lambda d: torch.cat([d.x_img, d.x_gene], 1).numpy()) if fitter == "logreg"
          else spagraph_block_fitter(MS, TS, seed=0))
    base = blocked_scores(g, blocks, fb).scores
    changed = 0
    for b in np.unique(blocks):
        te = blocks == b
        gp = _permute_within(g, te, seed=int(b))
        s = blocked_scores(gp, blocks, fb).scores
        np.testing.assert_array_equal(s[te], base[te])            # predicted block: unchanged
        if not torch.equal(gp.y, g.y):                            # (a one-class block permutes to itself)
            assert not np.allclose(s[~te], base[~te])             # the others trained on those labels: changed
            changed += 1
    assert changed >= 2


def test_label_view_and_zscore():
    g = graph_task_graphs(1, 60, seed=1)[0]
    keep = np.arange(60) < 20
    v = label_view(g, keep)
    assert torch.isnan(v.y[20:]).all() and not v.label_mask[20:].any() and torch.equal(v.y[:20], g.y[:20])
    assert torch.equal(v.x_gene, g.x_gene)
    z = zscore_features(g)
    assert torch.allclose(z.x_img.mean(0), torch.zeros(z.x_img.shape[1]), atol=1e-5)
    assert torch.allclose(z.x_img.std(0, unbiased=False), torch.ones(z.x_img.shape[1]), atol=1e-4)


# ------------------------------------------------------------------ patient rule


def test_patient_rule_refuses_same_patient_sections():
    assert check_patient_rule(["B4", "C2", "C3"], ["A1"]) == ["B4", "C2", "C3"]
    with pytest.raises(PatientRuleError, match="B4"):
        check_patient_rule(["B4", "C2"], ["B1"])
    with pytest.raises(PatientRuleError, match="C3"):
        check_patient_rule(["B4", "C3"], ["A1", "C1"])
    with pytest.raises(PatientRuleError):                        # the predicted section itself
        check_patient_rule(["A1"], ["A1"])
    with pytest.raises(PatientRuleError, match="predicted"):      # nothing named: cannot be proven safe
        check_patient_rule(["B4"], [])


def test_pretraining_entry_points_refuse_before_any_work(tmp_path):
    # refused before a file is opened (the root does not even exist)
    with pytest.raises(PatientRuleError):
        load_pretrain_slices(tmp_path / "absent", ["B4", "C2"], None, predicted=["C1"])
    g = _graph()
    g.name = "B4"
    with pytest.raises(PatientRuleError):
        pretrain_contrastive([g], MS, epochs=1, seed=0, predicted=["B1"])


def _paired_graphs(n_slices=2, n=150):
    """Slices whose image embedding is a fixed linear map of the gene embedding plus noise."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(5, 4)).astype(np.float32)
    out = []
    for i, g in enumerate(graph_task_graphs(n_slices, n, seed=5)):
        g.x_img = g.x_gene @ torch.from_numpy(W) + 0.1 * torch.randn(g.num_nodes, 4, generator=torch.Generator().manual_seed(i))
        g.name = ("C2", "C3", "B4")[i]
        out.append(zscore_features(g))
    return out


def test_contrastive_pretraining_learns_alignment_and_warm_starts_fit():
    gs = _paired_graphs()
    res = pretrain_contrastive(gs, MS, epochs=30, seed=0, predicted=["A1"])
    assert res.history[-1] < res.history[0] - 0.3, res.history      # the pairs are found
    assert res.state and all(k.startswith(PRETRAINED_PREFIXES) for k in res.state)
    again = pretrain_contrastive(gs, MS, epochs=30, seed=0, predicted=["A1"])
    assert all(torch.equal(res.state[k], again.state[k]) for k in res.state)   # deterministic
    m = build_model(gs, MS, TS, seed=1, warm_start=res.state)
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in res.state.items())
    cold = build_model(gs, MS, TS, seed=1).state_dict()
    assert not all(torch.equal(cold[k], v) for k, v in res.state.items())
    with pytest.raises(ValueError, match="lacks"):
        build_model(gs, MS, TS, seed=1, warm_start={"not.a.weight": torch.zeros(1)})


@pytest.mark.realdata
def test_pretraining_image_resampled_to_a1_pixels_per_pitch(her2st_root, her2st_unlabelled_root):
    import warnings

    from spagraph.embed.patches import load_slice_image
    from spagraph.graph.neighbours import spot_pitch
    from spagraph.io import read_her2st
    from spagraph.pretrain.contrastive import a1_pitch_px, resample_to_pitch
    pitch = a1_pitch_px(her2st_root)
    assert 50 < pitch < 70                      # README: A1's PNG, spot pitch about 62 px
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = read_her2st(her2st_unlabelled_root, "B4")
    assert a.uns["spagraph_slice"].get("image_path")   # a full-resolution file to start from
    resample_to_pitch(a, pitch)
    im = load_slice_image(a)
    assert im.source == "hires" and "image_path" not in a.uns["spagraph_slice"]
    assert abs(spot_pitch(a.obsm["spatial"]) * im.scale - pitch) < 0.01 * pitch
