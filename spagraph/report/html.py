"""``spagraph report RUN_DIR``: one self-contained HTML page (images base64-embedded).

Writes ``RUN_DIR/report.html``, ``RUN_DIR/regions.csv`` (every predicted spot: ensemble
score, spread, prediction, region, risk), ``RUN_DIR/high_risk.csv`` (``slice, spot, score,
spread, nearest_tumour_distance, ...``) and ``RUN_DIR/boundary.csv``. Figures are drawn in a
temporary folder, shrunk (256-colour palette PNG) and embedded; no ``report_files/`` folder is
left beside the page.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from spagraph.regions import RegionSettings
from spagraph.report.analysis import RunAnalysis, analyse_run
from spagraph.utils import atomic_path, atomic_write_text

REPORT_MAP_DPI = 80       # maps in the page are viewed at screen size; 110 dpi files made 5-8 MB pages
METRIC_COLS = [("auc", "AUC"), ("ap", "AP"), ("f1", "F1"), ("f1_val_threshold", "F1 (val thr.)"),
               ("accuracy", "accuracy"), ("sensitivity", "sensitivity"), ("specificity", "specificity")]

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1300px;color:#222;
line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0.2em} h2{border-bottom:2px solid #0072B2;padding-bottom:3px;margin-top:1.8em}
h3{margin-bottom:0.3em}
table{border-collapse:collapse;font-size:0.86em;margin:8px 0 14px 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#eef3f8}
td.l,th.l{text-align:left} tr.sum td{font-weight:bold;background:#f7f7f7}
img{max-width:100%;height:auto;border:1px solid #eee;margin:4px 0}
pre{background:#f6f6f6;border:1px solid #ddd;padding:10px;font-size:0.8em;overflow-x:auto;max-height:480px}
.note{color:#555;font-size:0.9em} .slice{margin-bottom:2.2em}
nav a{margin-right:10px}
"""


def _fmt(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "&mdash;"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{nd}f}"
    return html.escape(str(v))


def _img(path: Path, alt: str) -> str:
    """The figure as a data URI: line plots as lossless (palette) PNG; maps over an H&E (thousands
    of colours) as JPEG quality 90, 4-6x smaller at no visible cost on screen (the lossless PNGs
    are what ``spagraph run`` / ``predict`` write)."""
    import io
    from PIL import Image
    from spagraph.viz.spatial import shrink_png
    raw = Path(path).read_bytes()
    with Image.open(io.BytesIO(raw)) as im:
        photo = im.convert("RGB").getcolors(4096) is None
        if photo:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=90, optimize=True)
            mime, data = "jpeg", buf.getvalue()
    if not photo:
        mime, data = "png", shrink_png(raw)
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/{mime};base64,{b64}">'


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _table(header: list[str], rows: list[list[str]], left: int = 1, classes: list[str] | None = None) -> str:
    th = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(header))
    body = []
    for k, r in enumerate(rows):
        cls = f' class="{classes[k]}"' if classes and classes[k] else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>"
                                            for i, c in enumerate(r)) + "</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _per_slice_metrics(metrics: dict) -> pd.DataFrame:
    rows = pd.DataFrame(metrics.get("per_slice", []))
    if rows.empty:
        return rows
    keys = [k for k, _ in METRIC_COLS if k in rows] + [k for k in ("n", "n_pos") if k in rows]
    for k in keys:
        rows[k] = pd.to_numeric(rows[k], errors="coerce")
    g = rows.groupby("slice", sort=False)
    out = g[keys].mean()
    out["n_seeds"] = g.size()
    return out


def _protocol_text(ra: RunAnalysis) -> str:
    m, c = ra.metrics, ra.config
    seeds = c.get("train", {}).get("seeds", [])
    folds = m.get("folds", {}) or {}
    thr = (c.get("threshold") or {}).get("method") or m.get("threshold_method") or ", ".join(
        sorted({str(r.get("threshold_method")) for r in m.get("per_slice", []) if r.get("threshold_method")})) or "?"
    parts = [f"Protocol <b>{html.escape(str(m.get('protocol', c.get('protocol', {}).get('kind', '?'))))}</b>"
             f" with {len(folds) or '?'} fold(s) &times; {len(seeds)} seed(s) {html.escape(str(seeds))}."]
    if m.get("protocol") == "loso":
        parts.append("Each slice is the test slice of one fold; it never enters training, early stopping, "
                     "normalisation statistics or threshold choice. Validation = whole held-out training slices.")
    parts.append(f"Undetermined spots are <b>{html.escape(str(m.get('undetermined', 'excluded')))}</b> from scoring.")
    und = m.get("undetermined_as_noncancer") or {}
    if und.get("auc") is not None:
        parts.append(f"Scoring them as non-cancer instead (SpaCancer's text): mean AUC {_fmt(und.get('auc'))}, "
                     f"mean AP {_fmt(und.get('ap'))}.")
    parts.append(f"Test-slice thresholds: method <b>{html.escape(str(thr))}</b> (label-free for the test slice; "
                 "see the threshold table). Overall mean &plusmn; std are over all (slice, seed) rows where the "
                 "metric is defined.")
    return " ".join(parts)


def _fold_table(ra: RunAnalysis) -> str:
    folds = ra.metrics.get("folds", {}) or {}
    if not folds:
        return ""
    rows = [[html.escape(str(k)), html.escape(", ".join(map(str, v.get("train", [])))),
             html.escape(", ".join(map(str, v.get("val", [])))), html.escape(", ".join(map(str, v.get("test", []))))]
            for k, v in folds.items()]
    return _table(["fold", "train", "validation", "test"], rows, left=4)


def _metrics_section(ra: RunAnalysis) -> str:
    ps = _per_slice_metrics(ra.metrics)
    bt = ra.boundary_table().set_index("slice") if ra.slices else pd.DataFrame()
    header = ["slice", "seeds", "spots", "cancer"] + [h for _, h in METRIC_COLS] + ["boundary Dice", "boundary F1 (±1 pitch)"]
    rows = []
    for s in ra.slices:
        r = ps.loc[s] if s in ps.index else pd.Series(dtype=float)
        b = bt.loc[s] if s in bt.index else pd.Series(dtype=float)
        rows.append([html.escape(s), _fmt(int(r["n_seeds"])) if "n_seeds" in r else "&mdash;",
                     _fmt(int(r["n"])) if "n" in r and not math.isnan(r["n"]) else "&mdash;",
                     _fmt(int(r["n_pos"])) if "n_pos" in r and not math.isnan(r["n_pos"]) else "&mdash;"]
                    + [_fmt(r.get(k)) for k, _ in METRIC_COLS] + [_fmt(b.get("dice_mean")), _fmt(b.get("f1_tol_mean"))])
    mean, std = ra.metrics.get("mean", {}), ra.metrics.get("std", {})
    bd = pd.to_numeric(bt.get("dice_mean"), errors="coerce") if len(bt) else pd.Series(dtype=float)
    bf = pd.to_numeric(bt.get("f1_tol_mean"), errors="coerce") if len(bt) else pd.Series(dtype=float)

    def pm(m, s):
        return "&mdash;" if m is None else f"{m:.3f} &plusmn; {s:.3f}" if s is not None else f"{m:.3f}"
    rows.append(["mean &plusmn; std", "", "", ""] + [pm(mean.get(k), std.get(k)) for k, _ in METRIC_COLS]
                + [pm(float(bd.mean()), float(bd.std(ddof=0))) if bd.notna().any() else "&mdash;",
                   pm(float(bf.mean()), float(bf.std(ddof=0))) if bf.notna().any() else "&mdash;"])
    return (_table(header, rows, classes=[""] * (len(rows) - 1) + ["sum"]) +
            '<p class="note">Per-slice values are means over seeds. Boundary scores: mean over seeds of the '
            "agreement between the boundary of each seed's prediction and the boundary drawn the same way from "
            "the pathologist's labels, on labelled spots; the bottom row is mean &plusmn; std over slices.</p>")


def _decisions_section(ra: RunAnalysis) -> str:
    """Calibration, prevalence estimate, rule, guard flags per slice; every rule side by side."""
    rows = pd.DataFrame(ra.metrics.get("per_slice", []))
    if rows.empty or "prevalence_em" not in rows:
        return "<p>This run predates calibrated decisions (no prevalence estimates in metrics.json).</p>"
    out = []
    body = []
    for s, df in rows.groupby("slice", sort=False):
        num = lambda k: pd.to_numeric(df[k], errors="coerce").mean() if k in df else None
        flags = sorted({f for fl in df.get("flags", []) for f in (fl or [])})
        deg = [f"seed {r['seed']}: {r.get('threshold_method')}" for _, r in df.iterrows() if "degenerate" in (r.get("flags") or [])]
        body.append([html.escape(str(s)), html.escape(", ".join(sorted(set(map(str, df["rule"]))))),
                     _fmt(num("threshold")), _fmt(num("ece")), _fmt(num("prevalence_estimate")),
                     _fmt(num("prevalence_em")), _fmt(num("prevalence_mixture")), _fmt(num("true_fraction")),
                     _fmt(num("predicted_fraction")),
                     ("<b>DEGENERATE</b> &rarr; " + html.escape("; ".join(deg)) + "<br>" if deg else "") +
                     html.escape("; ".join(f for f in flags if f != "degenerate")) if flags else "none"])
    out.append(_table(["slice", "rule", "threshold (calibrated)", "ECE", "estimated cancer fraction",
                       "EM", "mixture", "true fraction", "predicted fraction", "guard flags"], body))
    d = ra.metrics.get("decisions") or {}
    out.append(f'<p class="note">Scores are calibrated probabilities (Platt scaling fitted on each fold\'s validation '
               f"slices only). Estimated cancer fraction: label-free, from the slice's own scores; mean absolute error "
               f"over slices {_fmt(d.get('prevalence_mae'))} (EM {_fmt(d.get('prevalence_mae_em'))}, mixture "
               f"{_fmt(d.get('prevalence_mae_mixture'))}). A call is <b>degenerate</b> when the scores are clearly "
               "bimodal but under 2 % or over 98 % of spots are called cancer (or the cut lies outside the slice's "
               "1st-99th score percentiles); the named fallback then makes the calls.</p>")
    rules = d.get("rules") or {}
    if rules:
        out.append("<h3>Every rule side by side</h3>" + _table(
            ["rule", "F1", "sensitivity", "specificity", "|predicted − true fraction|", "worst sensitivity",
             "worst specificity"],
            [[html.escape(r), _fmt(v["f1"]), _fmt(v["sensitivity"]), _fmt(v["specificity"]), _fmt(v["prevalence_error"]),
              _fmt(v["min_sensitivity"]), _fmt(v["min_specificity"])] for r, v in rules.items()]) +
            '<p class="note">Means over slices of per-slice means over seeds; worst = the lowest slice.</p>')
    why = {}
    for _, r in rows.iterrows():
        rc = r.get("rule_choice") or {}
        if isinstance(rc, dict) and rc.get("why"):
            why.setdefault(str(r["slice"]), rc["why"])
    if why:
        out.append("<h3>Why this rule</h3>" + _table(["test slice (its fold)", "choice"],
                                                        [[html.escape(k), html.escape(v)] for k, v in why.items()]))
    return "".join(out)


def _regions_section(ra: RunAnalysis) -> str:
    t = ra.tumour_region_table()
    if t.empty:
        return "<p>No predicted tumour region.</p>"
    rows = [[html.escape(str(r["slice"])), _fmt(int(r["region"])), _fmt(int(r["size"])), _fmt(r["mean_probability"]),
             _fmt(int(r["boundary_length"])), _fmt(int(r["boundary_spots"]))]
            for _, r in t.sort_values(["slice", "region"]).groupby("slice", sort=False).head(8).iterrows()]
    return ("<p>Tumour regions: connected components of the ensemble's cancer calls on the scale-1 spot graph "
            "(largest first; up to 8 per slice here, all in tumour_regions.csv). Boundary length = graph edges "
            "leaving the region (about one pitch of contour each).</p>" +
            _table(["slice", "region", "spots", "mean probability", "boundary length", "boundary spots"], rows, left=2))


def _boundary_section(ra: RunAnalysis) -> str:
    s = ra.settings
    how = (f"within {s.k_hops} hop(s) on the scale-1 spot graph" if s.k_hops is not None
           else f"within {s.distance_pitches:g} spot pitch(es)")
    bt = ra.boundary_table()
    rows = [[html.escape(str(r["slice"])), _fmt(r["n_labelled"]), _fmt(r["n_ref_boundary"]),
             f"{_fmt(r['dice_mean'])} &plusmn; {_fmt(r['dice_std'])}", _fmt(r["dice_ensemble"]),
             f"{_fmt(r['f1_tol_mean'])} &plusmn; {_fmt(r['f1_tol_std'])}", _fmt(r["f1_tol_ensemble"])]
            for _, r in bt.iterrows()]
    return (f"<p>A spot is <b>boundary</b> when a spot of the other class lies {how} of it (both sides of an "
            "interface; undetermined spots belong to no class). Other spots are <b>tumour</b> (predicted cancer) "
            "or <b>healthy</b>. <b>High-risk</b> (label-free): a spot the ensemble calls non-cancer whose calibrated "
            "probability, or its upper bound probability + 2 &times; spread (std over seeds), reaches the risk level "
            f"0.25 (a spread above {s.max_spread:g} alone does not flag). "
            "<b>Dice</b> = exact overlap of predicted and reference boundary spots; <b>F1 (&plusmn;1 pitch)</b> "
            "counts a boundary spot as matched when the other boundary has a spot within one pitch.</p>" +
            _table(["slice", "labelled spots", "reference boundary spots", "Dice (seeds)", "Dice (ensemble)",
                    "F1 ±1 pitch (seeds)", "F1 ±1 pitch (ensemble)"], rows))


def _threshold_section(ra: RunAnalysis) -> str:
    rows = []
    for r in ra.metrics.get("per_slice", []):
        rows.append([html.escape(str(r.get("slice"))), _fmt(r.get("seed")), _fmt(r.get("threshold")),
                     html.escape(str(r.get("threshold_method", ""))), _fmt(r.get("val_threshold")),
                     _fmt(r.get("f1")), _fmt(r.get("f1_val_threshold")), _fmt(r.get("best_epoch"))])
    ens = [[html.escape(s.name), _fmt(s.threshold), _fmt(int(s.pred.sum())), _fmt(len(s.pred))] for s in ra.slices.values()]
    return (_table(["slice", "seed", "threshold", "method", "validation F1-optimal threshold", "F1", "F1 at val. thr.",
                    "best epoch"], rows) +
            "<h3>Seed ensemble used for the maps and regions</h3>" +
            _table(["slice", "threshold (mean over seeds)", "predicted cancer spots", "spots"], ens))


def _risk_section(ra: RunAnalysis) -> str:
    hr = ra.high_risk_table()
    counts = [[html.escape(s.name), _fmt(int(s.risk["high_risk"].sum())),
               _fmt(int((s.risk["reference_class"] == 0).sum())),
               _fmt(int((s.risk["high_risk"] & (s.risk["label"] == 1).fillna(False)).sum()))
               if s.risk["label"].notna().any() else "&mdash;"]
              for s in ra.slices.values()]
    top = hr.sort_values(["nearest_tumour_distance", "score"], ascending=[True, False]).head(25)
    rows = [[html.escape(str(r["slice"])), html.escape(str(r["spot"])), _fmt(r["score"]), _fmt(r["spread"]),
             _fmt(r["nearest_tumour_distance"], 2)] for _, r in top.iterrows()]
    return (_table(["slice", "high-risk spots", "spots called non-cancer", "high-risk spots labelled cancer"], counts) +
            (f"<h3>The {len(rows)} of {len(hr)} high-risk spots closest to a predicted tumour (full list: high_risk.csv)</h3>" +
             _table(["slice", "spot", "mean score", "spread", "nearest tumour (pitches)"], rows, left=2)
             if len(rows) else "<p>No high-risk spot.</p>"))


def _slice_figures(ra: RunAnalysis, fig_dir: Path) -> dict[str, list[Path]]:
    from spagraph.viz.curves import plot_roc_pr
    from spagraph.viz.spatial import plot_slice_panels
    out = {}
    for s in ra.slices.values():
        f1 = plot_slice_panels(s.pos, fig_dir / f"{_safe(s.name)}_maps.png", label=s.label, score=s.score,
                               uncertainty=s.spread if len(s.seeds) > 1 else None, pred=s.pred, regions=s.regions,
                               risk=s.risk["risk"].to_numpy(), high_risk=s.risk["high_risk"].to_numpy(),
                               title=f"{s.name}: seed ensemble of {len(s.seeds)}", threshold=s.threshold,
                               threshold_method=ra.metrics.get("threshold_method"),
                               image=s.image, image_scale=s.image_scale, platform=s.platform,
                               dpi=REPORT_MAP_DPI)
        m = ~np.isnan(s.label)
        f2 = plot_roc_pr([(s.label[m].astype(int), r[m]) for r in s.runs], fig_dir / f"{_safe(s.name)}_curves.png",
                         title=s.name, mean_score=(s.label[m].astype(int), s.score[m]))
        out[s.name] = [f1, f2]
    return out


def write_report(run_dir: str | Path, slices: dict | None = None, base_dir: Path | None = None,
                 settings: RegionSettings | None = None) -> Path:
    """Analyse a finished run and write report.html, regions.csv, high_risk.csv, boundary.csv."""
    run_dir = Path(run_dir)
    import shutil
    import tempfile
    ra = analyse_run(run_dir, slices=slices, base_dir=base_dir, settings=settings)
    shutil.rmtree(run_dir / "report_files", ignore_errors=True)      # left by older versions
    fig_tmp = tempfile.TemporaryDirectory(prefix=".report_files.", dir=run_dir)
    try:
        return _write_page(run_dir, ra, Path(fig_tmp.name))
    finally:
        fig_tmp.cleanup()


def _write_page(run_dir: Path, ra: RunAnalysis, fig_dir: Path) -> Path:
    from spagraph.viz.curves import plot_calibration, plot_roc_all
    for name, df in (("regions.csv", ra.regions_table()), ("high_risk.csv", ra.high_risk_table()),
                     ("boundary.csv", ra.boundary_table()), ("tumour_regions.csv", ra.tumour_region_table())):
        with atomic_path(run_dir / name) as tmp:
            df.to_csv(tmp, index=False)
    figs = _slice_figures(ra, fig_dir)
    labelled = {s.name: (s.label[~np.isnan(s.label)].astype(int), s.score[~np.isnan(s.label)])
                for s in ra.slices.values() if (~np.isnan(s.label)).any()}
    overview = []
    if labelled:
        overview.append(plot_roc_all(labelled, fig_dir / "all_roc_pr.png", title="all slices (seed-mean scores)"))
        overview.append(plot_calibration(labelled, fig_dir / "calibration.png",
                                         title="reliability of calibrated probabilities (seed means)"))
    name = ra.metrics.get("experiment") or ra.config.get("name", run_dir.name)
    nav = " ".join(f'<a href="#slice-{_safe(s)}">{html.escape(s)}</a>' for s in ra.slices)
    secs = [f"<h1>spagraph report: {html.escape(str(name))}</h1>",
            f'<p class="note">Run directory <code>{html.escape(str(run_dir.resolve()))}</code>; config hash '
            f"<code>{html.escape(str(ra.metrics.get('config_hash', '?')))}</code>; wall time "
            f"{_fmt(ra.metrics.get('wall_time_s'), 1)} s.</p>",
            f"<nav>Slices: {nav}</nav>",
            "<h2>Protocol</h2>", f"<p>{_protocol_text(ra)}</p>", _fold_table(ra),
            "<h2>Metrics</h2>", _metrics_section(ra),
            "<h2>Calibration, prevalence and decisions</h2>", _decisions_section(ra)]
    if overview:
        secs += ["<h2>Curves</h2>", '<div style="display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start">'
                 + "".join(_img(p, p.stem) for p in overview) + "</div>"]
    secs += ["<h2>Regions and boundary agreement</h2>", _boundary_section(ra),
             "<h2>Tumour regions</h2>", _regions_section(ra),
             "<h2>High-risk spots</h2>", _risk_section(ra),
             "<h2>Slices</h2>",
             '<p class="note">Panels: pathologist label; seed-mean calibrated probability; spread over seeds '
             "(spagraph_seed_std, when more than one seed; colour scale = its 2nd-98th percentile); ensemble "
             "prediction; regions; risk (upper bound probability + 2 &times; spread, on spots called non-cancer; "
             "high-risk spots ringed). Drawn over the H&amp;E when the slice has one.</p>"]
    for s, paths in figs.items():
        secs.append(f'<div class="slice" id="slice-{_safe(s)}"><h3>{html.escape(s)}</h3>' +
                    "".join(_img(p, f"{s} {p.stem}") for p in paths) + "</div>")
    secs += ["<h2>Threshold decisions</h2>", _threshold_section(ra),
             "<h2>Resolved config</h2>", f"<pre>{html.escape(ra.config_text)}</pre>"]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>spagraph report: '
            f"{html.escape(str(name))}</title><style>{CSS}</style></head><body>\n" + "\n".join(secs) +
            "\n</body></html>\n")
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out
