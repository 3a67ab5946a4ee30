"""A synthetic task that only a graph network can solve (checks the machinery learns what it claims).

Each slice is a hex grid cut into patches (Voronoi cells of random centres, about
``patch_spots`` spots each); half the patches are "cancer". Two signals separate the classes,
each invisible to a linear model on spatially smoothed features:

* **interaction of two programmes**: every patch draws a sign for programme A (a gene
  embedding column) and for programme B (an image embedding column); cancer patches have equal
  signs, normal patches opposite ones. Each programme alone is balanced across classes (AUC
  0.5 for any linear score of A, B and their disc means), only their product separates;
* **a direction-dependent neighbourhood pattern**: programme C (a gene column) is a wave along
  x in cancer patches and along y in normal ones (random phase per patch). Every spot's own C and
  its isotropic disc means have the same distribution in both classes (a disc mean of a plane
  wave depends on the wave length, not its direction); only the difference between neighbours in
  the +x / -x sectors versus the +y / -y sectors (direction bins) tells the orientation.

The remaining embedding columns are noise. Labels come from the patch type; no undetermined
spots. Orientation is part of the signal here (x versus y), so ``train.orient_augment`` must stay
off on this task.
"""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd


def graph_task_slice(n_spots: int = 500, seed: int = 0, patch_spots: int = 40, noise: float = 0.7,
                     wavelength: float = 4.0, d_noise: int = 3) -> ad.AnnData:
    """One slice: ``obsm["spatial"]`` (pixels, pitch 100), ``obsm["gene_emb"]`` (n, 2 + d_noise)
    columns [A, C, noise...], ``obsm["img_emb"]`` (n, 1 + d_noise) columns [B, noise...],
    ``obs["cancer"]`` Int8 and ``obs["patch"]``."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_spots)))
    r, c = np.divmod(np.arange(side * side), side)
    pos = np.c_[c + 0.5 * (r % 2), r * np.sqrt(3) / 2][:n_spots]          # pitch units
    n_patch = max(2, round(n_spots / patch_spots))
    centres = pos[rng.choice(n_spots, n_patch, replace=False)]
    patch = np.argmin(((pos[:, None] - centres[None]) ** 2).sum(2), axis=1)
    kind = rng.permutation(np.arange(n_patch) % 2)                         # 1 = cancer, balanced
    sign_a = np.zeros(n_patch)
    for cls in (0, 1):               # A's sign balanced within each class: neither class shifts A
        idx = np.flatnonzero(kind == cls)
        sign_a[idx] = rng.permutation(np.where(np.arange(len(idx)) % 2 == 0, 1.0, -1.0))
    sign_b = np.where(kind == 1, sign_a, -sign_a)
    phase = rng.uniform(0, 2 * np.pi, n_patch)
    y = kind[patch]
    along = np.where(y == 1, pos[:, 0], pos[:, 1])
    k = 2 * np.pi / wavelength
    a = sign_a[patch] + noise * rng.normal(size=n_spots)
    b = sign_b[patch] + noise * rng.normal(size=n_spots)
    cw = 1.5 * np.sin(k * along + phase[patch]) + 0.3 * rng.normal(size=n_spots)
    gene = np.c_[a, cw, rng.normal(size=(n_spots, d_noise))].astype(np.float32)
    img = np.c_[b, rng.normal(size=(n_spots, d_noise))].astype(np.float32)
    obs = pd.DataFrame({"cancer": pd.array(y, dtype="Int8"), "patch": patch},
                       index=pd.Index([f"s{seed}_{i}" for i in range(n_spots)]))
    out = ad.AnnData(np.zeros((n_spots, 1), np.float32), obs=obs)
    out.obsm["spatial"] = pos * 100.0
    out.obsm["gene_emb"] = gene
    out.obsm["img_emb"] = img
    return out


def graph_task_graphs(n_slices: int = 4, n_spots: int = 500, seed: int = 0, n_dir_bins: int = 8,
                      scales: tuple[float, ...] = (1.0, 2.0), **kw) -> list:
    """``n_slices`` slices of :func:`graph_task_slice` (seeds ``seed``, ``seed + 1``, ...) as
    slice graphs (:func:`spagraph.graph.build_slice_graph`)."""
    from spagraph.graph import GraphSettings, build_slice_graph
    gs = GraphSettings(scales=list(scales), n_dir_bins=n_dir_bins)
    return [build_slice_graph(graph_task_slice(n_spots, seed + i, **kw), gs, name=f"task{seed + i}")
            for i in range(n_slices)]


def smoothed_logreg_scores(train: list, test: list, C: float = 1.0) -> list:
    """The linear floor on this task: sklearn logistic regression (balanced classes) on every spot's
    gene and image embeddings and their disc means at every graph scale (exactly the features of
    spagraph's linear prior), fitted on ``train`` graphs; (n,) decision values per ``test`` graph."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from spagraph.nn.disc_mean import with_disc_means

    def feats(g):
        return torch.cat([with_disc_means(g.x_gene, g, g.num_scales), with_disc_means(g.x_img, g, g.num_scales)],
                         1).numpy()
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=5000)
    clf.fit(np.vstack([feats(g) for g in train]), np.concatenate([g.y.numpy() for g in train]).astype(int))
    return [clf.decision_function(feats(g)) for g in test]


# model and training settings under which the graph network learns this task (benchmarks/graph_task.py)
TASK_MODEL = dict(hidden=32, heads=4, dropout=0.1, input_dropout=0.0, modality_dropout=0.0, contrastive_weight=0.0)
TASK_TRAIN = dict(epochs=80, lr=1e-2, patience=80, min_epochs=1)
