"""Synthetic slices: convention, determinism, speed, learnability, image and batch effects."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from spagraph.io.synthetic import make_synthetic_dataset, make_synthetic_slice


def _lib(a):
    return a.uns["spatial"][a.uns["spagraph_slice"]["library_id"]]


def test_convention_keys(synthetic_slice):
    a = synthetic_slice
    assert a.n_obs == 300 and a.obs_names.is_unique and a.var_names.is_unique
    assert a.X.format == "csr" and a.X.dtype == np.float32
    assert np.array_equal(a.X.data, np.round(a.X.data)) and (a.X.data >= 0).all()
    assert a.obsm["spatial"].dtype == np.float64 and a.obsm["spatial"].shape == (300, 2)
    assert a.obs["cancer"].dtype == "Int8"
    assert isinstance(a.obs["annotation"].dtype, pd.CategoricalDtype)
    ann = set(a.obs["annotation"].dropna())
    assert {"invasive cancer", "connective tissue"} <= ann
    canc = a.obs["annotation"].isin(["invasive cancer", "cancer in situ"]).to_numpy()
    und = (a.obs["annotation"] == "undetermined").to_numpy()
    assert (a.obs["cancer"][canc] == 1).all() and a.obs["cancer"][und].isna().all()
    assert (a.obs["cancer"][~canc & ~und] == 0).all()
    lib = _lib(a)
    img = lib["images"]["hires"]
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    sf = lib["scalefactors"]
    assert set(sf) >= {"tissue_hires_scalef", "tissue_lowres_scalef", "spot_diameter_fullres"}
    xy = a.obsm["spatial"] * sf["tissue_hires_scalef"]
    assert (xy >= 0).all() and (xy[:, 0] < img.shape[1]).all() and (xy[:, 1] < img.shape[0]).all()
    meta = a.uns["spagraph_slice"]
    assert meta["platform"] == "synthetic" and meta["has_image"] is True
    genes = set(a.var_names)
    assert {"ERBB2", "KRT19", "COL1A1", "PTPRC"} <= genes
    assert any(g.startswith("MT-") for g in genes) and any(g.startswith("RPL") for g in genes)
    assert any(g.startswith("GENE0") for g in genes)


def test_deterministic_and_seed_dependent():
    a = make_synthetic_slice(n_spots=200, seed=3)
    b = make_synthetic_slice(n_spots=200, seed=3)
    c = make_synthetic_slice(n_spots=200, seed=4)
    assert (a.X != b.X).nnz == 0 and np.array_equal(_lib(a)["images"]["hires"], _lib(b)["images"]["hires"])
    assert a.obs["annotation"].equals(b.obs["annotation"])
    assert (a.X != c.X).nnz > 0


@pytest.mark.parametrize("grid,n_nb", [("hex", 6), ("square", 4)])
def test_grid_geometry(grid, n_nb):
    a = make_synthetic_slice(n_spots=400, grid=grid, seed=1, with_image=False)
    xy = a.obsm["spatial"]
    d, _ = cKDTree(xy).query(xy, k=n_nb + 2)
    pitch = np.median(d[:, 1])
    interior = (np.abs(d[:, n_nb] - pitch) < 1e-6)                 # n_nb neighbours at exactly one pitch
    assert interior.mean() > 0.6
    assert (np.abs(d[interior, n_nb + 1] - pitch) > 1e-3).all()    # ... and no more
    assert a.uns["spagraph_slice"]["has_image"] is False and _lib(a)["images"] == {}


def test_counts_overdispersed_and_library_size_varies():
    a = make_synthetic_slice(n_spots=600, seed=2, with_image=False)
    X = a.X.toarray()
    lib = X.sum(1)
    assert lib.std() / lib.mean() > 0.3
    # negative binomial: variance well above the mean for expressed genes (within one region)
    conn = (a.obs["annotation"] == "connective tissue").to_numpy()
    Y = X[conn] / lib[conn, None] * lib[conn].mean()
    m, v = Y.mean(0), Y.var(0)
    hi = m > 5
    assert hi.sum() > 10 and np.median(v[hi] / m[hi]) > 2


def test_speed_2000_spots_with_image():
    t = time.perf_counter()
    a = make_synthetic_slice(n_spots=2000, seed=0)
    dt = time.perf_counter() - t
    assert a.n_obs == 2000
    assert dt < 5.0, f"2000-spot slice with image took {dt:.2f}s (target < 3 s on an idle machine)"


def _logcpm(a):
    X = a.X.toarray()
    return np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)


def test_labels_learnable_not_trivial_and_smoothing_helps():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    tr = make_synthetic_slice(n_spots=600, seed=11, with_image=False, n_tumours=2)
    te = make_synthetic_slice(n_spots=600, seed=12, with_image=False, n_tumours=2)
    ytr, yte = (s.obs["cancer"].to_numpy(dtype=float, na_value=np.nan) for s in (tr, te))
    mtr, mte = ~np.isnan(ytr), ~np.isnan(yte)
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(_logcpm(tr)[mtr], ytr[mtr])
    s = clf.predict_proba(_logcpm(te))[:, 1]
    auc = roc_auc_score(yte[mte], s[mte])
    assert 0.8 < auc < 0.985, auc
    nn = cKDTree(te.obsm["spatial"]).query(te.obsm["spatial"], k=7)[1]
    smooth = roc_auc_score(yte[mte], s[nn].mean(1)[mte])
    assert smooth > auc + 0.01, (auc, smooth)


def test_image_darker_in_tumour():
    a = make_synthetic_slice(n_spots=500, seed=5, n_tumours=2)
    img = _lib(a)["images"]["hires"].astype(float)
    sf = _lib(a)["scalefactors"]["tissue_hires_scalef"]
    r = int(0.5 * _lib(a)["scalefactors"]["spot_diameter_fullres"] * sf)
    xy = np.round(a.obsm["spatial"] * sf).astype(int)
    bright = np.array([img[y - r:y + r + 1, x - r:x + r + 1].mean() for x, y in xy])
    ann = a.obs["annotation"].astype(str).to_numpy()
    assert bright[ann == "invasive cancer"].mean() < bright[ann == "connective tissue"].mean() - 10
    # glass (near-white) outside the tissue
    assert img[0, 0].mean() > 230


def test_batch_effect():
    base = make_synthetic_slice(n_spots=300, seed=7)
    be = make_synthetic_slice(n_spots=300, seed=7, batch_effect={"gene_dropout": 0.3, "library_scale": 0.5,
                                                                  "stain_shift": 0.3})
    zero_b = np.asarray(base.X.sum(0)).ravel() == 0
    zero_e = np.asarray(be.X.sum(0)).ravel() == 0
    assert 0.2 < zero_e.mean() - zero_b.mean() < 0.4
    assert be.X.sum() < 0.6 * base.X.sum()
    ib, ie = (_lib(x)["images"]["hires"].reshape(-1, 3).astype(float).mean(0) for x in (base, be))
    assert np.abs(ib - ie).max() > 15
    assert base.obs["annotation"].equals(be.obs["annotation"])     # same tissue, shifted measurement


def test_dataset_and_bad_args():
    d = make_synthetic_dataset(3, seed=1, n_spots=120, with_image=False)
    assert list(d) == ["syn0", "syn1", "syn2"]
    assert [a.uns["spagraph_slice"]["library_id"] for a in d.values()] == list(d)
    assert not np.array_equal(d["syn0"].obs["cancer"].to_numpy(dtype=float, na_value=-1),
                              d["syn1"].obs["cancer"].to_numpy(dtype=float, na_value=-1))
    with pytest.raises(ValueError, match="grid"):
        make_synthetic_slice(grid="triangle")
    with pytest.raises(ValueError, match="n_spots"):
        make_synthetic_slice(n_spots=1)
