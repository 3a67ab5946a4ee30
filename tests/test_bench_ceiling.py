"""benchmarks/gene_ceiling.py: its reference row is the harness's smoothed logistic regression,
its scorers never read validation or test labels, and the table reports what was scored."""
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ROOT / "experiments/baselines/tiny_synthetic.yaml"
# four slices: two training slices per fold, so the inner leave-one-slice-out of stack_* runs
FOUR = ["data.sources=[{reader: synthetic, n_slices: 4, n_spots: 250, seed: 5, with_image: false}]"]


def _module():
    spec = importlib.util.spec_from_file_location("gene_ceiling", ROOT / "benchmarks/gene_ceiling.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gene_ceiling"] = mod          # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ceiling():
    return _module()


@pytest.fixture(scope="module")
def tiny_fold(ceiling):
    from spagraph.experiment.config import load_config
    from spagraph.experiment.data import load_slices, plan_folds
    cfg = load_config(TINY, FOUR)
    slices, groups = load_slices(cfg.data)
    fold = plan_folds(cfg, list(slices), groups)[0]
    return cfg, slices, fold, ceiling.fold_data(cfg, slices, fold, 0.01)


def test_linear_row_equals_harness_logreg(tmp_path, ceiling):
    """The reference row scores exactly like the logreg baseline (smooth: disc, unstandardised)."""
    from spagraph.experiment.config import load_config
    from spagraph.experiment.runner import run_experiment
    cfg = load_config(TINY, FOUR + ["model_type=baseline", "baseline.kind=logreg", "baseline.features=gene",
                             "baseline.smooth=disc", "baseline.standardise=false", "baseline.C=0.01"])
    m = run_experiment(cfg, tmp_path / "run", progress=False, write_maps=False)
    harness = {r["slice"]: r["auc"] for r in m["per_slice"]}
    res = ceiling.evaluate(load_config(TINY, FOUR), ["linear"], C=0.01, progress=False)
    assert set(res["linear"]["test"]) == set(harness)
    for s, auc in harness.items():
        assert res["linear"]["test"][s] == pytest.approx(auc, abs=1e-6)


@pytest.mark.parametrize("name", ["linear", "slice_weights", "slice_zscore", "diffuse_0.3", "clusters", "expr_smooth",
                                  "stack_lr", "mlp", "boosting"])
def test_scorers_ignore_held_out_labels(ceiling, tiny_fold, name):
    """Shuffling validation and test labels leaves every scorer's scores unchanged."""
    _, _, fold, fd = tiny_fold
    before = ceiling.SCORERS[name](fd)
    rng = np.random.default_rng(0)
    saved = {}
    for n in fold.val + fold.test:
        g = fd.graphs[n]
        saved[n] = g.y.clone()
        g.y = g.y[rng.permutation(g.num_nodes)]
    try:
        after = ceiling.SCORERS[name](fd)
    finally:
        for n, y in saved.items():
            fd.graphs[n].y = y
    assert set(before) == set(fold.val + fold.test)
    for n in before:
        assert np.isfinite(before[n]).all() and len(before[n]) == fd.graphs[n].num_nodes
        np.testing.assert_allclose(after[n], before[n])


def test_diffusion_smooths_and_keeps_a_constant(ceiling, tiny_fold):
    _, _, fold, fd = tiny_fold
    g = fd.graphs[fold.test[0]]
    z = np.random.default_rng(1).normal(size=g.num_nodes)
    out = ceiling._diffuse(z, g, 0.7)
    assert out.std() < 0.8 * z.std()
    np.testing.assert_allclose(ceiling._diffuse(np.full(g.num_nodes, 2.5), g, 0.7), 2.5)


def test_stacking_needs_two_training_slices(ceiling, tiny_fold):
    _, _, _, fd = tiny_fold
    one = ceiling.FoldData(fd.train[:1], fd.val, fd.test, fd.graphs, fd.X, fd.C)
    with pytest.raises(ValueError, match="at least 2 training slices"):
        ceiling.SCORERS["stack_lr"](one)


def test_table_and_cli(ceiling, capsys):
    res = ceiling.main([str(TINY), "--only", "diffuse_0.3", "--C", "0.01", "--set", *FOUR])
    assert list(res) == ["linear", "diffuse_0.3"]
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| diffuse_0.3 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    test_aucs = list(res["diffuse_0.3"]["test"].values())
    assert float(cells[2]) == pytest.approx(np.mean(test_aucs), abs=5e-5)
    delta = np.mean(np.array(test_aucs) - np.array(list(res["linear"]["test"].values())))
    assert float(cells[3].split()[0]) == pytest.approx(delta, abs=5e-5)
    assert [float(c) for c in cells[4:]] == pytest.approx(test_aucs, abs=5e-4)
