"""Post-hoc analysis of a finished run: seed-ensemble scores, regions, boundary scores, risk.

Reads only the run's outputs (``predictions.csv``, ``metrics.json``, ``config.yaml``) plus the
slices themselves (coordinates and images), re-read through the config's ``data`` section.
Nothing here feeds back into training, thresholds or model selection: labels of a test slice
are used only to *evaluate* (boundary scores) and to name the reference for risk.

Per slice, over the seeds of the run:
  score   mean of the seeds' scores;   spread  their std (0 with one seed)
  threshold  mean of the seeds' thresholds (each chosen label-free for the test slice)
  pred    score >= threshold (the seed ensemble's call), from which regions are drawn
  boundary scores: per seed (that seed's own predictions) and for the ensemble
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spagraph.regions import RegionSettings, assign_regions, boundary_scores, risk_table, tumour_regions


@dataclass
class SliceAnalysis:
    name: str
    spots: list[str]
    pos: np.ndarray                  # full-resolution pixel coordinates
    image: np.ndarray | None
    image_scale: float
    label: np.ndarray                # 0/1/NaN
    runs: np.ndarray                 # (seeds, n) scores
    seeds: list[int]
    score: np.ndarray
    spread: np.ndarray
    threshold: float
    pred: np.ndarray
    regions: pd.Categorical
    risk: pd.DataFrame
    boundary_seeds: list[dict] = field(default_factory=list)
    boundary_ensemble: dict = field(default_factory=dict)
    tumour_regions: pd.DataFrame = field(default_factory=pd.DataFrame)
    platform: str | None = None      # uns["spagraph_slice"]["platform"]: the map's micron scale bar


@dataclass
class RunAnalysis:
    run_dir: Path
    config_text: str
    config: dict
    metrics: dict
    predictions: pd.DataFrame
    slices: dict[str, SliceAnalysis]
    settings: RegionSettings

    def regions_table(self) -> pd.DataFrame:
        rows = []
        for s in self.slices.values():
            rows.append(pd.DataFrame({
                "slice": s.name, "spot": s.spots, "x": s.pos[:, 0], "y": s.pos[:, 1],
                "label": pd.array(s.label, dtype="Float32").astype("Int8"),
                "score": s.score, "spread": s.spread, "threshold": s.threshold,
                "pred": s.pred.astype(int), "region": s.regions, "risk": s.risk["risk"].to_numpy(),
                "nearest_tumour_distance": s.risk["nearest_tumour_distance"].to_numpy()}))
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()

    def high_risk_table(self) -> pd.DataFrame:
        cols = ["slice", "spot", "score", "spread", "nearest_tumour_distance", "risk_rank", "risk", "label"]
        parts = [s.risk.loc[s.risk["high_risk"], cols] for s in self.slices.values()]
        parts = [p for p in parts if len(p)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)

    def tumour_region_table(self) -> pd.DataFrame:
        parts = [s.tumour_regions.assign(slice=s.name) for s in self.slices.values() if len(s.tumour_regions)]
        cols = ["slice", "region", "size", "mean_probability", "boundary_length", "boundary_spots"]
        return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)

    def boundary_table(self) -> pd.DataFrame:
        rows = []
        for s in self.slices.values():
            per = pd.DataFrame(s.boundary_seeds)
            row = {"slice": s.name, "n_labelled": s.boundary_ensemble.get("n"),
                   "n_ref_boundary": s.boundary_ensemble.get("n_ref")}
            for k in ("dice", "f1_tol"):
                v = pd.to_numeric(per[k], errors="coerce") if k in per else pd.Series(dtype=float)
                row[f"{k}_mean"] = float(v.mean()) if v.notna().any() else None
                row[f"{k}_std"] = float(v.std(ddof=0)) if v.notna().any() else None
                row[f"{k}_ensemble"] = s.boundary_ensemble.get(k)
            rows.append(row)
        return pd.DataFrame(rows)


def _read_run(run_dir: Path) -> tuple[str, dict, dict, pd.DataFrame]:
    missing = [f for f in ("predictions.csv", "metrics.json", "config.yaml") if not (run_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a finished run directory: missing {', '.join(missing)}")
    from spagraph.utils import load_yaml, read_json
    text = (run_dir / "config.yaml").read_text()
    try:
        cfg = load_yaml(text, run_dir / "config.yaml") or {}
    except Exception as e:  # noqa: BLE001 - yaml.YAMLError or a duplicate key
        raise ValueError(f"{run_dir / 'config.yaml'}: not a readable run config: {e}") from None
    metrics = read_json(run_dir / "metrics.json", "run metrics")
    try:
        pred = pd.read_csv(run_dir / "predictions.csv", dtype={"slice": str, "spot": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{run_dir / 'predictions.csv'}: not a readable predictions table (corrupt or truncated?): {e}") from None
    need = {"slice", "spot", "seed", "score", "pred", "label"}
    if not need <= set(pred.columns):
        raise ValueError(f"{run_dir / 'predictions.csv'}: expected columns {sorted(need)}, got {list(pred.columns)}")
    return text, cfg, metrics, pred


def load_run_slices(config: dict, base_dir: Path | None = None, names: list[str] | None = None) -> dict:
    """Re-read the slices of a run from its resolved config's data section."""
    from spagraph.experiment.config import validate_config
    from spagraph.experiment.data import load_slices
    cfg = validate_config(config)
    slices, _ = load_slices(cfg.data, base_dir)
    if names is not None:
        missing = [n for n in names if n not in slices]
        if missing:
            raise ValueError(f"slices {missing} are in predictions.csv but not in the run's data section")
        slices = {n: slices[n] for n in names}
    return slices


def _slice_thresholds(metrics: dict) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in metrics.get("per_slice", []):
        t = r.get("threshold")
        if t is not None and not (isinstance(t, float) and math.isnan(t)):
            out.setdefault(str(r["slice"]), []).append(float(t))
    return out


def analyse_slice(name: str, adata, df: pd.DataFrame, threshold: float, settings: RegionSettings) -> SliceAnalysis:
    """Seed ensemble, regions, risk and boundary scores of one slice's prediction rows."""
    from spagraph.viz.spatial import slice_image
    wide = df.pivot_table(index="spot", columns="seed", values="score", aggfunc="first", sort=False)
    preds = df.pivot_table(index="spot", columns="seed", values="pred", aggfunc="first", sort=False)
    idx = adata.obs_names.get_indexer(wide.index)
    if (idx < 0).any():
        bad = list(wide.index[idx < 0][:5])
        raise ValueError(f"slice {name}: predicted spots {bad} are not in the slice as re-read from the data section")
    order = np.argsort(idx, kind="stable")        # the slice's own spot order
    wide, preds, idx = wide.iloc[order], preds.loc[wide.index[order]], idx[order]
    if wide.isna().any().any():
        raise ValueError(f"slice {name}: not every seed scored every spot in predictions.csv")
    sub = adata[idx]
    pos = np.asarray(sub.obsm["spatial"], dtype=float)
    lab = df.drop_duplicates("spot").set_index("spot")["label"].reindex(wide.index)
    label = pd.to_numeric(lab, errors="coerce").to_numpy(dtype=float)
    runs = wide.to_numpy(dtype=float).T
    seeds = [int(c) for c in wide.columns]
    score = runs.mean(0)
    pred = (score >= threshold).astype(float)
    risk = risk_table(pos, runs, threshold, label=label if (~np.isnan(label)).any() else None,
                      pred=pred, spot_ids=list(wide.index), slice_name=name, max_spread=settings.max_spread)
    regions = assign_regions(pos, pred=pred, distance_pitches=settings.distance_pitches, k_hops=settings.k_hops,
                             high_risk=risk["high_risk"].to_numpy())
    _, tumours = tumour_regions(pos, pred, score)
    kw = dict(distance_pitches=settings.distance_pitches, k_hops=settings.k_hops)
    bseeds, bens = [], {}
    if (~np.isnan(label)).any():
        for j, sd in enumerate(seeds):
            b = boundary_scores(pos, label, preds.iloc[:, j].to_numpy(dtype=float), **kw)
            bseeds.append({"seed": sd, **b})
        bens = boundary_scores(pos, label, pred, **kw)
    img, scale = slice_image(adata)
    return SliceAnalysis(name=name, spots=list(wide.index), pos=pos, image=img, image_scale=scale, label=label,
                         runs=runs, seeds=seeds, score=score, spread=risk["spread"].to_numpy(), threshold=threshold,
                         pred=pred, regions=regions, risk=risk, boundary_seeds=bseeds, boundary_ensemble=bens,
                         tumour_regions=tumours, platform=(adata.uns.get("spagraph_slice", {}) or {}).get("platform"))


def analyse_run(run_dir: str | Path, slices: dict | None = None, base_dir: Path | None = None,
                settings: RegionSettings | None = None) -> RunAnalysis:
    """Analyse a finished run. ``slices`` (name -> AnnData) skips re-reading the data section."""
    run_dir = Path(run_dir)
    settings = settings or RegionSettings()
    text, cfg, metrics, pred = _read_run(run_dir)
    names = list(dict.fromkeys(pred["slice"]))
    if slices is None:
        slices = load_run_slices(cfg, base_dir, names)
    thr = _slice_thresholds(metrics)
    out = {}
    for name in names:
        if name not in slices:
            raise ValueError(f"slice {name} is in predictions.csv but no AnnData was given for it")
        t = float(np.mean(thr[name])) if name in thr else 0.5
        out[name] = analyse_slice(name, slices[name], pred[pred["slice"] == name], t, settings)
    return RunAnalysis(run_dir, text, cfg, metrics, pred, out, settings)
