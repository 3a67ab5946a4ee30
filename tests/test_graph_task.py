"""The synthetic task only a graph network can solve: the linear floor fails, spagraph wins."""
import numpy as np
import pytest

from spagraph.io.graph_task import (TASK_MODEL, TASK_TRAIN, TOKEN_MODEL, TOKEN_TRAIN, graph_task_graphs, graph_task_slice,
                                    smoothed_logreg_scores, token_task_graphs)
from spagraph.nn import ModelSettings
from spagraph.train.fit import TrainSettings, fit, predict_scores
from spagraph.train.metrics import binary_metrics


def _auc(g, s):
    return binary_metrics(g.y.numpy().astype(int), np.asarray(s), 0.5)["auc"]


def test_each_signal_is_balanced_per_class():
    sl = [graph_task_slice(500, seed=s) for s in range(8)]   # pooled: single patches vary in size
    y = np.concatenate([a.obs["cancer"].to_numpy().astype(int) for a in sl])
    gene = np.vstack([a.obsm["gene_emb"] for a in sl])
    img = np.vstack([a.obsm["img_emb"] for a in sl])
    assert 0.35 < y.mean() < 0.65
    for col in (gene[:, 0], img[:, 0]):                 # A and B alone: no class shift in the mean
        assert abs(col[y == 1].mean() - col[y == 0].mean()) < 0.2
    c = gene[:, 1]                                      # C (std about 3.5): same mean and spread per class
    assert abs(c[y == 1].mean() - c[y == 0].mean()) < 0.3 and abs(c[y == 1].std() / c[y == 0].std() - 1) < 0.1
    # the product of the two programmes carries the class
    assert _auc_np(y, gene[:, 0] * img[:, 0]) > 0.75
    # C's step to the +x neighbour in the same row has the class's sign (rising in cancer)
    for a in sl:
        pos, c1, ya = a.obsm["spatial"] / 100.0, a.obsm["gene_emb"][:, 1], a.obs["cancer"].to_numpy().astype(int)
        same = (np.abs(pos[1:, 1] - pos[:-1, 1]) < 1e-6) & (ya[1:] == ya[:-1])
        step = np.sign(c1[1:] - c1[:-1])[same]
        assert np.mean(step == np.where(ya[:-1][same] == 1, 1, -1)) > 0.9     # observed 0.95-0.995


def _auc_np(y, s):
    return binary_metrics(y, s, 0.5)["auc"]


@pytest.fixture(scope="module")
def task():
    # 3 training slices, 1 validation slice, 8 test slices (AUC over few patches per slice is noisy)
    gs = graph_task_graphs(12, 400, seed=10, noise=2.0)
    train, val, test = gs[:3], [gs[3]], gs[4:]
    lr = np.mean([_auc(g, s) for g, s in zip(test, smoothed_logreg_scores(train, test))])
    res = fit(train, val, ModelSettings(**TASK_MODEL), TrainSettings(**TASK_TRAIN), seed=0)
    net = np.mean([_auc(g, predict_scores(res.model, g)) for g in test])
    return lr, net


def test_logistic_regression_fails_and_spagraph_wins(task):
    lr, net = task
    assert abs(lr - 0.5) < 0.12, f"smoothed logistic regression should be near chance, got {lr:.3f}"
    assert net > 0.9 and net > lr + 0.35, f"spagraph {net:.3f} vs logistic regression {lr:.3f}"


def test_no_direction_bins_loses(task):
    # the same slices with one direction sector: C's +x / -x ramps are invisible (mirror images).
    # Observed (benchmarks/graph_task.py, data seed 10, model seeds 0-4): spagraph 0.964-0.985,
    # no direction bins 0.853-0.889 (0.49-0.51 in seeds 1 and 4: the A x B product not learnt
    # either), the gap 0.094-0.489; data seed 30, model seeds 0-2: gap 0.124-0.482. Asserted for
    # seed 0 (0.985 vs 0.875 in the benchmark) with margin 0.05.
    _, net = task
    gs = graph_task_graphs(12, 400, seed=10, noise=2.0, n_dir_bins=1)
    res = fit(gs[:3], [gs[3]], ModelSettings(**TASK_MODEL), TrainSettings(**TASK_TRAIN), seed=0)
    nodir = np.mean([_auc(g, predict_scores(res.model, g)) for g in gs[4:]])
    assert nodir < net - 0.05, f"no direction bins {nodir:.3f} vs spagraph {net:.3f}"


def _probe():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("xattn_probe", Path(__file__).resolve().parents[1] / "benchmarks/xattn_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cross_attention_learns_token_aligned_products_concat_does_not():
    # CrossModalFusion alone: label = sign of u_t . v_t summed over 3 tokens per modality. Observed
    # (benchmarks/xattn_probe.py, seeds 0-3): cross-attention 0.83-0.88, concatenation 0.73-0.77, the
    # gap 0.06-0.14; with all products in one token there is no gap (|diff| <= 0.01). This checks the
    # module only; inside spagraph see test_token_task_cross_attention_beats_concatenation.
    p = _probe()
    cross, concat = p.fusion_probe_auc(True, True, seed=0), p.fusion_probe_auc(True, False, seed=0)
    assert cross > 0.8 and cross > concat + 0.05, f"cross-attention {cross:.3f} vs concatenation {concat:.3f}"
    short = [p.fusion_probe_auc(True, True, seed=1, steps=20) for _ in range(2)]
    assert short[0] == short[1]                                   # same seed, same result


def test_token_task_cross_attention_beats_concatenation():
    # spot label = sign of products of matching gene / image tokens (spot, ring, shell). Observed
    # (benchmarks/graph_task.py --task tokens, model seeds 0-4): logistic regression 0.535; spagraph
    # 0.826 / 0.785 / 0.832 / 0.818 / 0.774; no cross-attention 0.716 / 0.683 / 0.682 / 0.660 / 0.709
    # (gap 0.065-0.158; 0.047-0.122 at data seed 30); the cross-attention model with its attention
    # zeroed (same post-norm) 0.640-0.717. Asserted for seed 0 (gap 0.110) with margin 0.03. Seed 0's best
    # epochs (90 and 18) lie in the first 100 of the 200, so 100 epochs give the same models (no lr schedule).
    gs = token_task_graphs(12, 400, seed=10)
    train, val, test = gs[:3], [gs[3]], gs[4:]
    lr = np.mean([_auc(g, s) for g, s in zip(test, smoothed_logreg_scores(train, test))])
    short = TrainSettings(**(TOKEN_TRAIN | {"epochs": 100, "patience": 100}))
    aucs = {}
    for cross in (True, False):
        res = fit(train, val, ModelSettings(**(TOKEN_MODEL | {"cross_attention": cross})), short, seed=0)
        aucs[cross] = np.mean([_auc(g, predict_scores(res.model, g)) for g in test])
    assert abs(lr - 0.5) < 0.1, f"logistic regression should be near chance, got {lr:.3f}"
    assert aucs[True] > lr + 0.2, f"spagraph {aucs[True]:.3f} vs logistic regression {lr:.3f}"
    assert aucs[True] > aucs[False] + 0.03, f"cross-attention {aucs[True]:.3f} vs concatenation {aucs[False]:.3f}"


def test_token_task_tokens_are_independent_and_the_label_needs_them():
    from spagraph.io.graph_task import token_task_slice
    a = token_task_slice(400, seed=3)
    y = a.obs["cancer"].to_numpy().astype(int)
    g, im = a.obsm["gene_emb"].astype(float), a.obsm["img_emb"].astype(float)
    assert 0.4 < y.mean() < 0.6
    for col in np.c_[g, im].T:                       # no column alone carries the label
        assert abs(_auc_np(y, col) - 0.5) < 0.08
    self_prod = (g * im).sum(1)                      # the spot's own products: a third of the signal
    assert 0.6 < _auc_np(y, self_prod) < 0.85
    # recomputed independently (dense distances, pitch 1): the spot, its 6 neighbours, the 12 spots
    # at distances sqrt(3) and 2; with the ring and shell products the label is (noise aside) determined
    pos = a.obsm["spatial"] / 100.0
    d = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(2))
    z = 0.0
    for ring in (d < 0.1, (d > 0.1) & (d < 1.1), (d > 1.1) & (d < 2.2)):
        w = ring / ring.sum(1, keepdims=True)
        mg, mi = w @ g, w @ im
        z = z + (mg / mg.std(0) * (mi / mi.std(0))).sum(1)
    assert _auc_np(y, z) > 0.93                      # label noise 0.3 against a unit-variance sum
    assert (token_task_slice(400, seed=3, label_noise=0.0).obs["cancer"].to_numpy().astype(int) == (z > 0)).mean() > 0.999
