"""Tests aimed at faults that a hand-seeded mutation round showed the suite could not see.

Each test names the fault it catches; each was checked to fail with that fault put in by hand.
"""
from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = """\
name: blind
data:
  sources:
    - {reader: synthetic, n_slices: 4, n_spots: 120, seed: 21, with_image: false}
  train: [syn0, syn1]
  validate: [syn2]
  test: [syn3]
embed: {image_encoder: null, gene_encoder: %(enc)s, settings: {n_pcs: 6, n_hvg: 60}}
graph: {scales: [1.0, 2.0], n_dir_bins: 4%(knn)s}
model: {hidden: 8, heads: 2}
train: {epochs: %(epochs)d, patience: %(patience)d, min_epochs: 1, seeds: [0]}
protocol: {kind: fixed}
track: {mode: disabled}
"""


def config(tmp_path, enc="pca", knn="", epochs=2, patience=5, name="exp.yaml"):
    from spagraph.experiment.config import load_config
    p = tmp_path / name
    p.write_text(CFG % {"enc": enc, "knn": knn, "epochs": epochs, "patience": patience})
    return load_config(p)


# ------------------------------------------------------------------ fault: gene encoder fitted on the test slice too


@pytest.mark.parametrize("enc,knn", [("pca", ""), ("hvg", ""), ("pca", ", feature_knn: 4")])
def test_runner_test_slice_counts_never_touch_train_or_val_embeddings(tmp_path, enc, knn):
    """Changing only the test slice's counts leaves every training and validation embedding (and
    their expression-neighbour edges) bit-identical; the test slice's own embedding does change."""
    from spagraph.experiment.data import load_slices, plan_folds
    from spagraph.experiment.runner import embed_and_graph
    cfg = config(tmp_path, enc, knn)
    slices, groups = load_slices(cfg.data)
    fold = plan_folds(cfg, list(slices), groups)[0]
    g1, _ = embed_and_graph(cfg, {k: v.copy() for k, v in slices.items()}, fold)
    changed = {k: v.copy() for k, v in slices.items()}
    t = changed[fold.test[0]]
    rng = np.random.default_rng(0)
    X = np.asarray(t.X.toarray() if sp.issparse(t.X) else t.X)
    t.X = sp.csr_matrix((X * rng.integers(1, 5, X.shape) + rng.integers(0, 30, X.shape)).astype(np.float32))
    g2, _ = embed_and_graph(cfg, changed, fold)
    for n in fold.train + fold.val:
        assert torch.equal(g1[n].x_gene, g2[n].x_gene), f"{n}: its embedding depends on the test slice's counts"
        if knn:
            assert torch.equal(g1[n].edge_index_feat, g2[n].edge_index_feat)
    assert not torch.allclose(g1[fold.test[0]].x_gene, g2[fold.test[0]].x_gene)


# ------------------------------------------------------------------ fault: saved validation scores from the test slices


def test_saved_model_threshold_comes_from_validation_slices(tmp_path):
    """The saved val_scores.npy and threshold are the validation slice's scores (not the test
    slice's, not the training slices')."""
    from spagraph.experiment.data import load_slices, plan_folds
    from spagraph.experiment.runner import embed_and_graph, run_experiment, train_settings
    from spagraph.train.fit import predict_scores
    from spagraph.train.metrics import validation_thresholds
    from spagraph.train.saved import load_model
    cfg = config(tmp_path)
    run_experiment(cfg, tmp_path / "run", progress=False, write_maps=False, save_models=True)
    m = load_model(tmp_path / "run" / "models" / "fixed_s0")
    assert m.meta["fold"]["val"] == ["syn2"] and m.meta["fold"]["test"] == ["syn3"]
    slices, groups = load_slices(cfg.data)
    fold = plan_folds(cfg, list(slices), groups)[0]
    graphs, _ = embed_and_graph(cfg, slices, fold)
    ts = train_settings(cfg)
    by_slice = {n: predict_scores(m.model, graphs[n], ts) for n in fold.train + fold.val + fold.test}
    assert m.val_scores.shape == by_slice["syn2"].shape
    np.testing.assert_allclose(m.val_scores, by_slice["syn2"], rtol=0, atol=1e-6)
    for other in ("syn0", "syn1", "syn3"):
        assert not np.allclose(m.val_scores, by_slice[other], atol=1e-6), f"saved scores look like {other}'s"
    f1_thr, _ = validation_thresholds(graphs["syn2"].y.numpy(), by_slice["syn2"])
    assert m.meta["n_val_scores"] == graphs["syn2"].num_nodes
    if "decision" in m.meta:          # calibration state fitted on the validation slices only
        assert m.meta["decision"]["calibration"].get("fitted_on") in (["syn2"], None)
    else:
        assert m.val_threshold == pytest.approx(f1_thr)


# ------------------------------------------------------------------ fault: cross-attention ignores a modality's mask


def _tokens(n=10, t=3, h=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, t, h, generator=g), torch.randn(n, t, h, generator=g)


@pytest.mark.parametrize("missing", ["img", "gene"])
def test_cross_attention_respects_masks_in_both_directions(missing):
    """A spot without a modality: changing that modality's tokens changes nothing of its fused vector
    (gene<-image attention gated by the image mask, image<-gene by the gene mask)."""
    from spagraph.nn.fusion import CrossModalFusion
    torch.manual_seed(0)
    f = CrossModalFusion(8, heads=2, dropout=0.0).eval()
    img, gene = _tokens()
    m_img, m_gene = torch.ones(10), torch.ones(10)
    off = torch.tensor([1, 4, 7])
    (m_img if missing == "img" else m_gene)[off] = 0.0
    a = f(img, gene, m_img, m_gene)[0]
    img2, gene2 = img.clone(), gene.clone()
    (img2 if missing == "img" else gene2)[off] = torch.randn(3, 3, 8) * 50
    b = f(img2, gene2, m_img, m_gene)[0]
    assert torch.allclose(a[off], b[off], atol=1e-5), f"masked {missing} tokens leak into the fused vector"
    keep = torch.tensor([0, 2, 3])
    assert torch.allclose(a[keep], b[keep], atol=1e-5)      # attention stays within a spot
    m_all = torch.ones(10)
    c = f(img, gene, m_all, m_all)[0]
    d = f(img2, gene2, m_all, m_all)[0]
    assert not torch.allclose(c[off], d[off], atol=1e-3), "with the mask on, the tokens must matter (test can fail)"


def test_model_gene_mask_hides_gene_values():
    """The model-level twin of the image-mask test in test_nn: masked gene values do not matter."""
    from spagraph.graph import GraphSettings, build_slice_graph
    from spagraph.nn import ModelSettings, SpaGraphNet
    rng = np.random.default_rng(0)
    n = 100
    xx, yy = np.meshgrid(np.arange(10), np.arange(10))
    a = ad.AnnData(np.zeros((n, 2), np.float32))
    a.obsm["spatial"] = np.c_[xx.ravel(), yy.ravel()].astype(float) * 50
    a.obsm["gene_emb"] = rng.normal(size=(n, 6)).astype(np.float32)
    a.obsm["img_emb"] = rng.normal(size=(n, 4)).astype(np.float32)
    a.obs["cancer"] = pd.array(rng.integers(0, 2, n), dtype="Int8")
    g = build_slice_graph(a, GraphSettings(scales=[1.0, 2.0], n_dir_bins=8))
    torch.manual_seed(0)
    model = SpaGraphNet(4, 6, g.num_scales, g.n_dir_bins, ModelSettings()).eval()
    g.has_gene[:] = False
    x = model(g)["logit"]
    g.x_gene = torch.randn_like(g.x_gene) * 100
    y = model(g)["logit"]
    assert torch.allclose(x, y, atol=1e-5)
    g.has_gene[:] = True
    assert not torch.allclose(x, model(g)["logit"])


# ------------------------------------------------------------------ fault: spot pitch = max (or mean) NN distance


def jittered_layout(n=400, seed=0):
    """Irregular spots: a jittered grid with a few far outliers (max != median != mean)."""
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(n))
    xx, yy = np.meshgrid(np.arange(side), np.arange(side))
    pos = np.c_[xx.ravel(), yy.ravel()].astype(float) * 100 + rng.uniform(-25, 25, (side * side, 2))
    pos[:5] += 3000 + 700 * np.arange(5)[:, None]       # isolated spots far away
    return pos


def brute_median_nn(pos):
    d = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    nn = d.min(1)
    return float(np.median(nn)), float(nn.max()), float(nn.mean())


def test_spot_pitch_is_median_nn_distance_on_irregular_layout():
    from spagraph.graph import spot_pitch
    from spagraph.io._checks import check_positions
    pos = jittered_layout()
    med, mx, mean = brute_median_nn(pos)
    assert abs(mx - med) > 100 and abs(mean - med) > 5            # the layout tells them apart
    assert spot_pitch(pos) == pytest.approx(med, rel=1e-12)
    assert check_positions(pos, Path("x"), [str(i) for i in range(len(pos))]) == pytest.approx(med, rel=1e-12)


def test_graph_uses_median_pitch_on_irregular_layout():
    from spagraph.graph import GraphSettings, build_slice_graph
    pos = jittered_layout(seed=1)
    med = brute_median_nn(pos)[0]
    a = ad.AnnData(np.zeros((len(pos), 2), np.float32))
    a.obsm["spatial"] = pos
    a.obsm["gene_emb"] = np.zeros((len(pos), 3), np.float32)
    g = build_slice_graph(a, GraphSettings(scales=[1.0], n_dir_bins=4))
    assert float(g.pitch) == pytest.approx(med, rel=1e-9)
    deg = np.bincount(g.edge_index_0[1].numpy() if hasattr(g, "edge_index_0") else g.edge_index_1[1].numpy(),
                      minlength=len(pos))
    assert np.median(deg) <= 8, "scale 1 must link roughly the nearest ring, not everything within the largest gap"


# ------------------------------------------------------------------ fault: undetermined validation spots counted as 0


def test_nan_validation_labels_are_ignored_when_choosing_thresholds():
    from spagraph.decide.core import fit_state
    from spagraph.train.metrics import validation_thresholds
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.4).astype(float)
    s = np.clip(0.35 * y + rng.normal(0.35, 0.15, 400), 0, 1)
    und = rng.random(400) < 0.3
    s[und] = np.clip(s[und] + 0.4, 0, 1)           # undetermined spots score high (ambiguous tissue)
    y_nan = np.where(und, np.nan, y)
    lab = ~und
    assert validation_thresholds(y_nan, s) == validation_thresholds(y[lab], s[lab])
    as_zero = validation_thresholds(np.nan_to_num(y_nan), s)
    assert as_zero != validation_thresholds(y[lab], s[lab]), "the data must tell NaN-as-0 apart (test can fail)"
    for kind in ("platt", "identity"):
        a, b = fit_state(y_nan, s, kind=kind), fit_state(y[lab], s[lab], kind=kind)
        assert (a.val_f1, a.val_youden) == pytest.approx((b.val_f1, b.val_youden))
        assert a.calibration.to_dict() == b.calibration.to_dict() or kind == "identity"


# ------------------------------------------------------------------ fault: bench reuses an entry run with another config


def test_suite_does_not_reuse_an_entry_run_with_another_config(tmp_path, monkeypatch):
    import spagraph.experiment.runner as runner
    from spagraph.bench.suite import run_suite
    from spagraph.experiment.config import load_config
    (tmp_path / "exp.yaml").write_text(CFG % {"enc": "pca", "knn": "", "epochs": 1, "patience": 5})
    calls = []
    real = runner.run_experiment

    def counting(cfg, *a, **k):
        calls.append(cfg.config_hash())
        return real(cfg, *a, **k)
    monkeypatch.setattr(runner, "run_experiment", counting)
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\nentries:\n  - {name: a, experiment: exp.yaml, set: [model.hidden=8]}\n")
    run_suite(suite, tmp_path / "out")
    run_suite(suite, tmp_path / "out")
    assert len(calls) == 1, "the same config must be reused"
    suite.write_text("name: s\nentries:\n  - {name: a, experiment: exp.yaml, set: [model.hidden=16]}\n")
    run_suite(suite, tmp_path / "out")
    new = load_config(tmp_path / "exp.yaml", ["model.hidden=16"]).config_hash()
    assert calls[-1] == new and len(calls) == 2, "another config must run again, not reuse the old entry"
    m = json.loads((tmp_path / "out" / "a" / "metrics.json").read_text())
    assert m["config_hash"] == new


# ------------------------------------------------------------------ fault: resume when the crash hits the early-stop epoch


class Crash(BaseException):
    pass


def test_resume_when_crash_lands_on_the_early_stop_epoch(tmp_path):
    """Crash right after the epoch at which early stopping fires (its checkpoint written), resume:
    the result equals the uninterrupted run (no extra epochs, same best epoch, same predictions)."""
    from spagraph.experiment.runner import run_experiment
    cfg = config(tmp_path, epochs=40, patience=1)
    seen = []
    run_experiment(cfg, tmp_path / "ref", progress=False, write_maps=False,
                   on_epoch=lambda f, s, e, r: seen.append(e))
    stop = max(seen)
    if stop >= 39:
        pytest.skip("early stopping did not fire on this tiny problem")

    def crash(fold, s, epoch, rec):
        if epoch == stop:
            raise Crash()
    with pytest.raises(Crash):
        run_experiment(cfg, tmp_path / "run", progress=False, write_maps=False, on_epoch=crash)
    resumed = []
    run_experiment(cfg, tmp_path / "run", resume=True, progress=False, write_maps=False,
                   on_epoch=lambda f, s, e, r: resumed.append(e))
    assert all(e <= stop for e in resumed), f"resume trained past the early-stop epoch {stop}: {resumed}"
    a = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    b = json.loads((tmp_path / "run" / "metrics.json").read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if "time" not in k} for r in rows]  # noqa: E731
    assert strip(a["per_slice"]) == strip(b["per_slice"])
    assert (tmp_path / "ref" / "predictions.csv").read_bytes() == (tmp_path / "run" / "predictions.csv").read_bytes()


def test_resume_after_a_crash_before_min_epochs_trains_on_to_min_epochs(tmp_path, monkeypatch):
    """Patience already used up but ``min_epochs`` not reached when the run crashes: the resumed
    run trains the remaining epochs like the uninterrupted one (a mutant that asked the stopping
    rule about the epoch after the checkpoint, ``start_epoch - 0``, stopped it one epoch short)."""
    import spagraph.train.fit as fit_mod
    from spagraph.experiment.config import load_config
    from spagraph.experiment.runner import run_experiment
    monkeypatch.setattr(fit_mod, "validation_auc", lambda *a, **k: 0.5)   # no epoch ever gains
    p = tmp_path / "exp.yaml"
    p.write_text((CFG % {"enc": "pca", "knn": "", "epochs": 10, "patience": 1}).replace("min_epochs: 1",
                                                                                        "min_epochs: 4"))
    cfg = load_config(p)
    seen = []
    run_experiment(cfg, tmp_path / "ref", progress=False, write_maps=False,
                   on_epoch=lambda f, s, e, r: seen.append(e))
    assert max(seen) == 3, f"patience 1, min_epochs 4, flat AUC: stops after epoch 3, got {seen}"

    def crash(fold, s, epoch, rec):
        if epoch == 2:
            raise Crash()
    with pytest.raises(Crash):
        run_experiment(cfg, tmp_path / "run", progress=False, write_maps=False, on_epoch=crash)
    resumed = []
    run_experiment(cfg, tmp_path / "run", resume=True, progress=False, write_maps=False,
                   on_epoch=lambda f, s, e, r: resumed.append(e))
    assert resumed == [3], f"resumed after epoch 2 should train epoch 3 only, trained {resumed}"


# ------------------------------------------------------------------ survivors of the sampled mutation run (handcrafted)


def test_weighted_mean_std_matches_numpy():
    """Stain-channel mean / std per patch under a tissue weight (a `-` -> `/` mutant survived)."""
    from spagraph.embed.handcrafted import _weighted_mean_std
    rng = np.random.default_rng(4)
    v = rng.normal(2.0, 1.5, (5, 50))
    w = (rng.random((5, 50)) < 0.7).astype(float)
    mu, sd = _weighted_mean_std(v, w)
    for k in range(5):
        m = np.average(v[k], weights=w[k])
        assert mu[k] == pytest.approx(m, rel=1e-12)
        assert sd[k] == pytest.approx(np.sqrt(np.average((v[k] - m) ** 2, weights=w[k])), rel=1e-12)


def test_glcm_energy_and_correlation_match_skimage_on_the_pooled_matrix():
    """The two GLCM properties test_embed_image does not check (a `*` -> `**` mutant survived)."""
    from skimage.feature import graycomatrix, graycoprops
    from spagraph.embed.handcrafted import _glcm_props
    q = np.random.default_rng(5).integers(0, 8, (3, 20, 20))
    q[1] = np.minimum(q[1], np.arange(20)[None, :] // 3)        # some structure: correlation away from 0
    mine = _glcm_props(q, 8)
    for k in range(3):
        m = graycomatrix(q[k].astype(np.uint8), [1], [0, np.pi / 2], levels=8, symmetric=True, normed=False)
        pooled = m.sum(axis=3, keepdims=True).astype(float)
        pooled /= pooled.sum()
        assert mine[2, k] == pytest.approx(graycoprops(pooled, "energy")[0, 0], rel=1e-6)
        assert mine[3, k] == pytest.approx(graycoprops(pooled, "correlation")[0, 0], rel=1e-6)


def test_slice_hash_reads_the_full_resolution_image_file(tmp_path):
    """The embedding cache key covers the bytes of the image file a slice names (a mutant that
    hashed nothing of the file survived: an edited image would reuse stale image embeddings)."""
    from spagraph.embed.cache import slice_hash
    from spagraph.io.synthetic import make_synthetic_slice
    a = make_synthetic_slice(n_spots=50, with_image=False, seed=2)
    p1, p2 = tmp_path / "a.png", tmp_path / "b.png"
    p1.write_bytes(b"\x89PNG" + bytes(range(200)))
    p2.write_bytes(b"\x89PNG" + bytes(range(199)) + b"\x00")
    a.uns["spagraph_slice"]["image_path"] = str(p1)
    h1 = slice_hash(a)
    assert slice_hash(a) == h1
    a.uns["spagraph_slice"]["image_path"] = str(p2)
    assert slice_hash(a) != h1, "a different image file must give a different cache key"


# ------------------------------------------------------------------ survivor of the sampled mutation run (batch mode)


@pytest.mark.parametrize("mode, max_full, tiled", [("full", 10, False), ("auto", 1000, False),
                                                    ("auto", 10, True), ("tiles", 1000, True)])
def test_batch_mode_decides_whether_a_slice_is_cut_into_tiles(monkeypatch, mode, max_full, tiled):
    """``train.batch_mode``: full = whole graph, tiles = tiles, auto = tiles only above
    ``max_full_nodes`` (a `==` -> `!=` mutant that tiled every full/auto slice and never a tiles one
    survived: tiled scores equal full-graph scores, so only the route itself shows it)."""
    import spagraph.train.fit as fit_mod
    from spagraph.graph import GraphSettings, build_slice_graph
    from spagraph.nn import ModelSettings, SpaGraphNet
    rng = np.random.default_rng(1)
    xx, yy = np.meshgrid(np.arange(10), np.arange(10))
    a = ad.AnnData(np.zeros((100, 2), np.float32))
    a.obsm["spatial"] = np.c_[xx.ravel(), yy.ravel()].astype(float) * 50
    a.obsm["gene_emb"] = rng.normal(size=(100, 6)).astype(np.float32)
    a.obs["cancer"] = pd.array(rng.integers(0, 2, 100), dtype="Int8")
    g = build_slice_graph(a, GraphSettings(scales=[1.0], n_dir_bins=4))
    torch.manual_seed(0)
    model = SpaGraphNet(0, 6, g.num_scales, g.n_dir_bins, ModelSettings()).eval()
    calls = []
    real = fit_mod.iter_tiles
    monkeypatch.setattr(fit_mod, "iter_tiles", lambda *a, **k: calls.append(1) or real(*a, **k))
    s = fit_mod.TrainSettings(batch_mode=mode, max_full_nodes=max_full, tile_size=4.0)
    p = fit_mod.predict_scores(model, g, s)
    assert p.shape == (100,) and np.isfinite(p).all()
    assert bool(calls) is tiled, f"batch_mode={mode}, max_full_nodes={max_full}: tiled={bool(calls)}"
