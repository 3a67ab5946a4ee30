"""Score another method's shipped per-spot outputs with spagraph's own metric code.

Layout (SpaCancer's, see ``reference/README.md``): per slice ``<S>_labels3.txt`` (one integer per
row of the slice's count file: 2 cancer, 1 immune, 0 other, -1 undetermined) and ``<S>_probs.txt``
(one score per row after dropping the -1 rows, min-max normalised per slice).

Spots are matched by position in the count file's row order, which is the order of our reader's
spots (``read_her2st`` keeps the count file's rows). Labels used for scoring are OUR labels
(``obs[label_key]``); the shipped labels are only checked against them (mismatches counted).
AUC / AP are the shipped scores' ranking; F1 is computed at 0.5 on the shipped (min-max) scores,
which is NOT the shipped method's own thresholded F1.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spagraph.train.metrics import binary_metrics, mean_std

REF_THRESHOLD = 0.5
F1_NOTE = ("F1/accuracy/sensitivity/specificity at threshold 0.5 on the shipped min-max normalised scores "
           "(not the method's own quantile-matched thresholds)")


def _read_ints(path: Path) -> np.ndarray:
    return np.loadtxt(path, dtype=float, ndmin=1).astype(int)


def score_reference_slice(ref_dir: str | Path, name: str, adata, label_key: str = "cancer",
                          seed: int = 42) -> tuple[dict, pd.DataFrame]:
    """Metrics row and per-spot table of one slice of a reference directory."""
    ref_dir = Path(ref_dir)
    lpath, ppath = ref_dir / f"{name}_labels3.txt", ref_dir / f"{name}_probs.txt"
    for p in (lpath, ppath):
        if not p.exists():
            raise FileNotFoundError(f"reference {ref_dir}: {p.name} not found for slice {name!r}")
    lab3 = _read_ints(lpath)
    probs = np.loadtxt(ppath, dtype=float, ndmin=1)
    if len(lab3) != adata.n_obs:
        raise ValueError(f"reference {lpath}: {len(lab3)} labels but slice {name} has {adata.n_obs} spots "
                         "(expected one per count-file row)")
    keep = lab3 != -1
    if len(probs) != int(keep.sum()):
        raise ValueError(f"reference {ppath}: {len(probs)} scores but {int(keep.sum())} spots not labelled -1")
    score = np.full(adata.n_obs, np.nan)
    score[keep] = probs
    ours = adata.obs[label_key].astype("Float32").to_numpy(dtype=float, na_value=np.nan)
    both = keep & ~np.isnan(ours)
    mismatch = int(((lab3[both] == 2).astype(int) != ours[both].astype(int)).sum())
    # scored: spots with a shipped score and one of our labels
    y, s = ours[both].astype(int), score[both]
    row = {"slice": name, "seed": seed, "threshold_method": "fixed_0.5_on_shipped_minmax",
           **binary_metrics(y, s, REF_THRESHOLD),
           "n_label_mismatch": mismatch, "n_ours_labelled_unscored": int((~keep & ~np.isnan(ours)).sum()),
           "n_shipped_scored_unlabelled": int((keep & np.isnan(ours)).sum())}
    pred = pd.DataFrame({"slice": name, "spot": list(map(str, adata.obs_names[keep])), "seed": seed,
                         "score": probs, "pred": (probs >= REF_THRESHOLD).astype(int),
                         "label": pd.array(ours[keep], dtype="Float32").astype("Int8")})
    return row, pred


def score_reference(ref_dir: str | Path, slices: dict, label_key: str = "cancer", seed: int = 42) -> tuple[dict, pd.DataFrame]:
    """Score every slice of ``slices`` (name -> AnnData from our reader) against ``ref_dir``.

    Returns ``(metrics, predictions)`` in the runner's ``metrics.json`` / ``predictions.csv`` shape.
    """
    rows, preds = [], []
    for name, a in slices.items():
        r, p = score_reference_slice(ref_dir, name, a, label_key, seed)
        rows.append(r)
        preds.append(p)
    mean, std, count = mean_std(rows, ("auc", "ap", "f1", "accuracy", "sensitivity", "specificity"))
    metrics = {"protocol": "reference", "reference": str(ref_dir), "undetermined": "excluded",
               "threshold_method": "fixed_0.5_on_shipped_minmax", "note": F1_NOTE,
               "per_slice": rows, "mean": mean, "std": std, "n_defined": count, "wall_time_s": None}
    return metrics, pd.concat(preds, ignore_index=True)
