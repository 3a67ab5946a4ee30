"""How far predictions move when a new slice lacks some of the model's genes.

Protocol (her2st, genes + space, settings of experiments/her2st_loso.yaml):
- model: protocol ``fit`` trained on A1 B1 C1 D1 E1 F1, validation section G2 (whole), ``--seeds``
  seeds (default 1); H1 is never seen (not in training, validation, scaling or HVG choice);
- held-out H1: scores with all genes ("full") vs scores after removing 5 %, 20 %, 50 % of the
  model's input genes at random (``--draws`` draws each) from the slice, filled as spagraph does
  (0 after standardisation = training mean) and, for comparison, as 0 counts (the naive fill);
  reported: Pearson r of the scores vs full, AUC of each against the pathologist labels
  (undetermined excluded), and the missing genes' share of the gene encoder's weight;
- B4 (her2st_unlabelled, patient B: within-patient for this model, no labels): its real mismatch
  (genes the file lacks) and the same random removals, r vs B4's own scores.

    OMP_NUM_THREADS=1 python benchmarks/gene_mismatch.py [--data ../shared/data] [--seeds 0]
        [--set embed.settings.slice_norm=none]   # without per-slice z-scoring the two fills differ
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]


def zero_counts(a, genes):
    """A copy of ``a`` whose ``genes`` columns are all-zero counts (the naive way to fill)."""
    b = a.copy()
    mask = np.ones(b.n_vars)
    mask[b.var_names.get_indexer(list(genes))] = 0.0
    b.X = sp.csr_matrix(sp.csr_matrix(b.X) @ sp.diags(mask)).astype(np.float32)
    return b


def main() -> None:
    import pandas as pd
    from sklearn.metrics import roc_auc_score
    import spagraph
    from spagraph.io import read_her2st
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--out", default=None, help="write the table as CSV here")
    p.add_argument("--set", dest="set_", action="append", default=[],
                   help="config override, e.g. --set embed.settings.slice_norm=none (repeatable)")
    args = p.parse_args()
    import torch
    torch.set_num_threads(1)
    data = Path(args.data)
    train_names = ["A1", "B1", "C1", "D1", "E1", "F1", "G2"]        # G2 last: the validation section
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        slices = {n: read_her2st(data / "her2st", n) for n in train_names}
        h1 = read_her2st(data / "her2st", "H1")
        b4 = read_her2st(data / "her2st_unlabelled", "B4", image=False)
    t0 = time.time()
    cfg = spagraph.tl.as_config(ROOT / "experiments" / "her2st_loso.yaml", args.set_)
    model = spagraph.tl.fit(slices, cfg, seeds=args.seeds)
    print(f"fit: {time.time() - t0:.0f} s; trained on {model.members[0].meta['fold']['train']}, "
          f"validation {model.members[0].meta['fold']['val']}")
    genes = model.genes
    weights = model.members[0].gene_encoder.gene_weights()
    total = sum(weights.values())

    def scores(a):
        b = model.predict(a, copy=True, n_mc=0, max_missing_weight=1.0)
        return b.obs["spagraph_score"].to_numpy(), b.uns["spagraph"].get("genes", {})

    rows = []
    for name, a in (("H1 (held out)", h1), ("B4 (unlabelled)", b4)):
        full, grep = scores(a)
        y = a.obs["cancer"].astype("Float32").to_numpy(dtype=float, na_value=np.nan) if "cancer" in a.obs else None
        lab = y is not None and (~np.isnan(y)).any()
        auc = (lambda s: float(roc_auc_score(y[~np.isnan(y)], s[~np.isnan(y)]))) if lab else (lambda s: np.nan)
        rows.append({"slice": name, "removed": "none (as read)", "fill": "-", "n_missing": grep.get("n_missing", 0),
                     "weight_share": grep.get("missing_weight_share", 0.0), "r_vs_full": 1.0, "auc": auc(full),
                     "auc_full": auc(full)})
        present = [g for g in genes if g in set(a.var_names)]
        for frac in (0.05, 0.2, 0.5):
            for d in range(args.draws):
                rng = np.random.default_rng(1000 * d + int(frac * 100))
                drop = list(rng.choice(present, int(round(frac * len(genes))), replace=False))
                keep = [g for g in a.var_names if g not in set(drop)]
                s_mean, g = scores(a[:, keep].copy())
                s_zero, _ = scores(zero_counts(a, drop))
                share = sum(weights[x] for x in drop) / total
                for fill, s in (("training mean (spagraph)", s_mean), ("0 counts (naive)", s_zero)):
                    rows.append({"slice": name, "removed": f"{frac:.0%} random (draw {d})", "fill": fill,
                                 "n_missing": g.get("n_missing"), "weight_share": share,
                                 "r_vs_full": float(np.corrcoef(s, full)[0, 1]), "auc": auc(s), "auc_full": auc(full)})
    df = pd.DataFrame(rows)
    if args.out:
        df.to_csv(args.out, index=False)
    pd.set_option("display.width", 140)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    df["frac"] = df["removed"].str.extract(r"^(\d+%)")[0].fillna("none")
    agg = df.groupby(["slice", "frac", "fill"], sort=False).agg(
        n_missing=("n_missing", "mean"), weight_share=("weight_share", "mean"), r_mean=("r_vs_full", "mean"),
        r_min=("r_vs_full", "min"), auc_mean=("auc", "mean"), auc_full=("auc_full", "first")).reset_index()
    print()
    print(agg.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
