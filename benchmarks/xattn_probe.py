"""Probes for a signal that token-level cross-attention learns and concatenation does not
(issue 16 item 3; the outcome is in benchmarks/README.md, "Synthetic task only a graph network can solve").

Three parts, each printing a markdown table (mean test AUC per model seed):

1. ``fusion``: :class:`spagraph.nn.fusion.CrossModalFusion` alone (cross-attention on / off) plus
   SpaGraphNet's head, on hand-made token sequences: 3 tokens per modality, each token a GELU of its
   own linear map of ``k`` raw inputs; label ``1[sum_t u_t . v_t + 0.3 e > 0]`` with the products
   spread over the 3 tokens ("3 tokens"), or all in token 0 ("1 token"). 1,200 training and 3,000
   test samples, 200 full-batch AdamW steps at lr 1e-2.
2. ``scales``: the same rule built from the graph's own tokens: two i.i.d. N(0, 1) gene columns and
   two image columns per spot on the hex grid; ``u_t`` / ``v_t`` are their means over the spot itself,
   its 6 neighbours (ring 1) and the 12 spots of the next shell (scales 1 and 2, ``shells=True``),
   each standardised; the spot label is ``1[sum_t u_t . v_t / sqrt(6) + 0.3 e > 0]``.
3. ``task``: the patch-labelled task of spagraph/io/graph_task.py with extra columns appended (own
   random stream, the task's columns unchanged): ``select`` a gene query ``q`` (a random unit
   2-vector per patch + N(0, 1) spot noise), an image key ``kappa`` (spot-level N(0, I_2)) and an
   image value ``s * sign(q_patch . kappa) + 0.5 e`` (``s`` = +1 cancer, -1 normal): the class is in
   the value read where the image key matches the gene query; ``pairs``: two more (A, B) sign pairs
   with the task's rule (cancer: equal signs, normal: opposite).

4. ``diagnose``: why the ring / shell tokens' content was not learnt (benchmarks/README.md): the slices
   of :func:`spagraph.io.graph_task.token_task_slice` with three labels (the ring-1 mean of one gene
   column, linear; the ring-1 product only; the spot + ring + shell products, the token task), the
   ceilings on the explicit token means (logistic regression on the 6 products, an MLP with 32 ReLU
   units on the 12 means; sklearn, fitted on the 3 training slices), and spagraph with the default
   scale tokens, with ``msfa_input: input`` and with ``msfa_input: input`` + ``token_norm``, each with
   cross-attention and with concatenation, TASK_MODEL / TASK_TRAIN (lr 1e-2, 80 epochs).

Parts 2-4 use the protocol of benchmarks/graph_task.py (3 training, 1 validation, 8 test slices
of 400 spots from data seed 10; TASK_MODEL / TASK_TRAIN; mean test AUC over the 8 slices).

    OMP_NUM_THREADS=1 python benchmarks/xattn_probe.py --seeds 0 1
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _auc(y, s) -> float:
    from spagraph.train.metrics import binary_metrics
    return binary_metrics(np.asarray(y).astype(int), np.asarray(s), 0.5)["auc"]


T_TOKENS, HIDDEN, K_IN = 3, 32, 2


def _token_products(n: int, rng, spread: bool):
    """(u, v, y): u, v (n, 3, 2) token inputs per modality; y = 1[sum of u_t . v_t + 0.3 e > 0] over
    the 3 tokens (``spread``) or over token 0 only (the other tokens then carry nothing)."""
    import torch
    u, v = rng.normal(size=(n, T_TOKENS, K_IN)), rng.normal(size=(n, T_TOKENS, K_IN))
    z = (u * v).sum((1, 2)) if spread else (u[:, 0] * v[:, 0]).sum(1)
    y = (z + 0.3 * rng.normal(size=n) > 0).astype(np.float32)
    return torch.tensor(u, dtype=torch.float32), torch.tensor(v, dtype=torch.float32), torch.tensor(y)


def fusion_probe_auc(spread: bool, cross: bool, seed: int, steps: int = 200) -> float:
    """Test AUC (3,000 samples) of CrossModalFusion (``cross`` on / off) + SpaGraphNet's head with
    one GELU(linear) token embedding per token and modality, after ``steps`` full-batch AdamW steps
    (lr 1e-2) on 1,200 samples of :func:`_token_products`. Deterministic for a seed on CPU."""
    import torch
    from torch import nn
    from spagraph.nn.fusion import CrossModalFusion

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pg = nn.ModuleList(nn.Linear(K_IN, HIDDEN) for _ in range(T_TOKENS))
            self.pi = nn.ModuleList(nn.Linear(K_IN, HIDDEN) for _ in range(T_TOKENS))
            self.fusion = CrossModalFusion(HIDDEN, 4, 1, 0.1, cross=cross)
            self.head = nn.Sequential(nn.Linear(2 * HIDDEN, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, 1))

        def forward(self, u, v):
            g = torch.stack([nn.functional.gelu(p(u[:, t])) for t, p in enumerate(self.pg)], 1)
            i = torch.stack([nn.functional.gelu(p(v[:, t])) for t, p in enumerate(self.pi)], 1)
            one = torch.ones(len(u))
            return self.head(self.fusion(i, g, one, one)[0]).squeeze(1)

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    tr, te = _token_products(1200, rng, spread), _token_products(3000, rng, spread)
    net = Net()
    opt = torch.optim.AdamW(net.parameters(), 1e-2)
    for _ in range(steps):
        net.train(); opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(net(tr[0], tr[1]), tr[2]).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return _auc(te[2].numpy(), net(te[0], te[1]).numpy())


def fusion_part(seeds: list[int]) -> None:
    print("\n1. fusion module alone (3 tokens per modality, k = 2 inputs each)\n")
    print("| products | fusion | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|---|" + "---|" * len(seeds))
    for spread in (True, False):
        for cross in (True, False):
            aucs = [fusion_probe_auc(spread, cross, seed) for seed in seeds]
            print(f"| {'3 tokens (6)' if spread else '1 token (2)'} | {'cross-attention' if cross else 'concat'} | "
                  + " | ".join(f"{a:.3f}" for a in aucs) + " |", flush=True)


def _scales_slice(n: int, seed: int):
    import anndata as ad
    import pandas as pd
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    r, c = np.divmod(np.arange(side * side), side)
    pos = np.c_[c + 0.5 * (r % 2), r * np.sqrt(3) / 2][:n]
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(2)
    rings = [np.eye(n, dtype=bool), (d2 > 0.01) & (d2 < 1.01), (d2 > 1.01) & (d2 < 4.04)]
    g, im = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    z = 0.0
    for ring in rings:
        w = ring / ring.sum(1, keepdims=True)
        mg, mi = w @ g, w @ im
        z = z + ((mg / mg.std(0)) * (mi / mi.std(0))).sum(1)
    y = (z / np.sqrt(6) + 0.3 * rng.normal(size=n) > 0).astype(int)
    out = ad.AnnData(np.zeros((n, 1), np.float32),
                     obs=pd.DataFrame({"cancer": pd.array(y, dtype="Int8")}, index=[f"s{seed}_{i}" for i in range(n)]))
    out.obsm["spatial"] = pos * 100.0
    out.obsm["gene_emb"], out.obsm["img_emb"] = g.astype(np.float32), im.astype(np.float32)
    return out


def _task_slice(n: int, seed: int, extra: str):
    from spagraph.io.graph_task import graph_task_slice
    a = graph_task_slice(n, seed, noise=2.0)
    rng = np.random.default_rng(10_000 + seed)        # own stream: the task's columns are unchanged
    patch = a.obs["patch"].to_numpy()
    y = a.obs["cancer"].to_numpy().astype(int)
    n_patch = patch.max() + 1
    kind = np.zeros(n_patch, int)
    kind[patch] = y
    s = np.where(y == 1, 1.0, -1.0)
    if extra == "select":
        q = rng.normal(size=(n_patch, 2))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        key = rng.normal(size=(n, 2))
        val = s * np.sign((q[patch] * key).sum(1)) + 0.5 * rng.normal(size=n)
        g_new, i_new = q[patch] + rng.normal(size=(n, 2)), np.c_[key, val]
    else:                                             # "pairs": two more sign pairs with the task's rule
        cols_g, cols_i = [], []
        for _ in range(2):
            sa = np.zeros(n_patch)
            for cls in (0, 1):
                idx = np.flatnonzero(kind == cls)
                sa[idx] = rng.permutation(np.where(np.arange(len(idx)) % 2 == 0, 1.0, -1.0))
            sb = np.where(kind == 1, sa, -sa)
            cols_g.append(sa[patch] + 2.0 * rng.normal(size=n))
            cols_i.append(sb[patch] + 2.0 * rng.normal(size=n))
        g_new, i_new = np.c_[tuple(cols_g)], np.c_[tuple(cols_i)]
    a.obsm["gene_emb"] = np.c_[a.obsm["gene_emb"], g_new].astype(np.float32)
    a.obsm["img_emb"] = np.c_[a.obsm["img_emb"], i_new].astype(np.float32)
    return a


def graph_part(name: str, make, shells: bool, seeds: list[int], variants: dict) -> None:
    from spagraph.graph import GraphSettings, build_slice_graph
    from spagraph.io.graph_task import TASK_MODEL, TASK_TRAIN, smoothed_logreg_scores
    from spagraph.nn import ModelSettings
    from spagraph.train.fit import TrainSettings, fit, predict_scores
    gs = GraphSettings(scales=[1.0, 2.0], n_dir_bins=8, shells=shells)
    graphs = [build_slice_graph(make(400, 10 + i), gs, name=f"{name}{i}") for i in range(12)]
    train, val, test = graphs[:3], [graphs[3]], graphs[4:]
    lr = np.mean([_auc(g.y.numpy(), s) for g, s in zip(test, smoothed_logreg_scores(train, test))])
    print(f"| {name} | logistic regression (smoothed) | {lr:.3f} |" + " |" * (len(seeds) - 1), flush=True)
    for label, over in variants.items():
        row = []
        for seed in seeds:
            res = fit(train, val, ModelSettings(**(TASK_MODEL | over)), TrainSettings(**TASK_TRAIN), seed=seed)
            m = np.mean([_auc(g.y.numpy(), predict_scores(res.model, g)) for g in test])
            row.append(f"{m:.3f} (ep {res.best_epoch})")
        print(f"| {name} | {label} | " + " | ".join(row) + " |", flush=True)


def _token_means(g):
    """(n, 12) the standardised means of the 2 gene and 2 image columns over the spot, its ring and its
    shell (the graph's scale-1 and scale-2 edges, built with shells): gene (t = 0, 1, 2), then image."""
    import torch
    from torch_geometric.utils import scatter
    cols = {"g": [g.x_gene], "i": [g.x_img]}
    for k in range(2):
        src, dst = g[f"edge_index_{k}"]
        for key, x in (("g", g.x_gene), ("i", g.x_img)):
            cols[key].append(scatter(x[src], dst, 0, dim_size=g.num_nodes, reduce="mean"))
    f = torch.cat(cols["g"] + cols["i"], 1).numpy().astype(float)
    return f / f.std(0)


def diagnose_part(seeds: list[int]) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from spagraph.graph import GraphSettings, build_slice_graph
    from spagraph.io.graph_task import TASK_MODEL, TASK_TRAIN, token_task_slice
    from spagraph.nn import ModelSettings
    from spagraph.train.fit import TrainSettings, fit, predict_scores
    labels = {"ring-1 mean of gene column 0 (linear)": dict(terms=(1,), product=False),
              "ring-1 products only": dict(terms=(1,)), "spot + ring + shell products (token task)": {}}
    models = {"default tokens": {}, "msfa_input: input": {"msfa_input": "input"},
              "msfa_input: input + token_norm": {"msfa_input": "input", "token_norm": True}}
    gs = GraphSettings(scales=[1.0, 2.0], n_dir_bins=8, shells=True)
    print("\n4. diagnosis on token_task_slice variants, mean test AUC over 8 slices (best epoch)\n")
    print("| label | model | fusion | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|---|---|" + "---|" * len(seeds))
    for lab, kw in labels.items():
        graphs = [build_slice_graph(token_task_slice(400, 10 + i, **kw), gs, name=f"d{i}") for i in range(12)]
        train, val, test = graphs[:3], [graphs[3]], graphs[4:]
        xtr = np.vstack([_token_means(g) for g in train])
        ytr = np.concatenate([g.y.numpy() for g in train]).astype(int)
        for name, clf, f in (("LR on the 6 token products", LogisticRegression(max_iter=2000), lambda x: x[:, :6] * x[:, 6:]),
                             ("MLP (32) on the 12 token means", MLPClassifier((32,), max_iter=2000, random_state=0), lambda x: x)):
            clf.fit(f(xtr), ytr)
            a = np.mean([_auc(g.y.numpy(), clf.predict_proba(f(_token_means(g)))[:, 1]) for g in test])
            print(f"| {lab} | {name} (ceiling) | - | {a:.3f} |" + " |" * (len(seeds) - 1), flush=True)
        for mname, over in models.items():
            for cross in (True, False):
                row = []
                for seed in seeds:
                    res = fit(train, val, ModelSettings(**(TASK_MODEL | over | {"cross_attention": cross})),
                              TrainSettings(**TASK_TRAIN), seed=seed)
                    m = np.mean([_auc(g.y.numpy(), predict_scores(res.model, g)) for g in test])
                    row.append(f"{m:.3f} ({res.best_epoch})")
                print(f"| {lab} | {mname} | {'cross-attention' if cross else 'concat'} | " + " | ".join(row) + " |",
                      flush=True)


def main() -> None:
    import torch
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--parts", nargs="+", default=["fusion", "scales", "task"],
                    help="fusion, scales, task, diagnose (not run by default)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t = time.time()
    if "fusion" in a.parts:
        fusion_part(a.seeds)
    both = {"spagraph (cross-attention)": {}, "no cross-attention (concat)": {"cross_attention": False}}
    if "scales" in a.parts or "task" in a.parts:
        print("\n2./3. graph network, mean test AUC over 8 slices (best epoch)\n")
        print("| task | model | " + " | ".join(f"seed {s}" for s in a.seeds) + " |")
        print("|---|---|" + "---|" * len(a.seeds))
    if "scales" in a.parts:
        graph_part("scales", _scales_slice, True, a.seeds, both | {"- MSFA": {"msfa": False}})
    if "task" in a.parts:
        for extra in ("select", "pairs"):
            graph_part(f"task + {extra}", lambda n, s, e=extra: _task_slice(n, s, e), False, a.seeds, both)
    if "diagnose" in a.parts:
        diagnose_part(a.seeds)
    print(f"\n{time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
