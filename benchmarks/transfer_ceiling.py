"""What limits a transfer experiment's target scores: the batch effect, or the features themselves?

    python benchmarks/transfer_ceiling.py experiments/transfer/synthetic_a_to_b.yaml
    python benchmarks/transfer_ceiling.py experiments/transfer/synthetic_a_to_b.yaml --data-seeds 11 12
    python benchmarks/transfer_ceiling.py experiments/transfer/synthetic_a_to_b.yaml --no-batch-effect

For the experiment's transfer fold (embeddings fitted on the source training slices, exactly as
``spagraph run`` does), two logistic regressions on the same spot features (each modality's
embedding and its disc means at every graph scale: the model's linear prior, ``model.linear_C``,
balanced classes) score every target slice:

* ``source prior``: trained on the fold's source training slices only; label-free for the target
  (it is the prior ``model.linear_path: true`` starts from and, under the one-SE rule, may keep);
* ``ORACLE``: trained on the *other target slices' labels* (leave-one-target-slice-out, so no spot
  of the scored slice, nor its spatial neighbourhood, trains it). It reads target labels: a
  diagnosis of how separable the classes are in these features, never a method.

Per target slice: AUC, the best F1 of any threshold and the F1 of the cut at the true cancer
fraction (both use the slice's labels: ceilings of the ranking, not rules). ``--data-seeds A B``
replaces the seeds of the first two synthetic sources (a development pair: other tissue, same
generator and batch effect), ``--no-batch-effect`` drops every source's ``batch_effect`` (a
diagnosis: the same tissue measured without the shift). Nothing here trains the deep model.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def f1_ceilings(y, s) -> tuple[float, float]:
    """``(best F1 over every threshold, F1 of calling the top round(mean(y) * n) spots)`` of scores
    ``s`` against 0/1 labels ``y`` (both use the labels: bounds, not rules)."""
    y = np.asarray(y, dtype=int)
    s = np.asarray(s, dtype=float)
    if len(y) == 0 or y.sum() == 0:
        raise ValueError("f1_ceilings needs at least one positive label")
    ys = y[np.argsort(-s, kind="stable")]
    f1 = 2 * np.cumsum(ys) / (np.arange(1, len(ys) + 1) + ys.sum())
    k = max(1, int(round(ys.mean() * len(ys))))
    return float(f1.max()), float(f1[k - 1])


def prior_features(g):
    """(n, F) float64 numpy: every modality's embedding and its disc means at every scale, zeroed
    where the slice lacks it (the features :func:`spagraph.train.fit.fit_linear_prior` uses)."""
    import torch
    from spagraph.nn.disc_mean import with_disc_means
    parts = [with_disc_means(g[k], g, g.num_scales) * g[f].float()[:, None]
             for k, f in (("x_img", "has_img"), ("x_gene", "has_gene")) if g[k].shape[1] > 0]
    return torch.cat(parts, 1).double().numpy()


def fit_scorer(train: list, C: float, seed: int = 0):
    """L2 logistic regression (balanced) on the labelled spots of ``train``; returns
    ``score(graph) -> (n,) decision values``."""
    from sklearn.linear_model import LogisticRegression
    X = np.vstack([prior_features(g)[g.label_mask.numpy()] for g in train])
    y = np.concatenate([g.y.numpy()[g.label_mask.numpy()] for g in train]).astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError("fit_scorer: the training spots hold a single class")
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=5000, random_state=seed).fit(X, y)
    return lambda g: clf.decision_function(prior_features(g))


def evaluate(graphs: dict, source: list[str], target: list[str], C: float) -> dict:
    """``{slice: {"true_fraction", "source": (auc, best F1, cut F1), "oracle": (...) or None}}``.
    The source scorer never reads a target label; the oracle for slice t is trained on the other
    target slices (None with a single target slice)."""
    from sklearn.metrics import roc_auc_score
    src = fit_scorer([graphs[n] for n in source], C)
    out = {}
    for t in target:
        g = graphs[t]
        m = g.label_mask.numpy()
        y = g.y.numpy()[m].astype(int)
        row = {"true_fraction": float(y.mean()), "oracle": None}
        s = src(g)[m]
        row["source"] = (float(roc_auc_score(y, s)), *f1_ceilings(y, s))
        others = [graphs[n] for n in target if n != t]
        if others:
            o = fit_scorer(others, C)(g)[m]
            row["oracle"] = (float(roc_auc_score(y, o)), *f1_ceilings(y, o))
        out[t] = row
    return out


def _config(path: str, data_seeds: list[int] | None, no_batch_effect: bool, overrides: list[str]):
    from spagraph.experiment.config import load_config, validate_config
    cfg = load_config(path, overrides)
    if not data_seeds and not no_batch_effect:
        return cfg
    d = copy.deepcopy(cfg.to_dict())
    for i, seed in enumerate(data_seeds or []):
        if d["data"]["sources"][i]["reader"] != "synthetic":
            sys.exit(f"--data-seeds: source {i} of {path} is not synthetic")
        d["data"]["sources"][i]["seed"] = int(seed)
    if no_batch_effect:
        for s in d["data"]["sources"]:
            s["batch_effect"] = None
    return validate_config(d)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("yaml")
    ap.add_argument("--data-seeds", type=int, nargs="+", help="seeds of the first synthetic sources (a dev pair)")
    ap.add_argument("--no-batch-effect", action="store_true", help="drop every source's batch_effect (diagnosis)")
    ap.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    from spagraph.experiment.data import load_slices, plan_folds
    from spagraph.experiment.runner import embed_and_graph
    cfg = _config(a.yaml, a.data_seeds, a.no_batch_effect, a.set)
    if cfg.protocol.kind != "transfer":
        sys.exit(f"{a.yaml}: protocol.kind is {cfg.protocol.kind!r}; this benchmark reads a transfer fold")
    slices, groups = load_slices(cfg.data)
    fold = plan_folds(cfg, list(slices), groups)[0]
    graphs, _ = embed_and_graph(cfg, slices, fold)
    res = evaluate(graphs, list(fold.train), list(fold.test), cfg.model.linear_C)
    seeds = [s.seed for s in cfg.data.sources]
    print(f"# {cfg.name}: data seeds {seeds}{' (no batch effect)' if a.no_batch_effect else ''}; "
          f"source prior trained on {fold.train}; C {cfg.model.linear_C}\n")
    print("| target slice | true fraction | source prior AUC | best F1 | cut F1 | ORACLE AUC | best F1 | cut F1 |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for t, r in res.items():
        o = r["oracle"] or (np.nan,) * 3
        rows.append(list(r["source"]) + list(o))
        print(f"| {t} | {r['true_fraction']:.3f} | " + " | ".join(f"{v:.3f}" for v in list(r["source"]) + list(o)) + " |")
    m = np.nanmean(np.asarray(rows, dtype=float), 0)
    print("| mean | | " + " | ".join(f"{v:.3f}" for v in m) + " |")
    print("\nbest F1 / cut F1 use the slice's labels (ceilings of the ranking); ORACLE = trained on the other "
          "target slices' labels (diagnosis only, never a method).")


if __name__ == "__main__":
    main()
