"""Does the handcrafted image embedding carry cancer signal on her2st A1 (the one annotated
section with an H&E image)? Spatially blocked cross-validation of a logistic regression on
``img_emb`` alone: the slice is cut into 4 blocks (k-means on spot coordinates, and x/y
quadrants at the median), each block is predicted by a model fitted on the other three
(standardisation fitted on the training blocks too). Cancer = invasive cancer + cancer in situ;
undetermined excluded. Prints the pooled out-of-block AUC and per-block AUCs.

    PYTHONPATH=. .venv/bin/python benchmarks/image_signal_a1.py [--data ../shared/data/her2st]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def blocked_auc(X: np.ndarray, y: np.ndarray, blocks: np.ndarray, C: float = 0.1) -> tuple[float, list]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    score = np.full(len(y), np.nan)
    per = []
    for b in np.unique(blocks):
        te = blocks == b
        if len(np.unique(y[~te])) < 2:
            continue
        m = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
        m.fit(X[~te], y[~te])
        score[te] = m.predict_proba(X[te])[:, 1]
        per.append((int(b), int(te.sum()), float(roc_auc_score(y[te], score[te])) if len(np.unique(y[te])) == 2 else None))
    ok = ~np.isnan(score)
    return float(roc_auc_score(y[ok], score[ok])), per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "her2st"))
    args = ap.parse_args()
    from sklearn.cluster import KMeans
    from spagraph.embed.image import get_image_encoder
    from spagraph.io import read_her2st
    a = read_her2st(args.data, "A1")
    lab = a.obs["cancer"]
    keep = lab.notna().to_numpy()
    y = lab[keep].astype(int).to_numpy()
    xy = a.obsm["spatial"][keep]
    print(f"A1: {a.n_obs} spots, {keep.sum()} labelled (undetermined excluded), {y.sum()} cancer")
    km = KMeans(4, n_init=10, random_state=0).fit_predict(xy)
    quad = (xy[:, 0] > np.median(xy[:, 0])).astype(int) * 2 + (xy[:, 1] > np.median(xy[:, 1])).astype(int)
    for blocks_name, blocks in (("k-means(4) blocks", km), ("x/y quadrants", quad)):
        print(f"  {blocks_name}: cancer fraction per block "
              + ", ".join(f"{y[blocks == b].mean():.2f} (n={int((blocks == b).sum())})" for b in np.unique(blocks)))
    for desc, st in (("handcrafted default (scales 1.0 + 2.8)", {}),
                     ("handcrafted scale 1.0 only", {"patch_scales": [1.0]}),
                     ("handcrafted scale 2.8 only", {"patch_scales": [2.8]})):
        t = time.perf_counter()
        emb = get_image_encoder("handcrafted", st).encode(a)[keep]
        dt = time.perf_counter() - t
        res = {bn: blocked_auc(emb, y, bl) for bn, bl in (("kmeans", km), ("quadrants", quad))}
        print(f"{desc:42s} d={emb.shape[1]:3d} ({dt:4.1f} s): blocked AUC k-means {res['kmeans'][0]:.3f}, "
              f"quadrants {res['quadrants'][0]:.3f}")
        for bn, (_, per) in res.items():
            print(f"    {bn:9s} per block (block, n, AUC): " + "; ".join(
                f"{b}, {n}, {'-' if v is None else f'{v:.3f}'}" for b, n, v in per))
    # controls: labels permuted within blocks (should give ~0.5), and tissue fraction alone
    emb = get_image_encoder("handcrafted", {}).encode(a)[keep]
    rng = np.random.default_rng(0)
    perm = y.copy()
    for b in np.unique(km):
        perm[km == b] = rng.permutation(y[km == b])
    from spagraph.embed.handcrafted import FEATURE_NAMES
    tf = [i for i, f in enumerate(FEATURE_NAMES * 2) if f == "tissue_frac"]
    print(f"{'control: labels permuted within blocks':42s}        blocked AUC k-means {blocked_auc(emb, perm, km)[0]:.3f}")
    print(f"{'control: tissue fraction only (2 scales)':42s}        blocked AUC k-means {blocked_auc(emb[:, tf], y, km)[0]:.3f}, "
          f"quadrants {blocked_auc(emb[:, tf], y, quad)[0]:.3f}")
    # a reference on the same folds: the gene PCA (fitted on the whole slice, unsupervised)
    from spagraph.embed.gene import fit_gene_encoder
    g = fit_gene_encoder("pca", [a], {"n_hvg": 2000, "n_pcs": 50}).transform(a)[keep]
    print(f"{'reference: gene pca (50 PCs)':42s}        blocked AUC k-means {blocked_auc(g, y, km)[0]:.3f}, "
          f"quadrants {blocked_auc(g, y, quad)[0]:.3f}")


if __name__ == "__main__":
    main()
