"""benchmarks/decisions.py: the label-using ceilings it prints next to the label-free rules."""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

spec = importlib.util.spec_from_file_location("decisions_bench", Path(__file__).resolve().parents[1] / "benchmarks/decisions.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_ceilings_on_hand_made_scores(tmp_path):
    # section a: ranking perfect -> both ceilings 1; section b: 4 cancer, one benign ranked among them
    a = pd.DataFrame({"slice": "a", "seed": 0, "raw_score": np.linspace(0, 1, 10),
                      "label": [0] * 6 + [1] * 4})
    b = pd.DataFrame({"slice": "b", "seed": 0, "raw_score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.05, 0.01],
                      "label": [1, 1, 0, 1, 1, 0, 0, 0]})
    unl = pd.DataFrame({"slice": "b", "seed": 0, "raw_score": [0.99], "label": [np.nan]})   # ignored
    pd.concat([a, b, unl]).to_csv(tmp_path / "predictions.csv", index=False)
    c = bench.ceilings(tmp_path / "predictions.csv")
    # b, cut at the true fraction (top 4): tp 3 -> F1 = 6/8; best threshold: top 5, tp 4 -> F1 = 8/9
    assert c["true_fraction_cut"] == pytest.approx((1 + 6 / 8) / 2)
    assert c["best_threshold"] == pytest.approx((1 + 8 / 9) / 2)
    assert bench.ceilings(tmp_path / "missing.csv") is None
