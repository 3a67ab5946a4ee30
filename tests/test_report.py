"""Report on a hand-made finished run (3 slices x 2 seeds): files, images per slice, numbers."""
import base64
import json
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from spagraph.report import analyse_run, write_report


def _slice(name, seed, with_image=False):
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(12), np.arange(10), indexing="ij")
    pos = np.c_[xx.ravel(), yy.ravel()].astype(float) * 50 + 20
    lab = (xx.ravel() < 5).astype(float)
    lab[rng.choice(len(lab), 6, replace=False)] = np.nan
    a = ad.AnnData(np.zeros((len(lab), 2), np.float32))
    a.obs_names = [f"{name}_{i}" for i in range(len(lab))]
    a.obsm["spatial"] = pos
    a.obs["cancer"] = pd.array(np.where(np.isnan(lab), np.nan, lab), dtype="Float32").astype("Int8")
    if with_image:
        a.uns["spatial"] = {name: {"images": {"hires": np.full((300, 340, 3), 200, np.uint8)},
                                   "scalefactors": {"tissue_hires_scalef": 0.5}}}
    return a


@pytest.fixture()
def run(tmp_path):
    slices = {"S1": _slice("S1", 1, with_image=True), "S2": _slice("S2", 2), "S3": _slice("S3", 3)}
    rng = np.random.default_rng(0)
    preds, rows = [], []
    for name, a in slices.items():
        lab = a.obs["cancer"].astype("Float32").to_numpy(dtype=float, na_value=np.nan)
        x = a.obsm["spatial"][:, 0]
        for seed in (0, 1):
            s = np.clip(np.where(x < 20 + 50 * 5, 0.8, 0.1) + rng.normal(0, 0.01, len(x)), 0, 1)
            if name == "S2":
                s[x >= 20 + 50 * 9] = 0.9                 # a confident cancer-like strip of labelled non-cancer
            if name == "S3":
                s[np.isclose(x, 20 + 50 * 8)] = 0.35      # a risky strip called non-cancer (0.35 < 0.5)
            thr = 0.5
            preds.append(pd.DataFrame({"slice": name, "spot": a.obs_names, "seed": seed, "score": s,
                                       "pred": (s >= thr).astype(int), "label": a.obs["cancer"].to_numpy()}))
            m = ~np.isnan(lab)
            rows.append({"slice": name, "seed": seed, "n": int(m.sum()), "n_pos": int(lab[m].sum()), "auc": 0.9,
                         "ap": 0.8, "f1": 0.7, "accuracy": 0.8, "sensitivity": 0.9, "specificity": 0.7,
                         "threshold": thr, "threshold_method": "quantile_beta", "val_threshold": 0.45,
                         "f1_val_threshold": 0.69})
    pd.concat(preds).to_csv(tmp_path / "predictions.csv", index=False)
    metrics = {"protocol": "loso", "experiment": "handmade", "config_hash": "abc", "undetermined": "excluded",
               "per_slice": rows, "mean": {"auc": 0.9, "ap": 0.8, "f1": 0.7}, "std": {"auc": 0.0, "ap": 0.0, "f1": 0.0},
               "folds": {n: {"train": [], "val": [], "test": [n]} for n in slices}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    cfg = {"name": "handmade", "data": {"sources": [{"reader": "synthetic", "n_slices": 3}]},
           "train": {"seeds": [0, 1]}, "track": {"mode": "disabled"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path, slices


def test_report_files_and_every_slice_image(run):
    d, slices = run
    out = write_report(d, slices=slices)
    page = out.read_text()
    assert out == d / "report.html" and page.startswith("<!DOCTYPE html>")
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/(?:png|jpeg);base64,([A-Za-z0-9+/=]+)"', page)
    alts = [a for a, _ in imgs]
    for s in slices:
        assert f"{s} {s}_maps" in alts and f"{s} {s}_curves" in alts
        assert f'id="slice-{s}"' in page
    for _, b64 in imgs:                               # real PNG / JPEG images, not links
        head = base64.b64decode(b64)[:8]
        assert head == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff"
    assert not [p for p in d.iterdir() if "report_files" in p.name]      # nothing beside the page
    srcs = re.findall(r'src="([^"]{0,30})', page)
    assert srcs and all(x.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for x in srcs)   # self-contained
    assert "<link" not in page and "<script" not in page
    assert "quantile_beta" in page and "handmade" in page and "boundary Dice" in page
    reg = pd.read_csv(d / "regions.csv", dtype={"spot": str})
    assert len(reg) == sum(a.n_obs for a in slices.values())
    assert set(reg["region"].dropna()) <= {"tumour", "boundary", "healthy", "high_risk"}
    hr = pd.read_csv(d / "high_risk.csv", dtype={"spot": str})
    assert list(hr.columns[:5]) == ["slice", "spot", "score", "spread", "nearest_tumour_distance"]
    # the planted risky strip of S3: called non-cancer, P = 0.35 >= risk level 0.25, 4 pitches from the tumour
    assert set(hr["slice"]) == {"S3"} and np.allclose(hr["nearest_tumour_distance"], 4.0)
    assert (hr["spread"] == 0).all() and len(hr) >= 5 and (hr["score"] == 0.35).all()
    assert "Calibration, prevalence and decisions" in page and "Tumour regions" in page
    tr = pd.read_csv(d / "tumour_regions.csv")
    assert set(tr["slice"]) == {"S1", "S2", "S3"} and (tr["size"] > 0).all()


def test_boundary_numbers_match_the_planted_interface(run):
    d, slices = run
    ra = analyse_run(d, slices=slices)
    bt = ra.boundary_table().set_index("slice")
    # S1/S3: scores follow the labels exactly, so predicted boundary == label boundary
    assert bt.loc["S1", "dice_ensemble"] == pytest.approx(1.0)
    assert bt.loc["S3", "dice_mean"] == pytest.approx(1.0)
    # S2: an extra predicted interface at x = 8|9 adds boundary spots the labels do not have
    assert bt.loc["S2", "dice_mean"] < 0.9
    s1 = ra.slices["S1"]
    assert s1.threshold == pytest.approx(0.5) and s1.runs.shape == (2, slices["S1"].n_obs)


def test_report_rejects_incomplete_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing predictions.csv"):
        write_report(tmp_path, slices={})


def test_report_cli_clear_error_on_non_run_dir(tmp_path):
    from typer.testing import CliRunner
    from spagraph.cli import app
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "not a finished run directory" in r.output
