"""benchmarks/scale.py helpers: the point cloud and the growth exponents it reports."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from spagraph.graph.neighbours import spot_pitch

spec = importlib.util.spec_from_file_location("scale_bench", Path(__file__).resolve().parents[1] / "benchmarks/scale.py")
scale = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scale)


@pytest.mark.parametrize("n", [7, 1000, 12345])
def test_hex_grid_has_n_spots_at_the_pitch(n):
    pos = scale.hex_grid(n, pitch=100.0)
    assert pos.shape == (n, 2) and len(np.unique(pos, axis=0)) == n
    assert spot_pitch(pos) == pytest.approx(100.0)
    if n >= 1000:   # roughly square, so tiles are not degenerate strips
        ext = np.ptp(pos, axis=0)
        assert 0.7 < ext[0] / ext[1] < 1.4


def test_exponents_and_table():
    recs = [{"n": n, "edges": 60 * n, "build_s": 1e-5 * n, "train_epoch_s": 1e-9 * n ** 2, "infer_s": 2.0,
             "build_cpu_s": 1e-5 * n, "spatial_s": 1e-5 * n, "spatial_cpu_s": 1e-5 * n, "feature_knn_s": 0.0,
             "feature_knn_cpu_s": 0.0, "train_epoch_cpu_s": 1e-9 * n ** 2, "infer_cpu_s": 2.0, "total_s": 3.0, "total_cpu_s": 3.0,
             "mode": "full", "rss_peak_mb": 1.0, "rss_train_delta_mb": 0.0}
            for n in (1000, 10000, 100000)]
    assert scale.exponents(recs, "build_s")[1:] == pytest.approx([1.0, 1.0])
    assert scale.exponents(recs, "train_epoch_s")[1:] == pytest.approx([2.0, 2.0])
    assert scale.exponents(recs, "infer_s")[1:] == pytest.approx([0.0, 0.0])
    txt = scale.print_table(recs)
    assert "100,000" in txt and "build_s 1.00" in txt and "train_epoch_s 2.00" in txt
    assert "| 100,000 | — | 1.0 / 1.0 |" in txt     # wall / CPU seconds of the spatial graph
