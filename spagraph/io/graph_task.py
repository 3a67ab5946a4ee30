"""A synthetic task that only a graph network can solve (checks the machinery learns what it claims).

Each slice is a hex grid cut into patches (Voronoi cells of random centres, about
``patch_spots`` spots each); half the patches are "cancer". Two signals separate the classes,
each invisible to a linear model on spatially smoothed features:

* **interaction of two programmes**: every patch draws a sign for programme A (a gene
  embedding column) and for programme B (an image embedding column); cancer patches have equal
  signs, normal patches opposite ones. Each programme alone is balanced across classes (half
  the patches of a class +1, half -1; a class with an odd number of patches gives its extra
  patch a random sign), so any linear score of A, B and their disc means has AUC 0.5 in
  expectation; only their product separates;
* **a direction-dependent neighbourhood pattern**: programme C (a gene column) rises along +x
  across cancer regions and along -x across normal ones. Along every lattice row (rows are
  horizontal), each maximal run of same-class spots carries a linear ramp from ``-height`` to
  ``+height`` (cancer: left to right, normal: right to left), plus spot noise ``c_noise``; runs
  alternate in class, so C is a continuous triangle wave whose peaks and troughs sit on the class
  boundaries (:func:`_row_ramps`).

Why this shape of direction signal (it replaced a periodic sawtooth along +x / +y, on which the
"no direction bins" ablation did not lose across model seeds):

* *linear in the direction-bin means.* For any bounded field that ignores the classes (a
  sawtooth, a sine), the mean of "+x neighbours minus -x neighbours" over a class is zero: the
  wrap-around jumps cancel the ramps, and the direction is left in higher-order statistics
  (skew) that the layer's linear direction modes do not express. Tying the ramp to the class
  runs gives that difference the class's sign at almost every spot (except near run ends).
* *invisible to isotropic statistics, exactly.* Mirroring a slice in x and swapping the classes
  gives a slice with the same distribution (the hex lattice is mirror-symmetric in x, patch
  centres are uniform, classes balanced). Every isotropic feature (a spot's own C, disc means,
  the occupancy of discs) is unchanged by the mirror, so its joint distribution with the class is
  symmetric under swapping the classes: C's own value and its disc means carry nothing, for a
  linear or a nonlinear model ("no direction bins" with A and B drowned in noise scored
  AUC 0.507 / 0.509 / 0.503, model seeds 0-2, benchmarks/README.md). Only direction sectors (absolute angles) tell +x from -x.
* *large amplitude.* MSFA's direction modes start near zero (mode 0 is the isotropic mean), so
  the gradient that grows the +x / -x contrast is proportional to that contrast after the input
  projection's LayerNorm, where C competes with A (spot noise ``noise``) and the noise columns.
  With the full task (data seed 10, spot noise 2), ``height`` 1.5 gave spagraph 0.917 / 0.900
  against 0.881 / 0.880 without direction bins (model seeds 0 / 1: the contrast half learnt), 3
  gave 0.961-0.975 against 0.771-0.882, and 6 gives 0.964-0.985 against 0.488-0.889 (model
  seeds 0-4, benchmarks/README.md). Alone neither signal is learnt in every seed within the
  training budget (C alone, A and B drowned in noise: 0.956 / 0.950 / 0.517 for seeds 0-2; the
  product alone is what "no direction bins" learns, and in 2 of 5 seeds it does not); together
  spagraph learnt the task in every run.

Both signals carry the full label (cancer patches have equal A / B signs *and* rising C), so a
model that uses both beats one that can use only one of them. The remaining embedding columns are
noise. Labels come from the patch type; no undetermined spots. Orientation is part of the signal
here (+x versus -x), so ``train.orient_augment`` must stay off on this task.

:func:`token_task_slice` is a sibling task for the fusion: a spot label made of products of matching
gene and image tokens (the spot, its ring, its shell), which cross-attention learns and pooled
concatenation does not (with ``TOKEN_MODEL`` / ``TOKEN_TRAIN``).
"""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd


def graph_task_slice(n_spots: int = 500, seed: int = 0, patch_spots: int = 40, noise: float = 0.7,
                     height: float = 6.0, c_noise: float = 0.3, d_noise: int = 3) -> ad.AnnData:
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
        # with an odd number of patches in a class, the extra one takes a random sign (always +1
        # made B = -A lean negative in normal patches only: a linear class signal across slices)
        first = rng.choice([1.0, -1.0])
        sign_a[idx] = rng.permutation(np.where(np.arange(len(idx)) % 2 == 0, first, -first))
    sign_b = np.where(kind == 1, sign_a, -sign_a)
    y = kind[patch]
    a = sign_a[patch] + noise * rng.normal(size=n_spots)
    b = sign_b[patch] + noise * rng.normal(size=n_spots)
    cw = height * _row_ramps(r[:n_spots], y) + c_noise * rng.normal(size=n_spots)
    gene = np.c_[a, cw, rng.normal(size=(n_spots, d_noise))].astype(np.float32)
    img = np.c_[b, rng.normal(size=(n_spots, d_noise))].astype(np.float32)
    obs = pd.DataFrame({"cancer": pd.array(y, dtype="Int8"), "patch": patch},
                       index=pd.Index([f"s{seed}_{i}" for i in range(n_spots)]))
    out = ad.AnnData(np.zeros((n_spots, 1), np.float32), obs=obs)
    out.obsm["spatial"] = pos * 100.0
    out.obsm["gene_emb"] = gene
    out.obsm["img_emb"] = img
    return out


def _row_ramps(row: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) values in (-1, 1): along each lattice row (spots in index order, x increasing), every
    maximal run of L same-class spots gets ``2 (k + 1/2) / L - 1`` at its k-th spot, rising for
    class 1 and falling for class 0; consecutive runs alternate in class, so the profile is a
    continuous triangle wave whose peaks and troughs sit on the class boundaries."""
    n = len(y)
    new_run = np.r_[True, (row[1:] != row[:-1]) | (y[1:] != y[:-1])]
    run = np.cumsum(new_run) - 1
    start = np.flatnonzero(new_run)
    length = np.diff(np.r_[start, n])
    k = np.arange(n) - start[run]
    up = 2 * (k + 0.5) / length[run] - 1
    return np.where(y == 1, up, -up)


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


def token_task_slice(n_spots: int = 400, seed: int = 0, label_noise: float = 0.3, terms: tuple[int, ...] = (0, 1, 2),
                     product: bool = True) -> ad.AnnData:
    """A sibling task on which a label needs products of *matching* image and gene tokens.

    Every spot draws two gene columns ``g`` and two image columns ``i``, i.i.d. N(0, 1), on the
    hex grid of :func:`graph_task_slice`. For the three neighbourhoods that are spagraph's tokens
    with ``graph.scales: [1, 2]`` and ``shells: true`` (t = 0 the spot itself, 1 its ring of 6
    neighbours, 2 the shell of 12 spots beyond it, exactly the graph's edges), ``u_t`` and ``v_t``
    are the means of ``g`` and ``i`` over that neighbourhood, each column standardised over the
    slice; the neighbourhoods are disjoint, so the three tokens carry independent content. The
    spot label is ``1[sum_t u_t . v_t / sqrt(6) + label_noise * e > 0]``: six products, each of
    one gene and one image column at the same scale. Negating every column leaves the label and the
    distribution unchanged and negates every linear score of the columns and their disc means, so
    such a score has AUC 0.5 in expectation (a linear model sits at chance); the spot's own product carries a third of the signal (a model
    that sees no neighbourhood reaches about 0.7), the rest needs the ring and shell tokens.

    ``obsm["gene_emb"]`` (n, 2), ``obsm["img_emb"]`` (n, 2), ``obsm["spatial"]`` (pixels, pitch
    100), ``obs["cancer"]`` Int8 (the spot label).

    Diagnostic variants (benchmarks/xattn_probe.py ``--parts diagnose``): ``terms`` the tokens whose
    products enter the label (e.g. ``(1,)``: the ring's only); ``product=False``: the label is the
    sign of the standardised gene column 0 summed over ``terms`` (a linear signal). The columns are
    the same for every variant of a seed."""
    from scipy.sparse import csr_matrix
    from spagraph.graph.neighbours import multiscale_edges
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_spots)))
    r, c = np.divmod(np.arange(side * side), side)
    pos = np.c_[c + 0.5 * (r % 2), r * np.sqrt(3) / 2][:n_spots]
    g, im = rng.normal(size=(n_spots, 2)), rng.normal(size=(n_spots, 2))
    means = [(g, im)]
    for e in multiscale_edges(pos, [1.0, 2.0], n_bins=1, pitch=1.0, shells=True):
        src, dst = e["edge_index"]
        w = csr_matrix((np.ones(len(src)), (dst, src)), shape=(n_spots, n_spots))
        w = csr_matrix(w.multiply(1.0 / np.maximum(w.sum(1), 1)))            # row means
        means.append((w @ g, w @ im))
    z = 0.0
    for t in terms:
        mg, mi = (m / m.std(0) for m in means[t])
        z = z + ((mg * mi).sum(1) if product else mg[:, 0])
    z = z / np.sqrt((2 if product else 1) * len(terms))
    y = (z + label_noise * rng.normal(size=n_spots) > 0).astype(int)
    obs = pd.DataFrame({"cancer": pd.array(y, dtype="Int8")}, index=pd.Index([f"t{seed}_{i}" for i in range(n_spots)]))
    out = ad.AnnData(np.zeros((n_spots, 1), np.float32), obs=obs)
    out.obsm["spatial"] = pos * 100.0
    out.obsm["gene_emb"], out.obsm["img_emb"] = g.astype(np.float32), im.astype(np.float32)
    return out


def token_task_graphs(n_slices: int = 12, n_spots: int = 400, seed: int = 10, **kw) -> list:
    """``n_slices`` slices of :func:`token_task_slice` (seeds ``seed``, ``seed + 1``, ...) as slice
    graphs with the scales the label is built on (``[1, 2]``, shells, 8 direction bins)."""
    from spagraph.graph import GraphSettings, build_slice_graph
    gs = GraphSettings(scales=[1.0, 2.0], n_dir_bins=8, shells=True)
    return [build_slice_graph(token_task_slice(n_spots, seed + i, **kw), gs, name=f"tokens{seed + i}")
            for i in range(n_slices)]


# model and training settings under which the graph network learns this task (benchmarks/graph_task.py)
TASK_MODEL = dict(hidden=32, heads=4, dropout=0.1, input_dropout=0.0, modality_dropout=0.0, contrastive_weight=0.0)
TASK_TRAIN = dict(epochs=80, lr=1e-2, patience=80, min_epochs=1)

# the token task (:func:`token_task_slice`, ``benchmarks/graph_task.py --task tokens``): scale tokens built
# from the input embeddings and layer-normalised (``model.msfa_input: input``, ``model.token_norm``), and a
# smaller learning rate for longer (at lr 1e-2 cross-attention learnt the products in 1 of 3 seeds)
TOKEN_MODEL = TASK_MODEL | dict(msfa_input="input", token_norm=True)
TOKEN_TRAIN = dict(epochs=200, lr=3e-3, patience=200, min_epochs=1)
