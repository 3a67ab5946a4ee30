"""Per-slice classification metrics with explicit handling of undefined cases."""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """AUC, AP, F1, accuracy, sensitivity, specificity of one slice.

    Parameters
    ----------
    y : (n,) 0/1 labels (undetermined already removed). score : (n,) in [0, 1].

    Returns
    -------
    dict; a metric that is undefined on this slice (one class only, or all scores
    equal for AUC) is ``None`` and the reason is listed under ``"undefined"`` —
    never silently 0.5.
    """
    y = np.asarray(y, dtype=int)
    score = np.asarray(score, dtype=float)
    pred = (score >= threshold).astype(int)
    out: dict = {"n": int(len(y)), "n_pos": int(y.sum()), "threshold": float(threshold), "undefined": []}
    if len(y) != len(score):
        raise ValueError(f"binary_metrics: {len(y)} labels but {len(score)} scores")
    bad = ~np.isfinite(score)
    if bad.any():
        raise ValueError(f"binary_metrics: {int(bad.sum())} of {len(score)} scores are NaN/Inf "
                         f"(first at index {int(np.argmax(bad))})")
    one_class = len(np.unique(y)) < 2
    collapsed = len(score) == 0 or np.ptp(score) == 0
    if one_class:
        out["auc"] = out["ap"] = None
        out["undefined"].append(("no labelled spots" if len(y) == 0 else
                                 f"one class in labels (all {int(y[0])}): AUC/AP undefined"))
    elif collapsed:
        # a constant score ranks nothing: reporting AUC 0.5 / AP = prevalence would hide the collapse
        out["auc"] = out["ap"] = None
    else:
        out["auc"] = float(roc_auc_score(y, score))
        out["ap"] = float(average_precision_score(y, score))
    if collapsed:
        out["undefined"].append("collapsed: all scores equal: AUC/AP undefined")
    calls = call_metrics(y, pred)
    out["f1"] = calls["f1"]
    out["accuracy"] = float((pred == y).sum() / max(len(y), 1))
    out["sensitivity"], out["specificity"] = calls["sensitivity"], calls["specificity"]
    return out


def call_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    """F1, sensitivity and specificity of 0/1 calls ``pred`` against 0/1 labels ``y`` (each ``None``
    when its denominator is 0). Shared by :func:`binary_metrics` and the decision rules' scoring."""
    y = np.asarray(y, dtype=int)
    pred = np.asarray(pred, dtype=int)
    tp = int(((pred == 1) & (y == 1)).sum()); fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum()); tn = int(((pred == 0) & (y == 0)).sum())
    return {"f1": float(2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) > 0 else None,
            "sensitivity": float(tp / (tp + fn)) if (tp + fn) > 0 else None,
            "specificity": float(tn / (tn + fp)) if (tn + fp) > 0 else None}


def mean_std(rows: list[dict], keys=("auc", "ap", "f1", "f1_val_threshold")) -> tuple[dict, dict, dict]:
    """Mean and std over rows, skipping undefined (None/NaN) values; also the count used."""
    mean, std, count = {}, {}, {}
    for k in keys:
        v = np.array([r[k] for r in rows if r.get(k) is not None and not math.isnan(r[k])], dtype=float)
        count[k] = int(len(v))
        mean[k] = float(v.mean()) if len(v) else None
        std[k] = float(v.std(ddof=0)) if len(v) else None
    return mean, std, count


def _best_cut(y: np.ndarray, score: np.ndarray, objective) -> float:
    """The score at which ``objective(tp, fp)`` (arrays over cuts "predict positive when score >=
    s", highest first) is largest; cuts only between distinct scores; ties: the lowest threshold."""
    order = np.argsort(-score, kind="stable")
    s, yy = score[order], y[order]
    tp, fp = np.cumsum(yy), np.cumsum(1 - yy)
    value = np.where(np.r_[s[1:] != s[:-1], True], objective(tp, fp), -np.inf)
    return float(s[int(np.argmax(value))])


def best_f1_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """Threshold maximising F1 on labelled scores (ties: the lowest such threshold).

    Returns 0.5 when ``y`` has no positive.
    """
    y = np.asarray(y, dtype=int)
    score = np.asarray(score, dtype=float)
    if y.sum() == 0 or len(y) == 0:
        return 0.5
    n_pos = y.sum()
    return _best_cut(y, score, lambda tp, fp: 2 * tp / (2 * tp + fp + (n_pos - tp)))


def best_youden_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 on labelled scores.

    Unlike the F1-optimal threshold, J does not depend on the share of positives, so the
    threshold carries over to a slice with another cancer fraction. Ties: the lowest such
    threshold; 0.5 when ``y`` holds a single class.
    """
    y = np.asarray(y, dtype=int)
    score = np.asarray(score, dtype=float)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    return _best_cut(y, score, lambda tp, fp: tp / n_pos - fp / n_neg)


def validation_thresholds(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """(F1-optimal, Youden-optimal) thresholds of validation scores; ``y`` NaN where unlabelled
    (those spots are ignored; 0.5 for both when none is labelled)."""
    m = ~np.isnan(np.asarray(y, dtype=float))
    if not m.any():
        return 0.5, 0.5
    yy, ss = np.asarray(y)[m].astype(int), np.asarray(score)[m]
    return best_f1_threshold(yy, ss), best_youden_threshold(yy, ss)


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC estimate (Hanley & McNeil 1982, exponential approximation)."""
    if n_pos < 1 or n_neg < 1:
        return float("inf")
    a = float(auc)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return float(np.sqrt(max(var, 0.0)))


def delong_paired(y: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[float, float, float]:
    """AUCs of two scores of the same spots and the variance of their difference (DeLong, DeLong &
    Clarke-Pearson 1988): ``(auc1, auc2, var(auc1 - auc2))``.

    Paired: the structural components (each positive's share of negatives it out-scores, and each
    negative's share of positives above it) are computed per score, and the covariance between
    the two scores enters the variance, so two near-identical scorers have a near-zero
    difference variance. Ties count one half. O(n log n) through ranks (scipy ``rankdata``).
    """
    from scipy.stats import rankdata
    y = np.asarray(y).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return float("nan"), float("nan"), float("inf")
    aucs, v10, v01 = [], [], []
    for s in (np.asarray(s1, float), np.asarray(s2, float)):
        r_all = rankdata(s)
        r_pos, r_neg = rankdata(s[y]), rankdata(s[~y])
        v10.append((r_all[y] - r_pos) / n)            # per positive: share of negatives below it
        v01.append(1.0 - (r_all[~y] - r_neg) / m)     # per negative: share of positives above it
        aucs.append(float(v10[-1].mean()))
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return aucs[0], aucs[1], float(max(var, 0.0))
