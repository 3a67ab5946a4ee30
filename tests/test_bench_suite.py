"""Benchmark harness: suite -> runs -> table / heat-map; reference scoring with the common metric code."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spagraph.bench import load_suite, run_suite, score_reference
from spagraph.bench.table import per_slice_auc, suite_table
from spagraph.train.metrics import binary_metrics

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_suite_table(tmp_path):
    out = tmp_path / "bench"
    df = run_suite(ROOT / "experiments/suites/tiny_synthetic.yaml", out)
    assert list(df["method"]) == ["spagraph", "logreg (genes, smoothed)"]
    assert list(df["kind"]) == ["spagraph", "baseline:logreg"]
    for c in ("auc_mean", "auc_std", "ap_mean", "ap_std", "f1_mean", "f1_std", "n_runs", "wall_time_s"):
        assert c in df.columns
    assert (df["n_slices"] == 3).all() and (df["n_runs"] == 3).all()
    # the table's numbers are the mean over the entry's own per-slice rows
    for name, d in (("spagraph", "spagraph"), ("logreg (genes, smoothed)", "logreg_genes_smoothed")):
        m = json.loads((out / d / "metrics.json").read_text())
        aucs = [r["auc"] for r in m["per_slice"] if r["auc"] is not None]
        assert df.set_index("method").loc[name, "auc_mean"] == pytest.approx(np.mean(aucs))
    md = (out / "table.md").read_text()
    assert "| method | kind | AUC | AP | F1 |" in md and "logreg (genes, smoothed)" in md and "±" in md
    csv = pd.read_csv(out / "table.csv")
    assert len(csv) == 2
    png = out / "per_slice_auc.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    mat = pd.read_csv(out / "per_slice_auc.csv", index_col=0)
    assert mat.shape == (2, 3)
    # resumable: a second call reuses both finished entries (metrics files untouched)
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")}
    df2 = run_suite(ROOT / "experiments/suites/tiny_synthetic.yaml", out)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")} == before
    pd.testing.assert_frame_equal(df.drop(columns="wall_time_s"), df2.drop(columns="wall_time_s"))


def test_table_mean_std_over_slices_and_seeds():
    rows = [{"slice": s, "seed": k, "auc": a, "ap": 0.5, "f1": None}
            for (s, k, a) in (("A", 0, 0.9), ("A", 1, 0.7), ("B", 0, 0.8), ("B", 1, None))]
    df = suite_table([("m", "spagraph", {"per_slice": rows, "wall_time_s": 3.0})])
    r = df.iloc[0]
    assert r["auc_mean"] == pytest.approx(0.8) and r["auc_std"] == pytest.approx(np.std([0.9, 0.7, 0.8]))
    assert r["auc_n"] == 3 and r["n_runs"] == 4 and r["n_seeds"] == 2 and pd.isna(r["f1_mean"])
    mat = per_slice_auc([("m", "spagraph", {"per_slice": rows})])
    assert mat.loc["m", "A"] == pytest.approx(0.8) and mat.loc["m", "B"] == pytest.approx(0.8)


def _fake_slice(n, labels, seed):
    import anndata as ad
    a = ad.AnnData(X=np.zeros((n, 1), np.float32), obs=pd.DataFrame(index=[f"{i}x{seed}" for i in range(n)]))
    a.obs["cancer"] = pd.array(labels, dtype="Int8")
    return a


def test_reference_scoring_matches_spots_in_order(tmp_path):
    """Shipped files: labels per count row (-1 dropped before the scores); scored with OUR labels."""
    rng = np.random.default_rng(0)
    slices, expect = {}, {}
    for k, name in enumerate(["S1", "S2"]):
        n = 60
        lab3 = rng.choice([2, 1, 0, -1], size=n, p=[0.4, 0.2, 0.3, 0.1])
        ours = np.where(lab3 == -1, np.nan, (lab3 == 2).astype(float))
        ours[3] = np.nan                                          # one spot we leave unlabelled
        score = np.clip((lab3 == 2) * 0.6 + rng.random(n) * 0.7, 0, 1)
        keep = lab3 != -1
        np.savetxt(tmp_path / f"{name}_labels3.txt", lab3, fmt="%d")
        np.savetxt(tmp_path / f"{name}_probs.txt", score[keep])
        labels = [pd.NA if np.isnan(v) else int(v) for v in ours]
        slices[name] = _fake_slice(n, labels, k)
        m = keep & ~np.isnan(ours)
        expect[name] = binary_metrics(ours[m].astype(int), score[m], 0.5)
    metrics, pred = score_reference(tmp_path, slices)
    for r in metrics["per_slice"]:
        e = expect[r["slice"]]
        assert r["auc"] == pytest.approx(e["auc"]) and r["ap"] == pytest.approx(e["ap"]) and r["f1"] == pytest.approx(e["f1"])
        assert r["n_label_mismatch"] == 0 and r["seed"] == 42
    assert metrics["mean"]["auc"] == pytest.approx(np.mean([expect[s]["auc"] for s in expect]))
    assert set(pred.columns) == {"slice", "spot", "seed", "score", "pred", "label"}
    # a shifted score file (wrong spot order) is caught by the count check, not silently misaligned
    np.savetxt(tmp_path / "S1_probs.txt", np.r_[np.loadtxt(tmp_path / "S1_probs.txt"), 0.5])
    with pytest.raises(ValueError, match="scores but"):
        score_reference(tmp_path, slices)


def test_suite_errors(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("entries: []\n")
    with pytest.raises(ValueError, match="non-empty 'entries:'"):
        load_suite(p)
    p.write_text("entries:\n  - {name: a, experiment: nope.yaml}\n")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_suite(p)
    exp = ROOT / "experiments/baselines/tiny_synthetic.yaml"
    p.write_text(f"entries:\n  - {{name: a b, experiment: {exp}}}\n  - {{name: a_b, experiment: {exp}}}\n")
    with pytest.raises(ValueError, match="distinct names"):
        load_suite(p)


REF = ROOT.parent / "shared/reference/spacancer_sthbc_seed42"
DATA = ROOT.parent / "shared/data/her2st"


@pytest.mark.realdata
@pytest.mark.skipif(not (REF.is_dir() and DATA.is_dir()), reason="needs ../shared/data/her2st and the reference")
def test_spacancer_reference_reproduces_published_means():
    import warnings
    from spagraph.io import read_her2st
    names = ["A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slices = {n: read_her2st(DATA, n, image=False) for n in names}
    m, _ = score_reference(REF, slices)
    assert round(m["mean"]["auc"], 3) == 0.956 and round(m["mean"]["ap"], 3) == 0.970
    assert all(r["n_label_mismatch"] == 0 for r in m["per_slice"])


def test_paired_table_against_a_reference():
    from scipy.stats import wilcoxon
    from spagraph.bench.table import paired_markdown, paired_table
    mat = pd.DataFrame({"s1": [0.80, 0.85, 0.80], "s2": [0.90, 0.88, 0.90], "s3": [0.70, 0.75, 0.70],
                        "s4": [0.60, np.nan, 0.60]}, index=["ref", "a", "same"])
    df = paired_table(mat, "ref").set_index("method")
    d = np.array([0.05, -0.02, 0.05])                   # s4 is missing for "a": left out
    assert df.loc["a", "n_slices"] == 3
    assert df.loc["a", "delta_auc"] == pytest.approx(d.mean())
    assert df.loc["a", "delta_se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert (df.loc["a", "better"], df.loc["a", "worse"], df.loc["a", "tied"]) == (2, 1, 0)
    assert df.loc["a", "wilcoxon_p"] == pytest.approx(wilcoxon(d).pvalue)
    assert df.loc["same", "delta_auc"] == 0 and df.loc["same", "wilcoxon_p"] == 1.0 and df.loc["same", "tied"] == 4
    md = paired_markdown(paired_table(mat, "ref"), "ref")
    assert "| a | +0.0267 ± 0.0233 | 2 / 1 / 0 |" in md
    with pytest.raises(ValueError, match="not a method"):
        paired_table(mat, "nope")


def test_suite_compare_to_writes_paired_table(tmp_path):
    import yaml
    suite = yaml.safe_load((ROOT / "experiments/suites/tiny_synthetic.yaml").read_text())
    for e in suite["entries"]:
        e["experiment"] = str(ROOT / "experiments/suites" / e["experiment"])
    bad = dict(suite, compare_to="missing")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="compare_to 'missing' names no entry"):
        load_suite(tmp_path / "bad.yaml")
    suite["compare_to"] = "logreg (genes, smoothed)"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    run_suite(tmp_path / "s.yaml", tmp_path / "out")
    paired = pd.read_csv(tmp_path / "out" / "paired.csv")
    mat = pd.read_csv(tmp_path / "out" / "per_slice_auc.csv", index_col=0)
    want = (mat.loc["spagraph"] - mat.loc["logreg (genes, smoothed)"]).mean()
    assert list(paired["method"]) == ["spagraph"]
    assert paired["delta_auc"].iloc[0] == pytest.approx(want)
    assert "Paired against **logreg (genes, smoothed)**" in (tmp_path / "out" / "table.md").read_text()
