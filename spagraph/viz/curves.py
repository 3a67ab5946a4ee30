"""ROC, precision-recall and calibration curves (matplotlib, Okabe-Ito colours).

Input convention: ``runs`` is a list of (label, score) pairs, one per seed, of one slice;
labels are 0/1 with undetermined spots already removed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from spagraph.viz.spatial import OKABE_ITO


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, dpi=110) -> Path:
    from spagraph.utils import atomic_path
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    _plt().close(fig)
    return path


def _two_classes(y) -> bool:
    return len(np.unique(np.asarray(y))) == 2


def plot_roc_pr(runs: list[tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "",
                mean_score: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """ROC (left) and PR (right) of one slice: a thin line per seed, a thick one for the
    seed-ensemble mean score when ``mean_score`` = (label, mean score) is given."""
    from sklearn.metrics import auc as _auc, average_precision_score, precision_recall_curve, roc_curve
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(7.6, 3.6), constrained_layout=True)
    drawn = False
    prevalence = None
    for i, (y, s) in enumerate(runs):
        if not _two_classes(y):
            continue
        fpr, tpr, _ = roc_curve(y, s)
        pr, rc, _ = precision_recall_curve(y, s)
        a1.plot(fpr, tpr, color=OKABE_ITO[4], lw=0.8, alpha=0.45, label="seeds" if not drawn else None)
        a2.plot(rc, pr, color=OKABE_ITO[4], lw=0.8, alpha=0.45, drawstyle="steps-post", label="seeds" if not drawn else None)
        prevalence = float(np.mean(y))
        drawn = True
    if mean_score is not None and _two_classes(mean_score[0]):
        y, s = mean_score
        fpr, tpr, _ = roc_curve(y, s)
        pr, rc, _ = precision_recall_curve(y, s)
        a1.plot(fpr, tpr, color=OKABE_ITO[5], lw=2, label=f"seed mean (AUC {_auc(fpr, tpr):.3f})")
        a2.plot(rc, pr, color=OKABE_ITO[5], lw=2, drawstyle="steps-post",
                label=f"seed mean (AP {average_precision_score(y, s):.3f})")
        prevalence = float(np.mean(y))
        drawn = True
    a1.plot([0, 1], [0, 1], ls=":", color="#777777", lw=0.8)
    if prevalence is not None:
        a2.axhline(prevalence, ls=":", color="#777777", lw=0.8, label=f"prevalence {prevalence:.2f}")
    for ax, xl, yl, t in ((a1, "false positive rate", "true positive rate", "ROC"),
                          (a2, "recall", "precision", "precision-recall")):
        ax.set_xlim(-0.01, 1.01); ax.set_ylim(-0.01, 1.01)
        ax.set_xlabel(xl, fontsize=9); ax.set_ylabel(yl, fontsize=9); ax.set_title(t, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25)
        if drawn:
            ax.legend(fontsize=7, loc="lower right" if ax is a1 else "lower left")
    if not drawn:
        for ax in (a1, a2):
            ax.text(0.5, 0.5, "undefined: one class in labels", ha="center", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_roc_all(per_slice: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """All slices' ROC and PR curves (seed-mean scores) in one figure, one colour per slice."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 4.2), constrained_layout=True)
    styles = ["-", "--", "-.", ":"]
    for i, (name, (y, s)) in enumerate(per_slice.items()):
        if not _two_classes(y):
            continue
        c, ls = OKABE_ITO[i % 8], styles[(i // 8) % 4]
        fpr, tpr, _ = roc_curve(y, s)
        pr, rc, _ = precision_recall_curve(y, s)
        a1.plot(fpr, tpr, color=c, ls=ls, lw=1.4, label=f"{name} ({roc_auc_score(y, s):.2f})")
        a2.plot(rc, pr, color=c, ls=ls, lw=1.4, drawstyle="steps-post", label=f"{name} ({average_precision_score(y, s):.2f})")
    a1.plot([0, 1], [0, 1], ls=":", color="#777777", lw=0.8)
    for ax, xl, yl, t in ((a1, "false positive rate", "true positive rate", "ROC (AUC)"),
                          (a2, "recall", "precision", "precision-recall (AP)")):
        ax.set_xlim(-0.01, 1.01); ax.set_ylim(-0.01, 1.01)
        ax.set_xlabel(xl, fontsize=9); ax.set_ylabel(yl, fontsize=9); ax.set_title(t, fontsize=10)
        ax.grid(alpha=0.25); ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="lower right" if ax is a1 else "lower left", ncol=1 if len(per_slice) <= 8 else 2)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def calibration_bins(y: np.ndarray, s: np.ndarray, n_bins: int = 10) -> dict:
    """Equal-width reliability bins: mean score, observed cancer fraction and count per non-empty
    bin, plus the expected calibration error (count-weighted |observed - mean score|)."""
    y, s = np.asarray(y, float), np.asarray(s, float)
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(s, edges[1:-1]), 0, n_bins - 1)
    mean_s, frac, count = [], [], []
    for b in range(n_bins):
        m = idx == b
        if m.any():
            mean_s.append(float(s[m].mean())); frac.append(float(y[m].mean())); count.append(int(m.sum()))
    cnt = np.array(count, float)
    ece = float(np.sum(cnt * np.abs(np.array(frac) - np.array(mean_s))) / cnt.sum()) if len(cnt) else None
    return {"mean_score": mean_s, "fraction_positive": frac, "count": count, "ece": ece}


def plot_calibration(per_slice: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, n_bins: int = 10,
                     title: str = "calibration") -> Path:
    """Reliability diagram: pooled over slices (thick) and per slice (thin), score histogram below."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(4.8, 5.6), height_ratios=[3, 1], sharex=True, constrained_layout=True)
    ys = [np.asarray(y, float) for y, _ in per_slice.values()]
    ss = [np.asarray(s, float) for _, s in per_slice.values()]
    for i, (name, (y, s)) in enumerate(per_slice.items()):
        b = calibration_bins(y, s, n_bins)
        a1.plot(b["mean_score"], b["fraction_positive"], color=OKABE_ITO[i % 8], lw=0.9, alpha=0.6, marker=".",
                ms=3, label=name)
    if ys:
        yall, sall = np.concatenate(ys), np.concatenate(ss)
        b = calibration_bins(yall, sall, n_bins)
        a1.plot(b["mean_score"], b["fraction_positive"], color="#000000", lw=2.2, marker="o", ms=4,
                label=f"pooled (ECE {b['ece']:.3f})" if b["ece"] is not None else "pooled")
        a2.hist([sall[yall == 0], sall[yall == 1]], bins=np.linspace(0, 1, n_bins * 2 + 1), stacked=True,
                color=[OKABE_ITO[1], OKABE_ITO[5]], label=["non-cancer", "cancer"])
        a2.legend(fontsize=7)
    a1.plot([0, 1], [0, 1], ls=":", color="#777777", lw=0.8)
    a1.set_xlim(0, 1); a1.set_ylim(-0.02, 1.02)
    a1.set_ylabel("observed cancer fraction", fontsize=9); a1.set_title(title, fontsize=10)
    a1.legend(fontsize=7, loc="upper left", ncol=2); a1.grid(alpha=0.25); a1.tick_params(labelsize=8)
    a2.set_xlabel("mean predicted score", fontsize=9); a2.set_ylabel("spots", fontsize=9); a2.tick_params(labelsize=8)
    return _save(fig, path)
