"""The new-slide workflow: protocol fit, --save-model, predict on many slices, gene mismatch,
Python API (spagraph.tl / pl / load_model), output conventions. Tiny synthetic slices."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import spagraph
from spagraph.cli import app
from spagraph.experiment.config import validate_config
from spagraph.experiment.data import plan_folds
from spagraph.io.synthetic import make_synthetic_dataset

CFG = {"name": "tiny_fit",
       "data": {"sources": [{"reader": "synthetic", "n_slices": 3, "n_spots": 150, "seed": 0, "with_image": False}]},
       "embed": {"image_encoder": None, "gene_encoder": "pca", "settings": {"n_pcs": 8, "n_hvg": 200}},
       "graph": {"scales": [1.0, 2.0], "n_dir_bins": 4},
       "model": {"hidden": 16, "heads": 2, "contrastive_weight": 0.0},
       "train": {"epochs": 3, "min_epochs": 1, "seeds": [0]},
       "protocol": {"kind": "fit"}, "threshold": {"method": "val_youden"}, "track": {"mode": "disabled"}}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """spagraph.tl.fit on 3 synthetic slices (2 train + 1 whole validation slice), saved."""
    slices = make_synthetic_dataset(3, seed=0, n_spots=150, with_image=False)
    before = {k: (sorted(a.obsm), sorted(a.uns), sorted(a.obs.columns)) for k, a in slices.items()}
    model = spagraph.tl.fit(slices, CFG, out=tmp_path_factory.mktemp("fit"))
    model.inputs_changed = {k: (sorted(a.obsm), sorted(a.uns), sorted(a.obs.columns)) != before[k]
                            for k, a in slices.items()}
    saved = model.save(tmp_path_factory.mktemp("m") / "model")
    new = make_synthetic_dataset(2, seed=7, n_spots=150, with_image=False, prefix="new")
    return model, saved, new


def _scores(model, adata, **kw):
    b = model.predict(adata, copy=True, n_mc=0, **kw)
    return b.obs["spagraph_score"].to_numpy(), b


def test_fit_protocol_folds():
    cfg = validate_config(CFG)
    (f,) = plan_folds(cfg, ["a", "b", "c", "d"], {})
    assert (f.train, f.val, f.test) == (["a", "b", "c"], ["d"], [])
    cfg2 = validate_config({**CFG, "protocol": {"kind": "fit", "n_val": 2}})
    assert plan_folds(cfg2, ["a", "b", "c", "d"], {})[0].val == ["c", "d"]
    with pytest.raises(ValueError, match="at least 2 slices"):
        plan_folds(cfg, ["a"], {})


def test_fit_reports_validation_and_saves_a_self_sufficient_folder(fitted):
    model, saved, _ = fitted
    m = model.metrics
    assert m["protocol"] == "fit" and m["evaluated_on"].startswith("validation")
    assert [r["slice"] for r in m["per_slice"]] == ["syn2"] and m["per_slice"][0]["role"] == "validation"
    member = saved / "s0"
    for f in ("model.pt", "config.yaml", "meta.json", "val_scores.npy", "gene_encoder.pt", "model_card.md"):
        assert (member / f).is_file(), f
    assert (saved / "model_card.md").is_file()
    meta = json.loads((member / "meta.json").read_text())
    assert meta["fold"] == {"name": "fit", "train": ["syn0", "syn1"], "val": ["syn2"], "test": []}
    assert {"torch", "torch_geometric", "scanpy", "anndata", "spagraph"} <= set(meta["versions"])
    st = torch.load(member / "gene_encoder.pt", weights_only=True)      # plain tensors / lists only
    assert st["kind"] == "pca" and isinstance(st["components"], (torch.Tensor, list)) and len(st["genes"]) == 200
    card = (member / "model_card.md").read_text()
    assert "syn0, syn1" in card and "syn2" in card and "validation" in card


def test_fit_leaves_the_callers_anndata_untouched(fitted):
    model, _, _ = fitted
    assert model.inputs_changed and not any(model.inputs_changed.values())


def test_save_load_identical_scores_api(fitted):
    model, saved, new = fitted
    a = new["new0"]
    s1, b = _scores(model, a)
    s2, _ = _scores(spagraph.load_model(saved), a)
    np.testing.assert_array_equal(s1, s2)
    assert "spagraph_score" not in a.obs            # copy=True leaves the input alone
    assert model.predict(a, n_mc=0) is None and "spagraph_score" in a.obs     # in place by default
    cats = list(b.obs["spagraph_region"].cat.categories)
    assert all((b.obs["spagraph_region"] == c).any() for c in cats)          # no empty categories
    from spagraph.viz.spatial import REGION_COLOURS
    assert list(b.uns["spagraph_region_colors"]) == [REGION_COLOURS[c] for c in cats]


def test_cli_predict_many_equals_api(fitted, tmp_path):
    model, saved, new = fitted
    paths = []
    for n, a in new.items():
        p = tmp_path / f"{n}.h5ad"
        a.write_h5ad(p)
        paths.append(str(p))
    out = tmp_path / "pred"
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = CliRunner().invoke(app, ["predict", str(saved), *paths, "--out", str(out), "--mc-passes", "0", "--no-plot",
                                     "--threads", "1"])
        assert torch.get_num_threads() == 1        # --threads pins torch's CPU threads, as `run --threads` does
    finally:
        torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    summ = pd.read_csv(out / "summary.csv")
    assert list(summ["slice"]) == ["new0", "new1"]
    for n, a in new.items():
        assert (out / f"{n}.h5ad").is_file() and (out / f"{n}.csv").is_file()
        import anndata
        h = anndata.read_h5ad(out / f"{n}.h5ad")
        np.testing.assert_array_equal(h.obs["spagraph_score"].to_numpy(), _scores(model, a)[0])
        t = pd.read_csv(out / f"{n}.csv", float_precision="round_trip")
        np.testing.assert_array_equal(t["score"].to_numpy(), h.obs["spagraph_score"].to_numpy())
    assert "new0" in r.output and "thresh" in r.output
    assert max(len(line) for line in r.output.splitlines() if line.startswith(("slice", "new")) and "->" not in line) <= 80
    # one slice to one .h5ad still works, with the CSV and the PNG next to it
    r = CliRunner().invoke(app, ["predict", str(saved), paths[0], "--out", str(tmp_path / "one.h5ad"), "--mc-passes", "0"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "one.h5ad").is_file() and (tmp_path / "one.csv").is_file() and (tmp_path / "one.png").is_file()
    r = CliRunner().invoke(app, ["predict", str(saved), *paths, "--out", str(tmp_path / "two.h5ad")])
    assert r.exit_code != 0 and "pass a folder" in r.output


def _renamed(a, mapping):
    b = a.copy()
    b.var_names = [mapping.get(g, g) for g in b.var_names]
    return b


def test_gene_case_and_alias_match_give_identical_scores(fitted, tmp_path):
    model, _, new = fitted
    a = new["new1"]
    ref, _ = _scores(model, a)
    genes = model.genes[:20]
    case = _renamed(a, {g: g.lower() for g in genes})
    s, b = _scores(model, case)
    np.testing.assert_array_equal(s, ref)
    assert b.uns["spagraph"]["genes"]["n_case_insensitive"] == 20 and b.uns["spagraph"]["genes"]["n_missing"] == 0
    alias = _renamed(a, {g: f"OLD{i}" for i, g in enumerate(genes[:5])})
    csv = tmp_path / "aliases.csv"
    csv.write_text("alias,symbol\n" + "".join(f"OLD{i},{g}\n" for i, g in enumerate(genes[:5])))
    s, b = _scores(model, alias, gene_aliases=csv)
    np.testing.assert_array_equal(s, ref)
    assert b.uns["spagraph"]["genes"]["n_alias"] == 5
    s, b = _scores(model, alias)                            # without the table: 5 missing, filled
    assert b.uns["spagraph"]["genes"]["n_missing"] == 5
    assert not np.array_equal(s, ref)


def test_missing_genes_filled_reported_and_refused(fitted):
    model, _, new = fitted
    a = new["new1"]
    ref, _ = _scores(model, a)
    enc = model.members[0].gene_encoder
    w = enc.gene_weights()
    drop = model.genes[::10]                                # 10% of the genes
    keep = [g for g in a.var_names if g not in set(drop)]
    s, b = _scores(model, a[:, keep].copy())
    g = b.uns["spagraph"]["genes"]
    share = sum(w[x] for x in drop) / sum(w.values())
    assert g["n_missing"] == len(drop) and g["missing_weight_share"] == pytest.approx(share, abs=1e-5)
    assert set(g["missing_examples"]) <= set(drop) and len(g["missing_examples"]) > 0
    assert np.corrcoef(s, ref)[0, 1] > 0.5                  # filled with the training mean, not zeros
    # the filled value is the training mean in standardised space: the embedding equals the one
    # from a slice whose missing genes sit exactly at the training mean after scaling
    emb = enc.transform(a[:, keep].copy(), fill_missing=True)
    assert emb.shape == (a.n_obs, enc.dim) and np.isfinite(emb).all()
    with pytest.raises(ValueError, match=r"missing.*limit 1%.*e\.g\."):
        model.predict(a[:, keep].copy(), copy=True, n_mc=0, max_missing_weight=0.01)
    heavy = sorted(w, key=w.get, reverse=True)[: len(w) // 2]
    with pytest.raises(ValueError, match=heavy[0]):
        model.predict(a[:, [x for x in a.var_names if x not in set(heavy)]].copy(), copy=True, n_mc=0)


def test_pl_regions_draws(fitted, tmp_path):
    model, _, new = fitted
    _, b = _scores(model, new["new0"])
    p = spagraph.pl.regions(b, tmp_path / "r.png")
    assert p.is_file() and p.stat().st_size > 1000


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_respect_umask(tmp_path, mask):
    from spagraph.utils import atomic_dir, atomic_write_text
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "inner").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask


def test_import_is_lazy_and_quiet_and_version():
    code = ("import sys, warnings; warnings.simplefilter('always'); import spagraph; "
            "assert 'torch' not in sys.modules, 'torch imported eagerly'; "
            "assert spagraph.io.read_slice and spagraph.tl.fit and spagraph.pl.regions and spagraph.load_model; "
            "import spagraph.train.fit")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(spagraph.__file__).parents[1])})
    assert r.returncode == 0, r.stderr
    assert "jit.script" not in r.stderr and "FutureWarning" not in r.stderr, r.stderr
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"spagraph {spagraph.__version__}"


def test_relative_paths_resolve_against_yaml_folder_and_errors_name_them(tmp_path, monkeypatch):
    from spagraph.experiment.data import resolve_path
    (tmp_path / "cfg" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_path("data", tmp_path / "cfg") == tmp_path / "cfg" / "data"
    with pytest.raises(FileNotFoundError) as e:
        resolve_path("nope", tmp_path / "cfg")
    assert str(tmp_path / "cfg" / "nope") in str(e.value) and str(tmp_path / "nope") in str(e.value)


def test_cli_run_save_model_then_predict_gives_the_run_scores(tmp_path):
    """spagraph run --save-model (protocol fit) -> spagraph predict on the validation slice: the
    loaded model reproduces the run's own scores for that slice exactly."""
    import yaml
    from spagraph.experiment.runner import model_path
    cfg = dict(CFG, data={"sources": [{"reader": "synthetic", "n_slices": 3, "n_spots": 120, "seed": 3,
                                       "with_image": False}]})
    y = tmp_path / "fit.yaml"
    y.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["run", str(y), "--save-model", "--out", str(tmp_path / "run"), "--no-progress",
                                 "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "validation" in r.output
    assert (tmp_path / "run" / "model" / "s0" / "meta.json").is_file()
    assert model_path(tmp_path, validate_config({**CFG, "protocol": {"kind": "loso"}}),
                      plan_folds(validate_config({**CFG, "protocol": {"kind": "loso"}}), ["a", "b", "c"], {})[0],
                      2) == tmp_path / "models" / "a_s2"
    pred = pd.read_csv(tmp_path / "run" / "predictions.csv", float_precision="round_trip", dtype={"spot": str})
    assert set(pred["slice"]) == {"syn2"}
    val = make_synthetic_dataset(3, seed=3, n_spots=120, with_image=False)["syn2"]
    val.write_h5ad(tmp_path / "syn2.h5ad")
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "run" / "model"), str(tmp_path / "syn2.h5ad"),
                                 "--out", str(tmp_path / "p"), "--mc-passes", "0", "--no-plot"])
    assert r.exit_code == 0, r.output
    t = pd.read_csv(tmp_path / "p" / "syn2.csv", float_precision="round_trip", dtype={"spot": str})
    np.testing.assert_array_equal(t.set_index("spot").loc[pred["spot"], "score"].to_numpy(), pred["score"].to_numpy())


def test_map_has_plain_he_panel_scale_bar_threshold_title_and_lossless_png(tmp_path):
    import io
    import matplotlib
    matplotlib.use("Agg")
    from PIL import Image
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
    from spagraph.viz.spatial import plot_slice_panels, shrink_png
    xx, yy = np.meshgrid(np.arange(12), np.arange(10))
    pos = np.c_[xx.ravel() * 200.0 + 100, yy.ravel() * 200.0 + 100]        # full-res px, pitch 200 px
    img = np.full((2200, 2600, 3), 230, np.uint8)
    score = np.linspace(0, 1, len(pos))
    fig = plot_slice_panels(pos, None, score=score, regions=np.where(score > 0.5, "tumour", "healthy"),
                            image=img, image_scale=0.5, platform="legacy_st", threshold=0.5,
                            threshold_method="quantile_beta", title="S")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "H&E" and not fig.axes[0].collections                # plain H&E: no spots
    assert "threshold 0.500 (quantile_beta)" in fig._suptitle.get_text()
    bars = [a for ax in fig.axes for a in ax.artists if isinstance(a, AnchoredSizeBar)]
    assert bars and all("mm" in b.txt_label.get_text() or "µm" in b.txt_label.get_text() for b in bars)
    fig2 = plot_slice_panels(pos, None, score=score, platform="visium")
    import matplotlib.pyplot as plt
    plt.close(fig); plt.close(fig2)
    p = plot_slice_panels(pos, tmp_path / "m.png", score=score, image=img, image_scale=0.5, platform="legacy_st")
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (10, 200, 30)).save(buf, format="PNG")
    raw = buf.getvalue()
    small = shrink_png(raw)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(small)).convert("RGB")),
                          np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")))
    assert p.stat().st_size > 0 and oct(p.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_run_summary_fits_80_columns_without_cutting_digits(fitted):
    from rich.console import Console
    from spagraph.experiment.progress import summary_table
    m = dict(fitted[0].metrics)
    m["per_slice"] = [dict(r, slice="a_very_long_slice_name_indeed") for r in m["per_slice"]]
    con = Console(width=80, record=True, file=open(os.devnull, "w"))
    con.print(summary_table(m))
    text = con.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for k in ("auc", "f1", "sensitivity", "specificity", "f1_mixture"):
        assert f"{m['mean'][k]:.3f}" in text, k              # every number whole
    assert "a_very_lo…" in text                              # names shortened instead


def test_guard_flags_column_tolerates_rows_from_before_the_guard():
    """Rows of a resumed run written before the guard existed carry no flags (NaN in the frame)."""
    from spagraph.experiment.progress import _flags
    df = pd.DataFrame([{"threshold_method": "mixture", "flags": ["degenerate"]}, {"threshold_method": "fixed"}])
    assert _flags(df) == "DEGENERATE x1 -> mixture"
    assert _flags(pd.DataFrame([{"flags": ["extreme_quantile"]}, {"threshold_method": "fixed"}])) == "1 noted"
