"""Ablation table on the synthetic task only a graph network can solve (spagraph/io/graph_task.py).

Protocol: ``--n-train`` training slices, 1 validation slice (early stopping, the same rules as
``spagraph run``), ``--n-test`` test slices, all generated with seeds ``--data-seed`` onwards; the
table gives the mean test AUC over the test slices (and its SE over slices) for each model seed,
then the mean over seeds. Rows: the linear floor (logistic regression on the embeddings and their
disc means, the features of spagraph's linear prior), spagraph, and its ablations
(- MSFA: self token only; no direction bins: n_dir_bins 1; no cross-attention: concat fusion).

    python benchmarks/graph_task.py --seeds 0 1

``--task tokens``: the sibling task :func:`spagraph.io.graph_task.token_task_slice` (spot label = sign
of the products of matching gene / image tokens at the spot, its ring and its shell), with
TOKEN_MODEL / TOKEN_TRAIN (scale tokens from the input embeddings, layer-normalised; lr 3e-3 for
200 epochs). Rows: the linear floor, spagraph, - MSFA, no cross-attention, "post-norm only" (the
cross-attention model with the attention outputs zeroed: the same per-token LayerNorm after the
fusion, no attention; the fairness control) and "default tokens" (spagraph with the scale tokens of
the default model: MSFA over the activated hidden spots, no token norm). ``--direction-weight w``
(default 0: the task above) adds the direction term of ``token_task_slice`` (w times C at the +x
neighbour minus C at the -x neighbour), and the "no direction bins" row (the same slices as graphs with
one direction sector, TOKEN_MODEL) runs; at w = 0 it is skipped (the task is isotropic).

    python benchmarks/graph_task.py --task tokens --direction-weight 0.5 --seeds 0 1 2 --only \
        "logistic regression (smoothed)" spagraph "- MSFA" "no direction bins" "no cross-attention"
"""
from __future__ import annotations

import argparse
import time

import numpy as np

VARIANTS = {"spagraph": ({}, 8), "- MSFA": ({"msfa": False}, 8), "no direction bins": ({}, 1),
            "no cross-attention": ({"cross_attention": False}, 8)}
# --task tokens: (model overrides of TOKEN_MODEL, zero the attention outputs, direction bins)
TOKEN_VARIANTS = {"spagraph": ({}, False, 8), "- MSFA": ({"msfa": False}, False, 8),
                  "no direction bins": ({}, False, 1),
                  "no cross-attention": ({"cross_attention": False}, False, 8), "post-norm only": ({}, True, 8),
                  "default tokens": ({"msfa_input": "hidden", "token_norm": False}, False, 8)}


def _attention_off():
    """Context: CrossModalFusion with its attention outputs zeroed (the post-attention LayerNorm
    kept), for the "post-norm only" control: what cross-attention adds beyond that norm."""
    import contextlib
    from spagraph.nn import fusion

    def zeroed(attn):
        orig = attn.forward
        return lambda *args, **kw: (orig(*args, **kw)[0] * 0.0, None)

    @contextlib.contextmanager
    def ctx():
        init = fusion.CrossModalFusion.__init__

        def patched(self, *args, **kw):
            init(self, *args, **kw)
            for attn in (self.img_from_gene, self.gene_from_img):   # not the per-modality encoders
                attn.forward = zeroed(attn)
        fusion.CrossModalFusion.__init__ = patched
        try:
            yield
        finally:
            fusion.CrossModalFusion.__init__ = init
    return ctx()


def _row(summary: dict, name: str, seed, aucs: list[float], epoch, seconds: float) -> None:
    """Print one table row (mean test AUC over slices and its SE) and keep the mean for the summary."""
    m, se = float(np.mean(aucs)), float(np.std(aucs, ddof=1) / np.sqrt(len(aucs)))
    summary.setdefault(name, []).append(m)
    print(f"| {name} | {seed} | {m:.3f} | {se:.3f} | {epoch} | {seconds:.0f} |", flush=True)


def tokens_main(a) -> None:
    import contextlib
    from spagraph.io.graph_task import TOKEN_MODEL, TOKEN_TRAIN, smoothed_logreg_scores, token_task_graphs
    from spagraph.nn import ModelSettings
    from spagraph.train.fit import TrainSettings, fit, predict_scores
    from spagraph.train.metrics import binary_metrics

    def auc(g, s):
        return binary_metrics(g.y.numpy().astype(int), np.asarray(s), 0.5)["auc"]
    def split(bins):
        gs = token_task_graphs(a.n_train + 1 + a.n_test, a.n_spots, seed=a.data_seed, n_dir_bins=bins,
                               direction_weight=a.direction_weight)
        return gs[:a.n_train], [gs[a.n_train]], gs[a.n_train + 1:]
    splits = {8: split(8)}
    print(f"| model | seed | mean test AUC ({a.n_test} slices) | SE over slices | best epoch | seconds |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for name, (over, off, bins) in {"logistic regression (smoothed)": (None, False, 8), **TOKEN_VARIANTS}.items():
        if (a.only and name not in a.only) or (bins == 1 and not a.direction_weight):
            continue
        if bins not in splits:
            splits[bins] = split(bins)
        train, val, test = splits[bins]
        for seed in ([0] if over is None else a.seeds):
            t = time.time()
            if over is None:
                aucs, ep = [auc(g, s) for g, s in zip(test, smoothed_logreg_scores(train, test))], "-"
            else:
                with _attention_off() if off else contextlib.nullcontext():
                    res = fit(train, val, ModelSettings(**(TOKEN_MODEL | over)), TrainSettings(**TOKEN_TRAIN), seed=seed)
                    aucs, ep = [auc(g, predict_scores(res.model, g)) for g in test], res.best_epoch
            _row(summary, name, seed if over is not None else "-", aucs, ep, time.time() - t)
    print("\nmean over seeds: " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in summary.items()))


def main() -> None:
    import torch
    from spagraph.io.graph_task import TASK_MODEL, TASK_TRAIN, graph_task_graphs, smoothed_logreg_scores
    from spagraph.nn import ModelSettings
    from spagraph.train.fit import TrainSettings, fit, predict_scores
    from spagraph.train.metrics import binary_metrics
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--n-spots", type=int, default=400)
    ap.add_argument("--noise", type=float, default=2.0)
    ap.add_argument("--height", type=float, default=None, help="programme C's ramp height (generator default if unset)")
    ap.add_argument("--c-noise", type=float, default=None, help="programme C's spot noise (generator default if unset)")
    ap.add_argument("--n-train", type=int, default=3)
    ap.add_argument("--n-test", type=int, default=8)
    ap.add_argument("--data-seed", type=int, default=10)
    ap.add_argument("--only", nargs="*", default=None, help="variants to run (default: all)")
    ap.add_argument("--lr", type=float, default=TASK_TRAIN["lr"])
    ap.add_argument("--epochs", type=int, default=TASK_TRAIN["epochs"], help="also the patience")
    ap.add_argument("--direction-weight", type=float, default=0.0,
                    help="--task tokens: weight of the direction term (token_task_slice direction_weight)")
    ap.add_argument("--task", choices=["patches", "tokens"], default="patches",
                    help="patches: graph_task_slice (default); tokens: token_task_slice (--noise, --height, "
                         "--c-noise, --lr and --epochs do not apply)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.task == "tokens":
        return tokens_main(a)
    train_over = {"lr": a.lr, "epochs": a.epochs, "patience": a.epochs}

    def auc(g, s):
        return binary_metrics(g.y.numpy().astype(int), np.asarray(s), 0.5)["auc"]

    print(f"| model | seed | mean test AUC ({a.n_test} slices) | SE over slices | best epoch | seconds |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for name, (over, bins) in {"logistic regression (smoothed)": (None, 8), **VARIANTS}.items():
        if a.only and name not in a.only:
            continue
        gs = graph_task_graphs(a.n_train + 1 + a.n_test, a.n_spots, seed=a.data_seed, noise=a.noise, n_dir_bins=bins,
                               **{k: v for k, v in (("height", a.height), ("c_noise", a.c_noise)) if v is not None})
        train, val, test = gs[:a.n_train], [gs[a.n_train]], gs[a.n_train + 1:]
        for seed in ([0] if over is None else a.seeds):
            t = time.time()
            if over is None:
                aucs, ep = [auc(g, s) for g, s in zip(test, smoothed_logreg_scores(train, test))], "-"
            else:
                res = fit(train, val, ModelSettings(**(TASK_MODEL | over)), TrainSettings(**(TASK_TRAIN | train_over)), seed=seed)
                aucs, ep = [auc(g, predict_scores(res.model, g)) for g in test], res.best_epoch
            _row(summary, name, seed if over is not None else "-", aucs, ep, time.time() - t)
    print("\nmean over seeds: " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
