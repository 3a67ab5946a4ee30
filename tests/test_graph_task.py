"""The synthetic task only a graph network can solve: the linear floor fails, spagraph wins."""
import numpy as np

from spagraph.io.graph_task import TASK_MODEL, TASK_TRAIN, graph_task_graphs, graph_task_slice, smoothed_logreg_scores
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
    for col in (gene[:, 0], gene[:, 1], img[:, 0]):     # A, C and B alone: no class shift in the mean
        assert abs(col[y == 1].mean() - col[y == 0].mean()) < 0.2
    # the product of the two programmes carries the class
    assert _auc_np(y, gene[:, 0] * img[:, 0]) > 0.75


def _auc_np(y, s):
    return binary_metrics(y, s, 0.5)["auc"]


def test_logistic_regression_fails_and_spagraph_wins():
    # 3 training slices, 1 validation slice, 8 test slices (AUC over few patches per slice is noisy)
    gs = graph_task_graphs(12, 400, seed=10, noise=2.0)
    train, val, test = gs[:3], [gs[3]], gs[4:]
    lr = np.mean([_auc(g, s) for g, s in zip(test, smoothed_logreg_scores(train, test))])
    res = fit(train, val, ModelSettings(**TASK_MODEL), TrainSettings(**TASK_TRAIN), seed=0)
    net = np.mean([_auc(g, predict_scores(res.model, g)) for g in test])
    assert abs(lr - 0.5) < 0.12, f"smoothed logistic regression should be near chance, got {lr:.3f}"
    assert net > 0.8 and net > lr + 0.25, f"spagraph {net:.3f} vs logistic regression {lr:.3f}"


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
    # gap 0.06-0.14; with all products in one token there is no gap (|diff| <= 0.01). On spagraph's
    # own scale tokens no such gap was found (benchmarks/README.md), so this checks the module only.
    p = _probe()
    cross, concat = p.fusion_probe_auc(True, True, seed=0), p.fusion_probe_auc(True, False, seed=0)
    assert cross > 0.8 and cross > concat + 0.05, f"cross-attention {cross:.3f} vs concatenation {concat:.3f}"
    short = [p.fusion_probe_auc(True, True, seed=1, steps=20) for _ in range(2)]
    assert short[0] == short[1]                                   # same seed, same result
