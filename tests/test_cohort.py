"""Cohort prediction: one saved model, many slices, one file per slice + a summary, in input order."""
from pathlib import Path

import pandas as pd
import pytest

CFG = """\
name: cohort
data:
  sources:
    - {reader: synthetic, n_slices: 3, n_spots: 120, seed: 3, with_image: false}
  train: [syn0]
  validate: [syn1]
  test: [syn2]
embed: {image_encoder: null, gene_encoder: pca, settings: {n_pcs: 8, n_hvg: 80}}
graph: {scales: [1.0, 2.0], n_dir_bins: 4}
model: {hidden: 16, heads: 2}
train: {epochs: 2, patience: 5, seeds: [0]}
protocol: {kind: fixed}
track: {mode: disabled}
"""


@pytest.fixture(scope="module")
def model_and_slices(tmp_path_factory, one_thread):
    from spagraph.experiment.config import load_config
    from spagraph.experiment.runner import run_experiment
    from spagraph.io.synthetic import make_synthetic_slice
    d = tmp_path_factory.mktemp("cohort")
    (d / "c.yaml").write_text(CFG)
    run_experiment(load_config(d / "c.yaml"), d / "run", progress=False, write_maps=False, save_models=True)
    paths = []
    for s in (7, 8, 9):
        a = make_synthetic_slice(n_spots=100 + 10 * s, seed=s)
        a.write_h5ad(d / f"new{s}.h5ad")
        paths.append((d / f"new{s}.h5ad", None))
    return d / "run" / "models" / "fixed_s0", paths


def test_cohort_predict_writes_one_file_per_slice(model_and_slices, tmp_path):
    from spagraph.experiment.cohort import predict_cohort
    model, paths = model_and_slices
    summary = predict_cohort(model, paths, tmp_path / "out", n_mc=0)
    assert list(summary["slice"]) == ["new7", "new8", "new9"]
    assert list(summary["spots"]) == [170, 180, 190]
    for n in ("new7", "new8", "new9"):
        assert (tmp_path / "out" / f"{n}.h5ad").exists() and (tmp_path / "out" / f"{n}.csv").exists()
        assert len(pd.read_csv(tmp_path / "out" / f"{n}.csv")) == summary.set_index("slice").loc[n, "spots"]
    assert pd.read_csv(tmp_path / "out" / "cohort_summary.csv")["slice"].tolist() == ["new7", "new8", "new9"]
    # finished slices are skipped on a rerun; a missing one is redone
    (tmp_path / "out" / "new8.h5ad").unlink()
    again = predict_cohort(model, paths, tmp_path / "out", n_mc=0)
    assert again["skipped"].eq(True).tolist() == [True, False, True]


def test_cohort_predict_names_a_bad_slice(model_and_slices, tmp_path):
    from spagraph.experiment.cohort import predict_cohort
    model, paths = model_and_slices
    with pytest.raises(FileNotFoundError, match="nope"):
        predict_cohort(model, paths + [(tmp_path / "nope.h5ad", None)], tmp_path / "out", n_mc=0)
