"""How far can genes + space go on a leave-one-slice-out experiment? Cheap (sklearn) scorers
on the harness's own folds and features, one table.

Every scorer sees exactly what spagraph sees in a fold: the graphs that
:func:`spagraph.experiment.runner.embed_and_graph` builds (embedding fitted on the training
slices only) and the training labels. Validation labels are only reported, never used;
test labels only score. Base features per spot: the gene embedding and its disc means at every
graph scale (:func:`spagraph.nn.disc_mean.with_disc_means`), the input of spagraph's linear
prior and of the ``logreg`` baseline with ``smooth: disc``.

Scorers (``--only`` takes their names):

``linear``        L2 logistic regression, balanced classes, C = ``--C`` (the reference row;
                  equals spagraph's linear prior and the smoothed-PC baseline).
``linear_C/3``    the same with C / 3 (stronger L2).
``slice_weights`` each training slice weighs the same and is class-balanced within itself.
``slice_zscore``  features standardised within each slice (after smoothing).
``diffuse``       the linear logit diffused over the test slice's largest-scale graph,
                  z <- (1 - a) z0 + a * discmean(z), 10 steps, a = 0.3 and 0.7.
``clusters``      the linear logit blended (0.3) with its mean over k-means (k = 8) clusters of
                  the slice's own features: label-free, per slice.
``expr_smooth``   the linear logit blended (0.5) with the mean logit of the spot's 10 nearest
                  neighbours in the slice's gene embedding: spagraph's ``feature_smoothing``.
``stack_lr``      second stage on out-of-fold logits of an inner leave-one-slice-out (logit,
                  its disc mean and spread at every scale) -> logistic regression.
``stack_gb``      the same second stage with gradient boosting.
``mlp``           one hidden layer of 32 units (alpha 1), standardised features.
``boosting``      gradient boosting (depth 3, 200 iterations) on the base features.

Prints per scorer the mean validation AUC, the mean test AUC, the paired difference to
``linear`` with its standard error over test slices, and the AUC per test slice.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/gene_ceiling.py experiments/her2st_loso.yaml
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class FoldData:
    """One fold: slice names and per-slice base features / labelled mask / labels / graphs."""
    train: list[str]
    val: list[str]
    test: list[str]
    graphs: dict
    X: dict[str, np.ndarray]
    C: float

    def labelled(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        g = self.graphs[name]
        m = g.label_mask.numpy()
        return m, g.y.numpy()[m].astype(int)

    def training_set(self, names: list[str], feats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        feats = feats if feats is not None else self.X
        X = np.concatenate([feats[n][self.labelled(n)[0]] for n in names])
        y = np.concatenate([self.labelled(n)[1] for n in names])
        return X, y


Scorer = Callable[[FoldData], dict[str, np.ndarray]]


def _logreg(C: float):
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=C, class_weight="balanced", max_iter=5000)


def _score_all(fd: FoldData, fn) -> dict[str, np.ndarray]:
    return {n: fn(n) for n in fd.val + fd.test}


def linear(fd: FoldData, C: float | None = None) -> dict[str, np.ndarray]:
    clf = _logreg(C or fd.C).fit(*fd.training_set(fd.train))
    return _score_all(fd, lambda n: clf.decision_function(fd.X[n]))


def slice_weights(fd: FoldData) -> dict[str, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    X, y = fd.training_set(fd.train)
    w = []
    for n in fd.train:
        yy = fd.labelled(n)[1]
        p = min(max(yy.mean(), 1e-3), 1 - 1e-3)
        w.append(np.where(yy == 1, 0.5 / p, 0.5 / (1 - p)))
    w = np.concatenate(w)
    clf = LogisticRegression(C=fd.C, max_iter=5000).fit(X, y, sample_weight=w / w.mean())
    return _score_all(fd, lambda n: clf.decision_function(fd.X[n]))


def slice_zscore(fd: FoldData) -> dict[str, np.ndarray]:
    Z = {n: (x - x.mean(0)) / (x.std(0) + 1e-9) for n, x in fd.X.items()}
    clf = _logreg(fd.C).fit(*fd.training_set(fd.train, Z))
    return _score_all(fd, lambda n: clf.decision_function(Z[n]))


def _diffuse(z: np.ndarray, g, alpha: float, steps: int = 10) -> np.ndarray:
    from spagraph.nn.disc_mean import DiscMean
    disc, z0 = DiscMean(), torch.as_tensor(z, dtype=torch.float64)[:, None]
    e = g[f"edge_index_{g.num_scales - 1}"]
    zz = z0
    for _ in range(steps):
        zz = (1 - alpha) * z0 + alpha * disc(zz, e)
    return zz[:, 0].numpy()


def diffuse(alpha: float) -> Scorer:
    def run(fd: FoldData) -> dict[str, np.ndarray]:
        return {n: _diffuse(z, fd.graphs[n], alpha) for n, z in linear(fd).items()}
    return run


def clusters(fd: FoldData, k: int = 8, blend: float = 0.3) -> dict[str, np.ndarray]:
    from sklearn.cluster import KMeans
    out = {}
    for n, z in linear(fd).items():
        lab = KMeans(min(k, len(z)), n_init=4, random_state=0).fit_predict(fd.X[n])
        means = np.array([z[lab == c].mean() for c in range(lab.max() + 1)])
        out[n] = (1 - blend) * z + blend * means[lab]
    return out


def expr_smooth(fd: FoldData, k: int = 10, alpha: float = 0.5) -> dict[str, np.ndarray]:
    from spagraph.graph.neighbours import feature_knn_edges
    from spagraph.nn.feature_smoothing import FeatureGraphSmoothing
    smooth = FeatureGraphSmoothing(alpha)
    return {n: smooth(torch.as_tensor(z, dtype=torch.float64),
                      torch.from_numpy(feature_knn_edges(fd.graphs[n].x_gene.numpy(), k))).numpy()
            for n, z in linear(fd).items()}


def _logit_context(z: np.ndarray, g) -> np.ndarray:
    """(n, 1 + 2S): the logit, and its disc mean and disc standard deviation at every scale."""
    from spagraph.nn.disc_mean import DiscMean
    disc, zt = DiscMean(), torch.as_tensor(z, dtype=torch.float64)[:, None]
    cols = [zt]
    for k in range(g.num_scales):
        e = g[f"edge_index_{k}"]
        mu, sq = disc(zt, e), disc(zt ** 2, e)
        cols += [mu, (sq - mu ** 2).clamp_min(0).sqrt()]
    return torch.cat(cols, 1).numpy()


def stacked(kind: str) -> Scorer:
    def run(fd: FoldData) -> dict[str, np.ndarray]:
        from sklearn.ensemble import HistGradientBoostingClassifier
        if len(fd.train) < 2:
            raise ValueError(f"stack_{kind}: the inner leave-one-slice-out needs at least 2 training slices, "
                             f"got {fd.train}")
        oof = {}
        for t in fd.train:                      # inner leave-one-slice-out on the training slices
            inner = [n for n in fd.train if n != t]
            oof[t] = _logit_context(_logreg(fd.C).fit(*fd.training_set(inner)).decision_function(fd.X[t]),
                                    fd.graphs[t])
        second = (_logreg(1.0) if kind == "lr" else
                  HistGradientBoostingClassifier(max_depth=3, max_iter=100, learning_rate=0.05, random_state=0))
        second.fit(*fd.training_set(fd.train, oof))
        return {n: second.predict_proba(_logit_context(z, fd.graphs[n]))[:, 1] for n, z in linear(fd).items()}
    return run


def mlp(fd: FoldData) -> dict[str, np.ndarray]:
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler
    X, y = fd.training_set(fd.train)
    sc = StandardScaler().fit(X)
    clf = MLPClassifier((32,), alpha=1.0, max_iter=500, random_state=0).fit(sc.transform(X), y)
    return _score_all(fd, lambda n: clf.predict_proba(sc.transform(fd.X[n]))[:, 1])


def boosting(fd: FoldData) -> dict[str, np.ndarray]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    clf = HistGradientBoostingClassifier(max_depth=3, max_iter=200, learning_rate=0.05, random_state=0,
                                         class_weight="balanced").fit(*fd.training_set(fd.train))
    return _score_all(fd, lambda n: clf.predict_proba(fd.X[n])[:, 1])


SCORERS: dict[str, Scorer] = {
    "linear": linear,
    "linear_C/3": lambda fd: linear(fd, fd.C / 3),
    "slice_weights": slice_weights,
    "slice_zscore": slice_zscore,
    "diffuse_0.3": diffuse(0.3),
    "diffuse_0.7": diffuse(0.7),
    "clusters": clusters,
    "expr_smooth": expr_smooth,
    "stack_lr": stacked("lr"),
    "stack_gb": stacked("gb"),
    "mlp": mlp,
    "boosting": boosting,
}


def fold_data(cfg, slices, fold, C: float) -> FoldData:
    from spagraph.experiment.runner import embed_and_graph
    from spagraph.nn.disc_mean import with_disc_means
    graphs, _ = embed_and_graph(cfg, slices, fold)
    X = {n: with_disc_means(g.x_gene.double(), g, g.num_scales).numpy() for n, g in graphs.items()}
    return FoldData(list(fold.train), list(fold.val), list(fold.test), graphs, X, C)


def slice_auc(fd: FoldData, name: str, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    m, y = fd.labelled(name)
    return float(roc_auc_score(y, score[m])) if len(np.unique(y)) == 2 else float("nan")


def evaluate(cfg, names: list[str], C: float, progress: bool = True) -> dict[str, dict]:
    """{scorer: {"val": [...], "test": {slice: auc}}} over the experiment's folds."""
    from spagraph.experiment.data import load_slices, plan_folds
    slices, groups = load_slices(cfg.data)
    folds = plan_folds(cfg, list(slices), groups)
    res = {s: {"val": [], "test": {}} for s in names}
    for fold in folds:
        t0 = time.time()
        fd = fold_data(cfg, slices, fold, C)
        for s in names:
            scores = SCORERS[s](fd)
            vals = [slice_auc(fd, n, scores[n]) for n in fd.val]
            res[s]["val"].append(float(np.nanmean(vals)) if vals else float("nan"))
            for n in fd.test:
                res[s]["test"][n] = slice_auc(fd, n, scores[n])
        if progress:
            print(f"fold {fold.name}: {time.time() - t0:.1f} s", flush=True)
    return res


def table(res: dict[str, dict]) -> str:
    ref = res.get("linear")
    first = next(iter(res.values()))["test"]
    head = "| scorer | val AUC | test AUC | Δ vs linear (± SE) | " + " | ".join(first) + " |"
    lines = [head, "|" + "---|" * (4 + len(first))]
    for s, r in res.items():
        t = np.array(list(r["test"].values()))
        if ref is not None:
            d = t - np.array(list(ref["test"].values()))
            delta = f"{np.nanmean(d):+.4f} ± {np.nanstd(d, ddof=1) / np.sqrt(np.isfinite(d).sum()):.4f}" if len(d) > 1 else "—"
        else:
            delta = "—"
        lines.append(f"| {s} | {np.nanmean(r['val']):.4f} | {np.nanmean(t):.4f} | {delta} | "
                     + " | ".join(f"{x:.3f}" for x in t) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", help="experiment YAML (protocol loso or fixed; its embed and graph sections are used)")
    ap.add_argument("--C", type=float, default=None, help="inverse L2 strength (default: the experiment's model.linear_C)")
    ap.add_argument("--only", nargs="*", choices=list(SCORERS), help="scorers to run (default: all)")
    ap.add_argument("--set", nargs="*", default=None, help="config overrides, e.g. embed.settings.n_pcs=10")
    a = ap.parse_args(argv)
    from spagraph.experiment.config import load_config
    cfg = load_config(a.experiment, a.set)
    names = a.only or list(SCORERS)
    if "linear" not in names:
        names = ["linear"] + names
    t0 = time.time()
    res = evaluate(cfg, names, a.C if a.C is not None else cfg.model.linear_C)
    print(f"\n{cfg.name}: {cfg.protocol.kind}, validation labels unused, test labels only score; "
          f"{time.time() - t0:.0f} s\n")
    print(table(res))
    return res


if __name__ == "__main__":
    main()
