"""benchmarks/transfer_ceiling.py (source prior vs target-label oracle) and the synthetic transfer
experiment whose target it diagnoses."""
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")
pytestmark = pytest.mark.usefixtures("one_thread")

spec = importlib.util.spec_from_file_location("transfer_ceiling", ROOT / "benchmarks/transfer_ceiling.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["transfer_ceiling"] = bench
spec.loader.exec_module(bench)

TRANSFER = ROOT / "experiments/transfer/synthetic_a_to_b.yaml"
TINY = ["data.sources=[{reader: synthetic, n_slices: 2, n_spots: 160, seed: 3, group: A, with_image: false},"
        "{reader: synthetic, n_slices: 2, n_spots: 160, seed: 4, group: B, with_image: false,"
        " batch_effect: {gene_dropout: 0.3, library_scale: 0.4}}]", "embed.image_encoder=null",
        "embed.settings={n_pcs: 8}", "protocol.n_val=1"]


def test_f1_ceilings_on_hand_made_scores():
    y = [1, 1, 0, 1, 1, 0, 0, 0]
    s = [0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.05, 0.01]
    best, cut = bench.f1_ceilings(y, s)
    assert cut == pytest.approx(6 / 8)       # top 4 called: 3 true positives
    assert best == pytest.approx(8 / 9)      # top 5 called: all 4 positives
    assert bench.f1_ceilings([0, 1], [0.2, 0.9]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="positive"):
        bench.f1_ceilings([0, 0], [0.1, 0.2])


@pytest.fixture(scope="module")
def tiny():
    from spagraph.experiment.config import load_config
    from spagraph.experiment.data import load_slices, plan_folds
    from spagraph.experiment.runner import embed_and_graph
    cfg = load_config(TRANSFER, TINY)
    slices, groups = load_slices(cfg.data)
    fold = plan_folds(cfg, list(slices), groups)[0]
    graphs, _ = embed_and_graph(cfg, slices, fold)
    return cfg, fold, graphs


def test_source_prior_never_reads_target_labels_and_oracle_does(tiny):
    cfg, fold, graphs = tiny
    tgt = list(fold.test)
    res = bench.evaluate(graphs, list(fold.train), tgt, cfg.model.linear_C)
    assert set(res) == set(tgt) and all(r["oracle"] is not None for r in res.values())
    src_scores = {t: bench.fit_scorer([graphs[n] for n in fold.train], 0.01)(graphs[t]) for t in tgt}
    # shuffle the target slices' labels: the source scorer is unchanged, the oracle is not
    rng = np.random.default_rng(0)
    shuffled = dict(graphs)
    for t in tgt:
        g = graphs[t].clone()
        m = g.label_mask.numpy()
        y = g.y.numpy().copy()
        y[m] = rng.permutation(y[m])
        g.y = torch.from_numpy(y)
        shuffled[t] = g
    for t in tgt:
        again = bench.fit_scorer([shuffled[n] for n in fold.train], 0.01)(shuffled[t])
        np.testing.assert_array_equal(again, src_scores[t])
    res2 = bench.evaluate(shuffled, list(fold.train), tgt, cfg.model.linear_C)
    assert any(res2[t]["oracle"] != res[t]["oracle"] for t in tgt)
    for t in tgt:   # the real labels are separable in these features; shuffled ones are not
        assert res[t]["oracle"][0] > 0.8 and res[t]["source"][0] > 0.8
        assert res2[t]["oracle"][0] < res[t]["oracle"][0] - 0.2


def test_dev_pair_and_no_batch_effect_configs_change_data_only():
    base = bench._config(str(TRANSFER), None, False, [])
    dev = bench._config(str(TRANSFER), [11, 12], True, [])
    assert [s.seed for s in dev.data.sources] == [11, 12]
    assert all(s.batch_effect is None for s in dev.data.sources)
    assert dev.model == base.model and dev.train == base.train and dev.threshold == base.threshold


def test_transfer_target_is_pinned():
    """The synthetic transfer's data section is the issue's target: changing it moves the goal
    posts (issue 14). Model / train / threshold settings may change; these may not."""
    from spagraph.experiment.config import load_config
    cfg = load_config(TRANSFER)
    src = [s.model_dump(exclude_defaults=True) for s in cfg.data.sources]
    assert src == [
        {"reader": "synthetic", "n_slices": 3, "n_spots": 700, "seed": 1, "group": "A"},
        {"reader": "synthetic", "n_slices": 2, "n_spots": 700, "seed": 2, "group": "B",
         "batch_effect": {"gene_dropout": 0.3, "library_scale": 0.4, "stain_shift": 0.15}}]
    assert (cfg.data.source_group, cfg.data.target_group, cfg.protocol.kind) == ("A", "B", "transfer")
    assert cfg.threshold.method == "auto" and cfg.train.seeds == [0, 1]
