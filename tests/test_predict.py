"""Saved model round trip and predict write-back, on hand-made slices (no real data, no embed module)."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from spagraph.experiment.config import validate_config
from spagraph.experiment.data import Fold
from spagraph.experiment.runner import model_settings, train_settings
from spagraph.graph import GraphSettings, build_slice_graph
from spagraph.train.fit import fit, predict_scores
from spagraph.train.saved import load_model, load_models, predict_slice, save_model, write_prediction

N_GENES = 12


class ToyGeneEncoder:
    """Stand-in for a fitted gene encoder: log1p + centring with training means + fixed projection."""

    def __init__(self, mean, proj):
        self.mean, self.proj = np.asarray(mean), np.asarray(proj)

    @classmethod
    def fit(cls, adatas):
        x = np.vstack([np.log1p(a.X.toarray()) for a in adatas])
        return cls(x.mean(0), np.random.default_rng(0).normal(size=(N_GENES, 6)))

    def transform(self, adata):
        return ((np.log1p(adata.X.toarray()) - self.mean) @ self.proj).astype(np.float32)

    def state_dict(self):
        return {"mean": torch.tensor(self.mean), "proj": torch.tensor(self.proj)}

    @classmethod
    def from_state_dict(cls, st):
        return cls(st["mean"].numpy(), st["proj"].numpy())


def toy_slice(seed, n=15):
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    pos = np.c_[xx.ravel(), yy.ravel()].astype(float) * 80.0
    lab = ((xx - n / 2) ** 2 + (yy - n / 2) ** 2 < (n / 3.5) ** 2).ravel()
    lam = np.ones((len(lab), N_GENES)) * 3
    lam[lab, :4] += 6
    a = ad.AnnData(sp.csr_matrix(rng.poisson(lam).astype(np.float32)))
    a.obs_names = [f"{i}x{j}" for i, j in zip(xx.ravel(), yy.ravel())]
    a.obsm["spatial"] = pos
    y = lab.astype(float); y[rng.choice(len(y), 5, replace=False)] = np.nan
    a.obs["cancer"] = pd.array(np.where(np.isnan(y), np.nan, y), dtype="Float32").astype("Int8")
    return a


@pytest.fixture(scope="module", params=["deep", "linear_prior", "feature_smoothing"])
def saved(tmp_path_factory, request):
    linear, knn = request.param != "deep", 4 if request.param == "feature_smoothing" else 0
    cfg = validate_config({"name": "toy", "data": {"sources": [{"reader": "synthetic", "n_slices": 3}]},
                           "embed": {"image_encoder": None, "gene_encoder": "pca"},
                           "graph": {"scales": [1.0, 2.0], "n_dir_bins": 4, "feature_knn": knn},
                           "model": {"hidden": 16, "heads": 2, "contrastive_weight": 0.0,
                                     "linear_path": linear, "feature_smoothing": 0.5 if knn else 0.0},
                           "train": {"epochs": 4, "min_epochs": 1, "seeds": [0]},
                           "threshold": {"method": "val_youden" if linear else "quantile_empirical"},
                           "track": {"mode": "disabled"}})
    slices = {n: toy_slice(i) for i, n in enumerate(["A", "B", "C"])}
    fold = Fold("C", ["A"], ["B"], ["C"])
    enc = ToyGeneEncoder.fit([slices["A"]])
    graphs = {}
    for n, a in slices.items():
        a.obsm["gene_emb"] = enc.transform(a)
        graphs[n] = build_slice_graph(a, GraphSettings(scales=[1.0, 2.0], n_dir_bins=4, feature_knn=knn), name=n)
    res = fit([graphs["A"]], [graphs["B"]], model_settings(cfg), train_settings(cfg), seed=0)
    d = tmp_path_factory.mktemp("models") / "C_s0"
    save_model(res.model, cfg, graphs, fold, d, gene_encoder=enc, seed=0)
    return d, res.model, graphs, slices


def test_saved_folder_and_identical_scores(saved):
    d, model, graphs, _ = saved
    for f in ("model.pt", "config.yaml", "meta.json", "val_scores.npy", "gene_encoder.pt"):
        assert (d / f).exists(), f
    m = load_model(d)
    assert m.meta["d_gene"] == 6 and m.meta["d_img"] == 0 and m.meta["fold"]["train"] == ["A"]
    assert len(m.val_scores) == graphs["B"].num_nodes and 0 <= m.val_threshold <= 1
    for g in graphs.values():
        np.testing.assert_array_equal(predict_scores(m.model, g), predict_scores(model, g))
    # the restored preprocessing transforms a new slice exactly like the original
    a = toy_slice(7)
    np.testing.assert_array_equal(m.gene_encoder.transform(a), ToyGeneEncoder.fit([saved[3]["A"]]).transform(a))
    assert len(load_models(d.parent)) == 1


def test_predict_write_back_keys_and_dtypes(saved, tmp_path):
    import anndata
    d = saved[0]
    a = toy_slice(11)
    res = predict_slice(load_models(d), a, name="new", n_mc=5)
    out, csv = write_prediction(a, res["table"], tmp_path / "pred.h5ad")
    b = anndata.read_h5ad(out)
    assert b.obs["spagraph_score"].dtype == np.float64 and b.obs["spagraph_score"].between(0, 1).all()
    assert b.obs["spagraph_pred"].dtype == np.int8 and set(b.obs["spagraph_pred"]) <= {0, 1}
    assert isinstance(b.obs["spagraph_region"].dtype, pd.CategoricalDtype)
    cats = list(b.obs["spagraph_region"].cat.categories)
    assert cats == [c for c in ["tumour", "boundary", "healthy", "high_risk"] if c in cats]      # order kept
    assert all((b.obs["spagraph_region"] == c).any() for c in cats)                              # none empty
    from spagraph.viz.spatial import REGION_COLOURS
    assert list(b.uns["spagraph_region_colors"]) == [REGION_COLOURS[c] for c in cats]
    assert b.obs["spagraph_uncertainty"].dtype == np.float64 and (b.obs["spagraph_uncertainty"] > 0).any()
    assert b.obs["spagraph_risk"].dtype == np.float64
    u = b.uns["spagraph"]
    m = load_model(d)
    assert u["config_hash"] == m.config_hash
    if m.meta["threshold_method"] == "val_youden":     # the saved validation Youden cut (calibrated scale), as is
        assert u["threshold_method"] in ("val_youden", "fallback:mixture", "fallback:prior_adjusted")
        if u["threshold_method"] == "val_youden":
            assert float(u["threshold"]) == pytest.approx(m.meta["decide"]["val_youden"])
    else:
        assert u["threshold_method"].startswith(("quantile", "fallback:"))
    # the two spreads, named apart: one member -> no seed spread; MC passes -> a dropout spread
    assert (b.obs["spagraph_seed_std"] == 0).all() and b.obs["spagraph_mc_std"].dtype == np.float64
    np.testing.assert_allclose(b.obs["spagraph_uncertainty"], np.hypot(b.obs["spagraph_seed_std"], b.obs["spagraph_mc_std"]))
    assert "spagraph_tumour_region" in b.obs and "size" in u["tumour_regions"]
    assert (b.obs["spagraph_tumour_region"] > 0).sum() == int(b.obs["spagraph_pred"].sum())
    assert 0 <= float(u["threshold"]) <= 1
    np.testing.assert_array_equal(b.obs["spagraph_pred"].to_numpy(), (b.obs["spagraph_score"] >= u["threshold"]).astype(int))
    t = pd.read_csv(csv)
    assert len(t) == a.n_obs and {"spot", "score", "pred", "region", "risk", "uncertainty"} <= set(t.columns)
    # deterministic: same call, same numbers
    res2 = predict_slice(load_models(d), toy_slice(11), name="new", n_mc=5)
    np.testing.assert_array_equal(res2["table"]["uncertainty"], res["table"]["uncertainty"])


def test_load_errors(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="not a saved spagraph model"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match=".h5ad"):
        write_prediction(toy_slice(0), pd.DataFrame(), tmp_path / "x.csv")


def test_saved_decision_state_and_overrides(saved):
    """The calibration saved with the model was fitted on the fold's validation slice only; the saved
    rule applies at predict time unless --threshold-method / --threshold override it."""
    from spagraph.decide.core import decide_rules
    from spagraph.train.saved import decision_state, saved_rule
    m = load_model(saved[0])
    dec = m.meta["decide"]
    assert dec["calibration"]["fitted_on"] == ["B"] and dec["rule"] == m.meta["threshold_method"]
    st = decision_state(m)
    grid = np.linspace(0.01, 0.99, 99)
    assert np.all(np.diff(st.calibration(grid)) >= 0)
    assert saved_rule(m) == m.meta["threshold_method"]
    assert saved_rule(m, "mixture") == "mixture" and saved_rule(m, "mixture", 0.3) == "fixed"
    with pytest.raises(ValueError, match="threshold method must be one of"):
        saved_rule(m, "bogus")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        saved_rule(m, None, 1.5)
    a = toy_slice(12)
    res = predict_slice([m], a, name="x", n_mc=0, threshold=0.3)
    assert res["threshold"] == pytest.approx(0.3) and res["threshold_method"] == "fixed"
    np.testing.assert_array_equal(res["table"]["pred"], (res["table"]["score"] >= 0.3).astype(int))
    res_m = predict_slice([m], toy_slice(12), name="x", n_mc=0, threshold_method="mixture")
    g = saved[2]["C"]
    from spagraph.train.fit import predict_scores
    from spagraph.experiment.runner import train_settings as _ts
    direct = decide_rules(predict_scores(m.model, g, _ts(m.cfg)), st, ["mixture"]).rules["mixture"]
    assert res_m["threshold_method"] in ("mixture", direct.used)


def test_saved_relative_calibration_round_trip(saved):
    """A model saved with the slice-relative calibration predicts through it (dropout passes too)."""
    from spagraph.decide.calibration import Calibration, fit_relative
    from spagraph.train.saved import decision_state
    m = load_model(saved[0])
    ts = train_settings(m.cfg)
    g = saved[2]["B"]
    cal = fit_relative([(g.y.numpy(), predict_scores(m.model, g, ts))], ["B"])
    assert cal.kind == "relative"
    m.meta["decide"] = {**m.meta["decide"], "calibration": cal.to_dict()}
    st = decision_state(m)
    assert st.calibration == Calibration.from_dict(cal.to_dict())
    a = toy_slice(13)
    res = predict_slice([m], a, name="x", n_mc=3)
    sc = res["table"]["score"].to_numpy()
    assert np.isfinite(sc).all() and (sc >= 0).all() and (sc <= 1).all()
    assert np.isfinite(res["table"]["mc_std"].to_numpy()).all()
    assert '"kind": "relative"' in res["adata"].uns["spagraph"]["calibration"]
    # the map acts on the slice's own relative log-odds: the same slice gives the same probabilities
    # whatever other slices were predicted before (no state carried between slices)
    res2 = predict_slice([m], toy_slice(13), name="x", n_mc=0)
    np.testing.assert_allclose(res2["table"]["score"].to_numpy(), sc)
