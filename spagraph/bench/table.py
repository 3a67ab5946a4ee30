"""Accuracy table (mean ± std over slices x seeds) and per-slice AUC heat-map of a suite."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spagraph.train.metrics import mean_std
from spagraph.utils import atomic_path, atomic_write_text

TABLE_METRICS = ("auc", "ap", "f1")


def suite_table(results: list[tuple[str, str, dict]]) -> pd.DataFrame:
    """One row per method from ``(name, kind, metrics.json dict)`` triples.

    Columns: method, kind, ``<m>_mean`` / ``<m>_std`` for AUC, AP, F1 (population std over
    every defined slice x seed row), n_runs, n_slices, n_seeds, wall_time_s.
    """
    rows = []
    for name, kind, m in results:
        per = m.get("per_slice", [])
        mean, std, count = mean_std(per, TABLE_METRICS)
        row = {"method": name, "kind": kind}
        for k in TABLE_METRICS:
            row[f"{k}_mean"], row[f"{k}_std"], row[f"{k}_n"] = mean[k], std[k], count[k]
        row["n_runs"] = len(per)
        row["n_slices"] = len({r["slice"] for r in per})
        row["n_seeds"] = len({r["seed"] for r in per})
        row["wall_time_s"] = m.get("wall_time_s")
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mu, sd) -> str:
    if mu is None or (isinstance(mu, float) and np.isnan(mu)):
        return "n/a"
    return f"{mu:.3f} ± {sd:.3f}"


def table_markdown(df: pd.DataFrame, notes: list[str] | None = None) -> str:
    lines = ["| method | kind | AUC | AP | F1 | slices × seeds | wall time (s) |",
             "|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        wt = "—" if r["wall_time_s"] is None or pd.isna(r["wall_time_s"]) else f"{r['wall_time_s']:.0f}"
        lines.append(f"| {r['method']} | {r['kind']} | {_pm(r['auc_mean'], r['auc_std'])} | "
                     f"{_pm(r['ap_mean'], r['ap_std'])} | {_pm(r['f1_mean'], r['f1_std'])} | "
                     f"{r['n_slices']} × {r['n_seeds']} | {wt} |")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return text


def per_slice_auc(results: list[tuple[str, str, dict]]) -> pd.DataFrame:
    """Methods x slices matrix of AUC averaged over seeds (NaN where undefined / absent)."""
    recs = [{"method": name, "slice": r["slice"], "auc": r.get("auc")}
            for name, _, m in results for r in m.get("per_slice", [])]
    df = pd.DataFrame(recs, columns=["method", "slice", "auc"])
    df["auc"] = pd.to_numeric(df["auc"], errors="coerce")
    mat = df.pivot_table(index="method", columns="slice", values="auc", aggfunc="mean", dropna=False)
    order = [n for n, _, _ in results]
    slices = list(dict.fromkeys(df["slice"]))
    return mat.reindex(index=order, columns=slices)


def paired_difference(d, tie: float = 5e-4) -> dict:
    """Summary of paired differences ``d`` (one per test slice, or block): mean, se (sample std /
    sqrt(n)), better / worse / tied (|d| <= ``tie``), wilcoxon_p (two-sided exact signed-rank
    test; 1.0 when every difference is 0; NaN below 2 pairs). The one place every paired
    comparison (suite tables, benchmarks/deep_ideas.py, benchmarks/paired_runs.py) is computed."""
    from scipy.stats import wilcoxon
    d = np.asarray(d, dtype=float)
    n = len(d)
    out = {"n": n, "mean": float(d.mean()) if n else float("nan"),
           "se": float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
           "better": int((d > tie).sum()), "worse": int((d < -tie).sum()), "tied": int((np.abs(d) <= tie).sum())}
    if n < 2:
        out["wilcoxon_p"] = float("nan")
    elif not np.any(d != 0):
        out["wilcoxon_p"] = 1.0
    else:
        out["wilcoxon_p"] = float(wilcoxon(d, alternative="two-sided").pvalue)
    return out


def paired_table(mat: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each method against ``reference`` on the test slices both have (AUC averaged over seeds).

    Columns: method, n_slices, delta_auc (mean of method - reference over slices), delta_se
    (standard error of that mean: sample std / sqrt(n)), better / worse / tied (slices, ties
    within 5e-4), wilcoxon_p (two-sided exact signed-rank test; 1.0 when every difference is 0;
    NaN below 2 slices). Slices, not (slice, seed) pairs, are the units: seeds of one slice share
    its patient and are not independent evidence.
    """
    if reference not in mat.index:
        raise ValueError(f"compare_to {reference!r} is not a method of this suite; methods: {list(mat.index)}")
    ref = mat.loc[reference]
    rows = []
    for name in mat.index:
        if name == reference:
            continue
        p = paired_difference((mat.loc[name] - ref).dropna().to_numpy(dtype=float))
        rows.append({"method": name, "n_slices": p["n"], "delta_auc": p["mean"], "delta_se": p["se"],
                     "better": p["better"], "worse": p["worse"], "tied": p["tied"], "wilcoxon_p": p["wilcoxon_p"]})
    return pd.DataFrame(rows, columns=["method", "n_slices", "delta_auc", "delta_se", "better", "worse", "tied",
                                       "wilcoxon_p"])


def paired_markdown(df: pd.DataFrame, reference: str) -> str:
    lines = [f"Paired against **{reference}** (per test slice, AUC averaged over seeds):", "",
             "| method | Δ AUC ± SE | better / worse / tied slices | Wilcoxon p |", "|---|---|---|---|"]
    for _, r in df.iterrows():
        delta = "n/a" if np.isnan(r["delta_auc"]) else (
            f"{r['delta_auc']:+.4f}" + ("" if np.isnan(r["delta_se"]) else f" ± {r['delta_se']:.4f}"))
        p = "n/a" if np.isnan(r["wilcoxon_p"]) else f"{r['wilcoxon_p']:.3g}"
        lines.append(f"| {r['method']} | {delta} | {r['better']} / {r['worse']} / {r['tied']} | {p} |")
    return "\n".join(lines) + "\n"


def plot_per_slice_auc(mat: pd.DataFrame, path: str | Path, title: str = "per-slice AUC (mean over seeds)") -> Path:
    """Heat-map of a methods x slices AUC matrix, values annotated; colour-blind-safe 'cividis'."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(path)
    n_m, n_s = mat.shape
    label_w = 0.075 * max((len(str(i)) for i in mat.index), default=4)
    fig, ax = plt.subplots(figsize=(label_w + 1.5 + 0.85 * max(n_s, 3), 1.2 + 0.45 * max(n_m, 2)))
    vals = mat.to_numpy(dtype=float)
    finite = vals[np.isfinite(vals)]
    lo = float(min(0.5, finite.min())) if finite.size else 0.5
    im = ax.imshow(np.ma.masked_invalid(vals), cmap="cividis", vmin=lo, vmax=1.0, aspect="auto")
    ax.set_xticks(range(n_s), [str(c) for c in mat.columns], rotation=45, ha="right")
    ax.set_yticks(range(n_m), [str(i) for i in mat.index])
    mid = (lo + 1.0) / 2
    for i in range(n_m):
        for j in range(n_s):
            v = vals[i, j]
            ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if np.isfinite(v) and v > mid else "white")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="AUC", fraction=0.04, pad=0.02)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def write_tables(results: list[tuple[str, str, dict]], out_dir: str | Path, notes: list[str] | None = None,
                 compare_to: str | None = None) -> pd.DataFrame:
    """``table.csv``, ``table.md`` and ``per_slice_auc.png`` (+ ``per_slice_auc.csv``) in ``out_dir``;
    with ``compare_to`` (a method name) also ``paired.csv`` and a paired table in ``table.md``."""
    out = Path(out_dir)
    df = suite_table(results)
    with atomic_path(out / "table.csv") as tmp:
        df.to_csv(tmp, index=False)
    mat = per_slice_auc(results)
    text = table_markdown(df, notes)
    if compare_to is not None and compare_to in mat.index:
        paired = paired_table(mat, compare_to)
        with atomic_path(out / "paired.csv") as tmp:
            paired.to_csv(tmp, index=False)
        text += "\n" + paired_markdown(paired, compare_to)
    atomic_write_text(out / "table.md", text)
    with atomic_path(out / "per_slice_auc.csv") as tmp:
        mat.to_csv(tmp)
    if mat.size:
        plot_per_slice_auc(mat, out / "per_slice_auc.png")
    return df
