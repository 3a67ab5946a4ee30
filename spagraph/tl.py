"""Tools, scanpy style: train a model on annotated slices, save it, load it, predict new slices.

::

    import spagraph
    model = spagraph.tl.fit({"A1": a1, "B1": b1, "C1": c1}, "experiments/her2st_fit.yaml")
    model.save("my_model")
    model = spagraph.load_model("my_model")
    model.predict(new_adata)                 # writes obs["spagraph_*"] and uns["spagraph"] in place
    spagraph.pl.regions(new_adata)

``spagraph run X.yaml --save-model`` and ``spagraph predict`` call the same functions
(:func:`spagraph.experiment.runner.run_experiment`, :func:`spagraph.train.saved.predict_slice`).
"""
from __future__ import annotations

import copy

import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["Model", "fit", "load_model", "as_config"]


def as_config(config: Any, overrides: list[str] | None = None):
    """An :class:`~spagraph.experiment.config.ExperimentConfig` from itself, a dict or a YAML path
    (validated once here). A dict without ``data`` gets a placeholder (the slices are given in memory)."""
    from spagraph.experiment.config import ExperimentConfig, load_config, validate_config
    if isinstance(config, ExperimentConfig):
        return config if not overrides else validate_config(_apply(config.to_dict(), overrides))
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    if isinstance(config, dict):
        d = dict(config)
        d.setdefault("data", {"sources": [{"reader": "h5ad", "path": "<in memory>"}]})
        return validate_config(_apply(d, overrides) if overrides else d)
    raise TypeError(f"config must be an ExperimentConfig, a dict or a path to a YAML, got {type(config).__name__}")


def _apply(d: dict, overrides):
    from spagraph.experiment.config import _apply_set, parse_set
    return _apply_set(d, parse_set(overrides), {})


def _named(adatas) -> dict:
    if isinstance(adatas, dict):
        if not adatas:
            raise ValueError("fit: no slices given")
        return {str(k): v for k, v in adatas.items()}
    out = {}
    for i, a in enumerate(list(adatas)):
        name = str((a.uns.get("spagraph_slice", {}) or {}).get("library_id") or f"slice{i}")
        if name in out:
            name = f"{name}_{i}"
        out[name] = a
    if not out:
        raise ValueError("fit: no slices given")
    return out


def _shallow(a):
    """A new AnnData over the same count matrix (not copied: nothing writes X) with its own
    obs / obsm / uns, so the embeddings the run adds (``obsm["gene_emb"]``, ``uns["spagraph_embed"]``)
    land there and not in the caller's object."""
    import anndata as ad
    return ad.AnnData(X=a.X, obs=a.obs.copy(), var=a.var.copy(), obsm={k: v for k, v in a.obsm.items()},
                      uns=copy.deepcopy(dict(a.uns)), layers={k: v for k, v in a.layers.items()})


class Model:
    """A trained spagraph model (one saved model, or a seed ensemble of them).

    ``members``: list of :class:`spagraph.train.saved.SavedModel`; ``path``: its folder;
    ``metrics``: the validation metrics of the fit (when trained in this session).
    """

    def __init__(self, members: list, path: Path, metrics: dict | None = None, _tmp=None):
        self.members, self.path, self.metrics, self._tmp = list(members), Path(path), metrics, _tmp

    def __repr__(self) -> str:
        m = self.members[0].meta
        return (f"spagraph.tl.Model({len(self.members)} member(s), trained on {m['fold']['train']}, "
                f"validated on {m['fold']['val']}, path={str(self.path)!r})")

    @property
    def genes(self) -> list[str]:
        enc = self.members[0].gene_encoder
        return list(getattr(enc, "genes", []) or [])

    def save(self, path: str | Path) -> Path:
        """Copy the model folder to ``path`` (atomically; ``spagraph predict path`` reads it)."""
        from spagraph.utils import atomic_dir, fix_mode_tree
        path = Path(path)
        if path.resolve() == self.path.resolve():
            return path
        with atomic_dir(path) as d:
            for p in self.path.iterdir():
                if p.is_dir():
                    shutil.copytree(p, d / p.name)
                else:
                    shutil.copy2(p, d / p.name)
            fix_mode_tree(d)
        return path

    def predict(self, adata, copy: bool = False, name: str | None = None, n_mc: int = 20,
                gene_aliases=None, max_missing_weight: float | None = None, **kw):
        """Score, threshold, regions, risk and uncertainty of one slice.

        Writes ``obs["spagraph_score" | "spagraph_pred" | "spagraph_region" | "spagraph_risk" |
        "spagraph_uncertainty"]``, ``uns["spagraph"]`` (threshold, rule, genes report) and
        ``uns["spagraph_region_colors"]`` (docs/conventions.md). Returns the annotated copy when
        ``copy``, else None (scanpy convention). ``gene_aliases``: pairs or a CSV path.
        """
        from spagraph.train.saved import predict_slice
        if isinstance(gene_aliases, (str, Path)):
            from spagraph.embed.match import read_aliases
            gene_aliases = read_aliases(gene_aliases)
        a = adata.copy() if copy else adata
        if name is None:
            name = str((a.uns.get("spagraph_slice", {}) or {}).get("library_id") or "slice")
        res = predict_slice(self.members, a, name=name, n_mc=n_mc, gene_aliases=gene_aliases,
                            max_missing_weight=max_missing_weight, **kw)
        self.last_table = res["table"]
        return a if copy else None


def load_model(path: str | Path, device: str = "cpu") -> Model:
    """A saved model folder, or a folder of them (seed ensemble), as a :class:`Model`."""
    from spagraph.train.saved import load_models
    path = Path(path)
    return Model(load_models(path, device), path)


def fit(adatas, config, seeds: list[int] | None = None, out: str | Path | None = None,
        progress: bool = False) -> Model:
    """Train a model for deployment on annotated slices (protocol ``fit``).

    Parameters
    ----------
    adatas : {name: AnnData} or a list (names from ``uns["spagraph_slice"]["library_id"]``), raw
        counts in X and labels in ``obs[config.data.label_key]`` (docs/conventions.md). The last
        ``config.protocol.n_val`` slices (or ``data.validate``) are held out whole for validation.
    config : ExperimentConfig, dict or YAML path; its ``data`` section is ignored (the protocol is
        forced to ``fit``).
    seeds : overrides ``train.seeds`` (several: a seed ensemble).
    out : keep the run folder (metrics.json, predictions.csv, model/) here; default a temporary folder.
    """
    from spagraph.experiment.runner import run_experiment
    cfg = as_config(config)
    d = cfg.to_dict()
    d["protocol"]["kind"] = "fit"
    d["track"]["mode"] = "disabled"
    if seeds is not None:
        d["train"]["seeds"] = [int(s) for s in seeds]
    cfg = as_config(d)
    slices = {k: _shallow(a) for k, a in _named(adatas).items()}   # the caller's AnnData stay untouched
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="spagraph_fit_")
        out = tmp.name
    metrics = run_experiment(cfg, out, progress=progress, write_maps=False, save_models=True, slices=slices)
    model = load_model(Path(out) / "model")
    model.metrics, model._tmp = metrics, tmp
    return model


def read_inputs(paths: list, slices: list[str] | None = None, card: str | None = None, **reader_kw) -> dict:
    """Slices to predict, as {name: loader()} (read lazily, one at a time).

    ``paths``: .h5ad files, Space Ranger ``outs/`` folders, her2st-style roots (with ``slices``
    selecting sections; each selector applies to every root) or, with ``card``, roots a dataset
    card was fetched to (``slices`` selects, default all). ``reader_kw`` (``bin_um``, ``grid``) go to
    the Xenium / Visium HD readers (:func:`spagraph.io.read_slice`); other formats refuse them.
    """
    import functools
    from spagraph.io import read_slice
    out: dict = {}

    def add(name, fn):
        name = str(name)
        if name in out:
            raise ValueError(f"two inputs are both named {name!r}; predict them in separate calls")
        out[name] = fn

    for p in map(Path, paths):
        if card:
            from spagraph.io.cards import read_card
            add_all = read_card(card, p, list(slices) if slices else None)
            for n, a in add_all.items():
                add(n, functools.partial(lambda x: x, a))
            continue
        if not p.exists():
            raise FileNotFoundError(f"slice input not found: {p} (resolved: {p.resolve()})")
        if p.is_dir() and (p / "counts").is_dir():
            if not slices:
                names = sorted(q.name.split(".")[0] for q in (p / "counts").glob("*.tsv.gz"))
                raise ValueError(f"{p} is a her2st-style root: pass --slice (repeatable; one of {names})")
            for s in slices:
                add(s, functools.partial(read_slice, p, slice_name=s))
            continue
        if slices and len(paths) == 1:
            raise ValueError(f"--slice selects sections of a her2st-style root (a folder with counts/) or of a "
                             f"dataset card (--card); {p} is neither")
        name = p.stem if p.suffix == ".h5ad" else (p.parent.name if p.name == "outs" else p.name)
        add(name, functools.partial(read_slice, p, **reader_kw))
    if not out:
        raise ValueError("no slices to predict")
    return out


SUMMARY_COLUMNS = ("slice", "spots", "cancer", "cancer_frac", "threshold", "rule", "tumour", "boundary", "healthy",
                   "high_risk", "genes_missing", "missing_weight")


def summary_text(df, name_width: int = 12) -> str:
    """The predict summary as fixed-width text within 80 columns: long slice names are shortened
    (ending in '~'), numbers never; the threshold rule goes in a footer when it is the same for all."""
    cols = [("slice", "slice", None), ("spots", "spots", "d"), ("cancer", "cancer", "d"), ("frac", "cancer_frac", ".3f"),
            ("thresh", "threshold", ".4f"), ("tumour", "tumour", "d"), ("bound", "boundary", "d"),
            ("healthy", "healthy", "d"), ("hirisk", "high_risk", "d"), ("g.miss", "genes_missing", "d"),
            ("w.miss", "missing_weight", ".2%")]
    cells = []
    for _, r in df.iterrows():
        row = []
        for _h, k, f in cols:
            v = r[k]
            if f is None:
                v = str(v)
                v = v if len(v) <= name_width else v[: name_width - 1] + "~"
            else:
                v = format(int(v) if f == "d" else float(v), f)
            row.append(v)
        cells.append(row)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in enumerate(cols)]
    line = lambda vals: " ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    out = [line([h for h, _, _ in cols])] + [line(c) for c in cells]
    rules = sorted(set(map(str, df["rule"])))
    out.append("threshold rule: " + ", ".join(rules) + "; w.miss = missing genes' share of the gene encoder weight")
    return "\n".join(out)


def predict_many(model: Model, inputs: dict, out: str | Path, plot: bool = True, progress: bool = True,
                 on_slice=None, **predict_kw):
    """Predict every slice of ``inputs`` ({name: loader}) and write, per slice, ``OUT/<name>.h5ad``,
    ``.csv`` and ``.png`` (or, when ``out`` ends in ``.h5ad`` and there is one slice, that file with
    the CSV and PNG next to it), then ``summary.csv`` (one row per slice). Returns the summary
    DataFrame. ``on_slice(name, row)`` is called after each slice."""
    import pandas as pd
    from spagraph.train.saved import write_prediction
    from spagraph.utils import atomic_path
    out = Path(out)
    single = out.suffix == ".h5ad"
    if single and len(inputs) != 1:
        raise ValueError(f"--out {out} names one .h5ad but {len(inputs)} slices were given; pass a folder")
    rows = []
    for name, load in inputs.items():
        adata = load()
        model.predict(adata, name=name, **predict_kw)
        t = model.last_table
        h5 = out if single else out / f"{_safe(name)}.h5ad"
        write_prediction(adata, t, h5)
        if plot:
            import spagraph.pl as pl
            pl.slice_maps(adata, h5.with_suffix(".png"), panels=("label", "score", "uncertainty", "regions", "risk"),
                          title=name)
        u = adata.uns["spagraph"]
        g = u.get("genes") or {}
        reg = t["region"].value_counts()
        row = {"slice": name, "spots": len(t), "cancer": int(t["pred"].sum()),
               "cancer_frac": round(float(t["pred"].mean()), 4), "threshold": round(float(u["threshold"]), 4),
               "rule": u["threshold_method"], **{k: int(reg.get(k, 0)) for k in ("tumour", "boundary", "healthy", "high_risk")},
               "genes_missing": int(g.get("n_missing", 0)), "missing_weight": round(float(g.get("missing_weight_share", 0.0)), 6),
               "prevalence": float(u.get("prevalence_estimate", float("nan"))),
               "tumour_regions": len((u.get("tumour_regions") or {}).get("region", [])),
               "flags": str(u.get("flags", "") or ""), "h5ad": str(h5)}
        rows.append(row)
        if on_slice is not None:
            on_slice(name, {**row, "adata": adata})
        del adata
    df = pd.DataFrame(rows)
    summ = (out.parent / f"{out.stem}_summary.csv") if single else out / "summary.csv"
    with atomic_path(summ) as tmp:
        df.to_csv(tmp, index=False)
    return df, summ


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
