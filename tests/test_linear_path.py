"""The disc mean, the linear path (a smoothed logistic regression inside spagraph), weight EMA
and the prevalence-free Youden threshold."""
import numpy as np
import pandas as pd
import pytest
import torch
import anndata as ad

from spagraph.graph import GraphSettings, build_slice_graph
from spagraph.nn import ModelSettings, SpaGraphNet
from spagraph.nn.disc_mean import DiscMean
from spagraph.train.fit import TrainSettings, WeightEMA, fit, fit_linear_prior, predict_scores
from spagraph.train.metrics import best_f1_threshold, best_youden_threshold


def _graph(n=10, seed=0, d_gene=5, d_img=3, signal=True):
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(n), np.arange(n))
    pos = np.c_[xx.ravel(), yy.ravel()].astype(float) * 100 + rng.normal(0, 2, (n * n, 2))
    y = (xx.ravel() > n / 2).astype(int)                       # right half is "cancer"
    x = rng.normal(size=(n * n, d_gene)).astype(np.float32)
    if signal:
        x[:, 0] += 1.0 * y                                     # weak per-spot signal, spatially coherent
    a = ad.AnnData(np.zeros((n * n, 1), np.float32))
    a.obsm["spatial"] = pos
    a.obsm["gene_emb"] = x
    if d_img:
        a.obsm["img_emb"] = rng.normal(size=(n * n, d_img)).astype(np.float32)
    a.obs["cancer"] = pd.array(y, dtype="Int8")
    return build_slice_graph(a, GraphSettings(scales=[1.0, 2.0], n_dir_bins=8), name=f"g{seed}")


def test_disc_mean_matches_slow_reference():
    g = _graph()
    x = torch.randn(g.num_nodes, 4)
    out = DiscMean()(x, g.edge_index_1).numpy()
    pos = g.pos.numpy()
    for i in range(g.num_nodes):
        # radius 2 pitches (tolerance 1.1) around spot i, the spot itself included
        near = np.linalg.norm(pos - pos[i], axis=1) <= 2.0 * 1.1
        np.testing.assert_allclose(out[i], x.numpy()[near].mean(0), atol=1e-5)


def test_linear_prior_is_a_frozen_smoothed_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    train = [_graph(seed=s, d_img=0) for s in (1, 2)]
    s = ModelSettings(hidden=8, heads=2, linear_path=True, linear_C=0.05, contrastive_weight=0)
    model = SpaGraphNet(0, 5, 2, 8, s)
    fit_linear_prior(model, train, seed=0)
    feats = [model.wide_gene.features(g.x_gene, g).numpy() for g in train]
    ref = LogisticRegression(C=0.05, class_weight="balanced", max_iter=5000).fit(
        np.vstack(feats).astype(np.float64), np.concatenate([g.y.numpy() for g in train]).astype(int))
    test = _graph(seed=3, d_img=0)
    model.eval()
    # the deep head starts at zero, so the untrained model is exactly that logistic regression
    np.testing.assert_allclose(model(test)["logit"].detach().numpy(),
                               ref.decision_function(model.wide_gene.features(test.x_gene, test).numpy()), atol=1e-3)
    assert not model.wide_gene.lin.weight.requires_grad
    before = model.wide_gene.lin.weight.clone()
    res = fit(train, [test], s, TrainSettings(epochs=3, min_epochs=1, patience=5), seed=0)
    assert torch.equal(res.model.wide_gene.lin.weight, before)        # frozen through training
    assert res.history[0]["epoch"] == -1                               # the prior alone was a candidate


def test_linear_path_masks_missing_modality():
    g = _graph(d_img=3)
    model = SpaGraphNet(3, 5, 2, 8, ModelSettings(hidden=8, heads=2, linear_path=True)).eval()
    g.has_img[:] = False
    a = model(g)["logit"]
    g.x_img = torch.randn_like(g.x_img) * 50
    assert torch.allclose(a, model(g)["logit"], atol=1e-5)


def test_weight_ema_update_rule():
    lin = torch.nn.Linear(2, 1)
    ema = WeightEMA(lin, decay=0.75)
    w0 = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(4.0)
    ema.update(lin)
    torch.testing.assert_close(ema.module.weight, w0 + 1.0)          # 0.75 * w0 + 0.25 * (w0 + 4)


def test_youden_threshold_ignores_prevalence_f1_does_not():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, 400), rng.normal(-1.0, 1.0, 400)
    sig = lambda v: 1 / (1 + np.exp(-v))
    y1 = np.r_[np.ones(400), np.zeros(400)].astype(int)
    s1 = sig(np.r_[pos, neg])
    y2 = np.r_[np.ones(400), np.zeros(4 * 400)].astype(int)          # same classes, 4x the negatives
    s2 = sig(np.r_[pos, np.tile(neg, 4)])
    assert best_youden_threshold(y1, s1) == pytest.approx(best_youden_threshold(y2, s2))
    assert best_f1_threshold(y2, s2) > best_f1_threshold(y1, s1) + 0.05
    # brute force
    ts = np.unique(s1)
    j = [((s1 >= t) & (y1 == 1)).sum() / 400 - ((s1 >= t) & (y1 == 0)).sum() / 400 for t in ts]
    assert best_youden_threshold(y1, s1) == pytest.approx(ts[int(np.argmax(j))])
    assert best_youden_threshold(np.ones(5, int), np.linspace(0, 1, 5)) == 0.5


def test_auc_standard_error_shrinks_with_n_and_matches_bootstrap():
    from sklearn.metrics import roc_auc_score
    from spagraph.train.metrics import auc_standard_error
    assert auc_standard_error(0.8, 400, 400) < auc_standard_error(0.8, 40, 40)
    rng = np.random.default_rng(0)
    n = 150
    pos, neg = rng.normal(1.2, 1, n), rng.normal(0, 1, n)
    auc = roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[pos, neg])
    boot = [roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[rng.choice(pos, n), rng.choice(neg, n)])
            for _ in range(300)]
    assert auc_standard_error(auc, n, n) == pytest.approx(np.std(boot), rel=0.25)


def test_one_se_rule_keeps_the_prior_unless_the_deep_gain_is_clear():
    # no real signal beyond the prior: tiny validation gains of the deep part are noise
    train = [_graph(seed=s, d_img=0) for s in (1, 2)]
    val = [_graph(seed=4, d_img=0)]
    s = ModelSettings(hidden=8, heads=2, linear_path=True, contrastive_weight=0, dropout=0.0, input_dropout=0.0)
    ts = dict(epochs=30, min_epochs=1, patience=30, lr=3e-2)
    off = fit(train, val, s, TrainSettings(one_se_rule=False, **ts), seed=0)
    on = fit(train, val, s, TrainSettings(one_se_rule=True, **ts), seed=0)
    prior_auc = on.history[0]["val_auc"]
    if off.best_epoch == -1:
        pytest.skip("the deep part never beat the prior here")
    from spagraph.train.fit import validation_auc_se
    gain = off.best_val_auc - prior_auc
    se = validation_auc_se(prior_auc, val)
    assert (on.best_epoch == -1) == (gain <= se)
    assert on.kept_prior_by_se == (gain <= se)
    if on.best_epoch == -1:      # the returned model is the prior: its deep head is still silent
        assert torch.count_nonzero(on.model.head[-1].weight) == 0
    else:
        assert torch.count_nonzero(on.model.head[-1].weight) > 0


def test_linear_path_tiled_inference_equals_full_graph():
    from spagraph.train.tiles import iter_tiles
    g = _graph(n=20, d_img=3)
    torch.manual_seed(0)
    model = SpaGraphNet(3, 5, 2, 8, ModelSettings(hidden=8, heads=2, linear_path=True)).eval()
    torch.nn.init.normal_(model.head[-1].weight)          # deep part on as well
    full = predict_scores(model, g, TrainSettings(batch_mode="full"))
    tiled = predict_scores(model, g, TrainSettings(batch_mode="tiles", tile_size=4.0))
    assert len(list(iter_tiles(g, 4.0))) > 4
    np.testing.assert_allclose(full, tiled, atol=1e-5)


def test_one_se_rule_overrides_and_survives_a_resume():
    """A 25-spot validation slice has an AUC standard error of ~0.05: the deep part's gain from
    0.96 to 1.0 is within it, so the prior is kept; resuming from a mid-run checkpoint (the prior's
    state travels in it) reaches the same decision and the same weights."""
    train = [_graph(seed=s, d_img=0) for s in (1, 2)]
    val = [_graph(n=5, seed=5, d_img=0)]
    s = ModelSettings(hidden=8, heads=2, linear_path=True, contrastive_weight=0, dropout=0.0, input_dropout=0.0)
    ts = TrainSettings(epochs=12, min_epochs=1, patience=12, lr=1e-2)
    states = {}

    def keep(epoch, rec, state_fn):
        states[epoch] = state_fn()

    ref = fit(train, val, s, ts, seed=0, on_epoch=keep)
    assert ref.kept_prior_by_se and ref.best_epoch == -1
    assert max(h["val_auc"] for h in ref.history) > ref.history[0]["val_auc"]      # a deep epoch did score higher
    import copy
    resumed = fit(train, val, s, ts, seed=0, init_state=copy.deepcopy(states[5]))
    assert resumed.kept_prior_by_se and resumed.best_epoch == -1
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
