"""Rich progress for runs (fold x seed) and epochs, and the closing summary table."""
from __future__ import annotations

import numpy as np


class RunProgress:
    def __init__(self, enabled: bool, n_runs: int, epochs: int):
        self.enabled = enabled
        self.n_runs, self.epochs = n_runs, epochs
        self._p = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self._p.__enter__()
            self._runs = self._p.add_task("runs", total=self.n_runs, info="")
            self._ep = self._p.add_task("epochs", total=self.epochs, info="")
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)

    def start_run(self, name: str) -> None:
        if self._p:
            self._p.update(self._ep, completed=0, description=name, info="")

    def epoch(self, epoch: int, rec: dict) -> None:
        if self._p:
            auc = rec.get("val_auc")
            self._p.update(self._ep, completed=epoch + 1,
                           info=f"loss {rec['loss']:.3f}" + (f"  val AUC {auc:.3f}" if auc is not None else ""))

    def end_run(self, rows: list[dict]) -> None:
        if self._p:
            aucs = [r["auc"] for r in rows if r.get("auc") is not None]
            self._p.update(self._runs, advance=1, info=f"last test AUC {np.mean(aucs):.3f}" if aucs else "")

    def advance_run(self, name: str) -> None:
        if self._p:
            self._p.update(self._runs, advance=1, info=name)


def _flags(df) -> str:
    """Guard flags of a slice's rows: DEGENERATE -> fallback, or the number of noted extremes."""
    if "flags" not in df:
        return ""
    def listed(f):   # rows written before the guard existed hold NaN (a float) here, not a list
        return list(f) if isinstance(f, (list, tuple)) else []
    deg = [str(r.get("threshold_method")) for _, r in df.iterrows() if "degenerate" in listed(r.get("flags"))]
    if deg:
        return f"DEGENERATE x{len(deg)} -> {','.join(sorted(set(deg)))}"
    n = sum(1 for f in df["flags"] if listed(f))
    return f"{n} noted" if n else ""


def summary_table(metrics: dict):
    """Two rich tables (a ``Group``), each within 80 columns: per slice (mean over seeds) AUC, F1 /
    sensitivity / specificity of the rule in force and F1 of the mixture rule, with mean and std;
    then the decisions: the rule, the label-free estimated cancer fraction next to the true one,
    the calibration error and the guard's flags (prevalence: MAE over slices). Slice names are
    shortened (ellipsis), numbers never (no_wrap columns)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    import pandas as pd
    rows = pd.DataFrame(metrics["per_slice"])
    on = " (validation slices)" if any(r.get("role") == "validation" for r in metrics["per_slice"]) else ""

    def table(title, cols, caption):
        t = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
                  collapse_padding=True)
        for c in cols:
            if c == "slice":
                t.add_column(c, justify="left", overflow="ellipsis", no_wrap=True, max_width=10)
            elif c in ("rule", "flags"):
                t.add_column(c, justify="left", overflow="fold", max_width=28)
            else:
                t.add_column(c, justify="right", no_wrap=True)
        return t

    t = table(f"{metrics.get('experiment', '')} — protocol {metrics['protocol']}{on}, undetermined "
              f"{metrics['undetermined']}, threshold {metrics.get('threshold_method')}",
              ("slice", "seeds", "n", "AUC", "F1", "sens.", "spec.", "F1@mix"),
              "F1 / sensitivity / specificity of the rule in force (auto: chosen by inner folds); F1@mix = the "
              "mixture rule. Every rule side by side: metrics.json 'decisions' / the report.")
    d = table("decisions", ("slice", "rule", "est. frac.", "true", "ECE", "flags"),
              "est. frac. = label-free estimated cancer fraction, true = labelled fraction; ECE = calibration "
              "error of the calibrated scores; flags = guard (DEGENERATE: calls replaced by the named fallback)")
    fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"
    for s, df in rows.groupby("slice", sort=False):
        m = lambda k: pd.to_numeric(df[k], errors="coerce").mean() if k in df and df[k].notna().any() else None
        t.add_row(str(s), str(len(df)), str(int(df["n"].iloc[0])), fmt(m("auc")), fmt(m("f1")), fmt(m("sensitivity")),
                  fmt(m("specificity")), fmt(m("f1_mixture")))
        d.add_row(str(s), ",".join(sorted(set(map(str, df["rule"])))) if "rule" in df else "",
                  fmt(m("prevalence_estimate")), fmt(m("true_fraction")), fmt(m("ece")), _flags(df))
    mean, std = metrics["mean"], metrics["std"]
    keys = ("auc", "f1", "sensitivity", "specificity", "f1_mixture")
    t.add_row("mean", "", "", *[fmt(mean.get(k)) for k in keys], style="bold")
    t.add_row("± std", "", "", *[fmt(std.get(k)) for k in keys])
    d.add_row("mean", "", "MAE " + fmt((metrics.get("decisions") or {}).get("prevalence_mae")), "",
              fmt(mean.get("ece")), "", style="bold")
    return Group(t, d)
