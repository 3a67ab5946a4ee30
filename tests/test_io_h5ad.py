"""read_h5ad: a slice written by anndata reads back with the same keys, dtypes and values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spagraph.io import read_h5ad, read_slice


def test_h5ad_round_trip(tmp_path, synthetic_slice):
    a = synthetic_slice
    p = tmp_path / "syn.h5ad"
    a.write_h5ad(p)
    b = read_h5ad(p)
    assert list(b.obs_names) == list(a.obs_names) and list(b.var_names) == list(a.var_names)
    assert sp.issparse(b.X) and (b.X != a.X).nnz == 0
    assert np.array_equal(b.obsm["spatial"], a.obsm["spatial"])
    assert str(b.obs["cancer"].dtype) == "Int8"
    assert b.obs["cancer"].isna().sum() == a.obs["cancer"].isna().sum() > 0
    assert (b.obs["cancer"].fillna(-1) == a.obs["cancer"].fillna(-1)).all()
    lib = a.uns["spagraph_slice"]["library_id"]
    assert np.array_equal(b.uns["spatial"][lib]["images"]["hires"], a.uns["spatial"][lib]["images"]["hires"])
    assert b.uns["spatial"][lib]["scalefactors"]["tissue_hires_scalef"] == \
        pytest.approx(a.uns["spatial"][lib]["scalefactors"]["tissue_hires_scalef"])
    assert b.uns["spagraph_slice"]["platform"] == "synthetic"
    # read_slice dispatches on the suffix
    assert read_slice(p).n_obs == a.n_obs


def test_h5ad_float_cancer_column_becomes_int8(tmp_path, synthetic_slice):
    a = synthetic_slice
    a.obs["cancer"] = a.obs["cancer"].astype("Float32").to_numpy(dtype=float, na_value=np.nan)
    p = tmp_path / "f.h5ad"
    a.write_h5ad(p)
    b = read_h5ad(p)
    assert str(b.obs["cancer"].dtype) == "Int8"
    assert b.obs["cancer"].isna().sum() == int(np.isnan(a.obs["cancer"]).sum())


def test_h5ad_without_spatial_is_named(tmp_path, synthetic_slice):
    a = synthetic_slice
    del a.obsm["spatial"]
    p = tmp_path / "nospatial.h5ad"
    a.write_h5ad(p)
    with pytest.raises(ValueError, match=r"nospatial.h5ad: obsm\['spatial'\].*missing"):
        read_h5ad(p)
