"""What makes a her2st section hard for the smoothed linear prior (issue 16: C1 and E1).

Per outer leave-one-section-out fold X (embeddings fitted on the other 7 sections, the prior's C
and smoothing as chosen by inner folds, ``--params-from``), a *diagnosis* of X that reads X's
labels (so none of these numbers choose anything; they explain test results after the fact):

- label mix: labelled spots, cancer fraction, annotation classes;
- which negatives are confused: the prior's AUC of cancer against each non-cancer annotation
  class separately, and the mean score per class;
- spatial pattern: fraction of 1-pitch neighbour pairs with the same label; the prior's AUC on
  boundary spots (a neighbour of the other label) vs interior spots;
- gene shift: a domain classifier (15-nearest-neighbours on the PCs, 5-fold CV AUC) telling X's
  spots from the training sections' spots (0.5 = indistinguishable), and the relative distance
  between X's PC covariance and the training sections';
- label shift in expression: the prior's mean score on X's negatives minus that on training negatives;
- within-section ceiling: the same features (PCs + disc means), logistic regression trained on X's
  own labels under 4 spatial k-means blocks (predict one block from the other three): how
  separable X's labels are by expression at all.

    OMP_NUM_THREADS=1 python benchmarks/weak_sections.py experiments/her2st_loso.yaml --params-from RUN/nested
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    import torch
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict, StratifiedKFold
    from spagraph.experiment.config import load_config
    from spagraph.experiment.data import load_slices, plan_folds
    from spagraph.experiment.nested import prior_scores
    from spagraph.experiment.runner import embed_and_graph
    from spagraph.experiment.tune import apply_params
    from spagraph.nn.disc_mean import with_disc_means
    from spagraph.utils import atomic_write_json
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--params-from", required=True)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(a.config)
    slices, groups = load_slices(cfg.data)
    res = {}
    for fold in plan_folds(cfg, list(slices), groups):
        x = fold.test[0]
        params = json.loads((Path(a.params_from) / f"{x}.json").read_text())["params"]
        fcfg = apply_params(cfg, params)
        graphs, _ = embed_and_graph(fcfg, slices, fold)
        sc = prior_scores(fcfg, graphs, fold.train, 0, [x] + fold.train)
        g = graphs[x]
        m = g.label_mask.numpy()
        y = g.y.numpy()[m].astype(int)
        s = sc[x][m]
        ann = np.asarray(slices[x].obs["annotation"].astype(str))[m]
        r = {"n_labelled": int(m.sum()), "cancer_fraction": float(y.mean()), "prior_auc": float(roc_auc_score(y, s)),
             "classes": {c: int((ann == c).sum()) for c in sorted(set(ann))}}
        r["mean_score"] = {c: float(s[ann == c].mean()) for c in sorted(set(ann))}
        r["auc_cancer_vs"] = {c: float(roc_auc_score(np.r_[np.ones(int(y.sum())), np.zeros(int((ann == c).sum()))],
                                                     np.r_[s[y == 1], s[ann == c]]))
                              for c in sorted(set(ann[y == 0])) if (ann == c).sum() >= 3}
        # spatial pattern on the 1-pitch graph
        ei = g.edge_index_0.numpy()
        lab = np.full(g.num_nodes, -1); lab[m] = y
        both = (lab[ei[0]] >= 0) & (lab[ei[1]] >= 0)
        r["same_label_neighbour_pairs"] = float((lab[ei[0]][both] == lab[ei[1]][both]).mean())
        boundary = np.zeros(g.num_nodes, bool)
        diff = both & (lab[ei[0]] != lab[ei[1]])
        boundary[ei[1][diff]] = True
        bm = boundary[m]
        for name, sel in (("boundary", bm), ("interior", ~bm)):
            yy = y[sel]
            r[f"auc_{name}"] = float(roc_auc_score(yy, s[sel])) if 0 < yy.sum() < len(yy) else None
            r[f"n_{name}"] = int(sel.sum())
        # gene shift: a k-nearest-neighbour domain classifier X vs training sections (a linear one sees
        # nothing: every section is standardised within itself, so section means coincide), and the
        # relative Frobenius distance between X's PC covariance and the training sections'
        xs = g.x_gene.numpy()
        xt = np.concatenate([graphs[n].x_gene.numpy() for n in fold.train])
        Xd, yd = np.r_[xt, xs], np.r_[np.zeros(len(xt)), np.ones(len(xs))]
        pd_ = cross_val_predict(KNeighborsClassifier(15), Xd, yd, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                                method="predict_proba")[:, 1]
        r["domain_auc"] = float(roc_auc_score(yd, pd_))
        ct = np.cov(xt.T)
        r["cov_distance"] = float(np.linalg.norm(np.cov(xs.T) - ct) / np.linalg.norm(ct))
        neg_tr = np.concatenate([sc[n][graphs[n].label_mask.numpy() & (graphs[n].y.numpy() == 0)] for n in fold.train])
        pos_tr = np.concatenate([sc[n][graphs[n].label_mask.numpy() & (graphs[n].y.numpy() == 1)] for n in fold.train])
        r["score_neg_test_minus_train"] = float(s[y == 0].mean() - neg_tr.mean())
        r["score_pos_test_minus_train"] = float(s[y == 1].mean() - pos_tr.mean())
        # within-section ceiling: spatial blocks
        f = with_disc_means(g.x_gene, g, g.num_scales).numpy()[m]
        blocks = KMeans(4, n_init=10, random_state=0).fit_predict(g.pos.numpy()[m])
        oof = np.zeros(len(y))
        ok = True
        for b in range(4):
            tr = blocks != b
            if len(set(y[tr])) < 2:
                ok = False; break
            clf = LogisticRegression(C=fcfg.model.linear_C, class_weight="balanced", max_iter=5000).fit(f[tr], y[tr])
            oof[~tr] = clf.decision_function(f[~tr])
        r["within_section_blocked_auc"] = float(roc_auc_score(y, oof)) if ok else None
        res[x] = r
        print(f"{x}: prior {r['prior_auc']:.3f} | cancer {r['cancer_fraction']:.2f} of {r['n_labelled']} | "
              f"cancer vs {', '.join(f'{c} {v:.2f}' for c, v in r['auc_cancer_vs'].items())} | same-label pairs "
              f"{r['same_label_neighbour_pairs']:.2f} | AUC boundary {r['auc_boundary']} ({r['n_boundary']}) interior "
              f"{r['auc_interior']} | domain AUC {r['domain_auc']:.3f} cov dist {r['cov_distance']:.2f} | neg score shift {r['score_neg_test_minus_train']:+.3f} "
              f"pos {r['score_pos_test_minus_train']:+.3f} | within-section {r['within_section_blocked_auc']}", flush=True)
    if a.out:
        atomic_write_json(Path(a.out), res)


if __name__ == "__main__":
    main()
