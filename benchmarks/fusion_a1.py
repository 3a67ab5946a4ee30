"""Image + gene fusion on her2st A1 (the one annotated section with H&E) under spatially blocked CV.

Protocol (:mod:`spagraph.train.blocked`): A1 cut into 4 spatial blocks (k-means on the spot
centres, and x/y quadrants, as ``benchmarks/image_signal_a1.py``); each block is predicted by a
model that never sees its labels: fitted on two blocks, the epoch chosen on the third (the next
block in cyclic order; early stopping and, with a linear prior, the prior-versus-deep rule), then
refitted on all three for that many epochs. Cancer = invasive cancer + cancer in situ;
undetermined excluded. Features (label-free, whole slice): handcrafted image embedding
(``spagraph/embed/handcrafted.py``, scales 1.0 + 2.8 spot diameters, cached) and gene PCA (2000
HVGs, ``--n-pcs`` PCs, each gene z-scored within the slice), each column z-scored over the slice.
Reported: pooled out-of-block AUC and the mean of the 4 per-block AUCs, per scheme and seed.

Rows: logistic regressions on the same features (image, genes, both; raw and with disc means at
1/2/3 pitches), and spagraph variants (``VARIANTS``).

With ``--pretrain``: the image-gene contrastive alignment (:mod:`spagraph.pretrain.contrastive`)
is pretrained on the unannotated sections with H&E (B4, C2-C6; patient rule enforced in code),
and the fusion model fine-tuned from it is compared, paired per block, with the same model from
scratch; in that mode the gene PCA is fitted on A1 + the pretraining sections (unsupervised) for
both arms.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/fusion_a1.py --seeds 0 1 2
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/fusion_a1.py --pretrain --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# name -> (model overrides, modalities)
BASE_MODEL = dict(hidden=32, heads=4, layers=1, dropout=0.2, input_dropout=0.1, contrastive_weight=0.1,
                  modality_dropout=0.2, cross_attention=True, msfa=True)
BASE_TRAIN = dict(epochs=150, lr=1e-3, weight_decay=1e-2, patience=30, min_epochs=10, batch_mode="full",
                  device="cpu")
PRIOR = {"linear_path": True, "linear_C": 0.01}
VARIANTS = {
    # the deep network alone (no linear path): what MSFA + fusion learn by themselves
    "fusion (MSFA + cross-attention + InfoNCE)": ({}, ("img", "gene")),
    "concat instead of cross-attention": ({"cross_attention": False}, ("img", "gene")),
    "no contrastive term": ({"contrastive_weight": 0.0}, ("img", "gene")),
    "image only": ({}, ("img",)),
    "genes only": ({}, ("gene",)),
    # with the linear prior (logistic regression on the inputs + disc means, training blocks only,
    # frozen; the deep part a residual kept only if it beats the prior on the validation block)
    "prior + fusion": (PRIOR, ("img", "gene")),
    "prior + concat": (PRIOR | {"cross_attention": False}, ("img", "gene")),
    "prior + fusion, image only": (PRIOR, ("img",)),
    "prior + fusion, genes only": (PRIOR, ("gene",)),
}


def load_a1(data: Path, cache: Path, n_pcs: int, extra_gene_fit: list | None = None):
    """A1 AnnData with obsm img_emb / gene_emb (gene PCA fitted on A1 + ``extra_gene_fit``)."""
    from spagraph.embed.cache import EmbeddingCache, cache_key, slice_hash
    from spagraph.embed.gene import fit_gene_encoder, shared_genes
    from spagraph.embed.image import get_image_encoder
    from spagraph.io import read_her2st
    a = read_her2st(data / "her2st", "A1")
    enc = get_image_encoder("handcrafted", {})
    c = EmbeddingCache(cache)
    key = cache_key(slice_hash(a), "handcrafted", enc.settings())
    emb = c.get(key, n_rows=a.n_obs)
    if emb is None:
        emb = enc.encode(a)
        c.put(key, emb, meta={"slice": "A1", "encoder": "handcrafted", "settings": enc.settings()})
    a.obsm["img_emb"] = emb
    fit_on = [a] + list(extra_gene_fit or [])
    g = fit_gene_encoder("pca", fit_on, {"n_hvg": 2000, "n_pcs": n_pcs, "slice_norm": "zscore"},
                         genes=shared_genes(fit_on))
    a.obsm["gene_emb"] = g.transform(a)
    return a, g


def graph_of(a, modalities, name="A1"):
    from spagraph.graph import GraphSettings, build_slice_graph
    from spagraph.train.blocked import zscore_features
    b = a.copy()
    for m, key in (("img", "img_emb"), ("gene", "gene_emb")):
        if m not in modalities:
            del b.obsm[key]
    return zscore_features(build_slice_graph(b, GraphSettings(scales=[1.0, 2.0, 3.0], n_dir_bins=8), name=name))


def a1_nce(g, ms, seed, state) -> float:
    """InfoNCE between A1's pooled image and gene vectors (all spots, eval mode; no labels) for
    streams freshly initialised with ``seed`` or loaded from ``state``."""
    import torch
    from spagraph.nn.losses import info_nce
    from spagraph.nn.model import SpaGraphNet
    from spagraph.train.fit import seed_everything
    seed_everything(seed)
    m = SpaGraphNet(g.x_img.shape[1], g.x_gene.shape[1], g.num_scales, g.n_dir_bins, ms)
    if state:
        m.load_state_dict(state, strict=False)
    m.eval()
    with torch.no_grad():
        out = m(g)
        return float(info_nce(out["z_img"], out["z_gene"], ms.temperature))


def summarise(res, y, lab):
    from sklearn.metrics import roc_auc_score
    ok = lab & ~np.isnan(res.scores)
    pooled = float(roc_auc_score(y[ok], res.scores[ok]))
    per = [p["auc"] for p in res.per_block if p["auc"] is not None]
    return pooled, float(np.mean(per)), per


def paired_from_file(path: Path, reference: str) -> None:
    """Per block and seed, AUC(row) - AUC(reference) from a ``--save`` file: mean ± SE over the
    block x seed pairs, better / worse counts, and the same on the seed-ensembled scores."""
    from sklearn.metrics import roc_auc_score
    z = np.load(path)
    y, lab = z["y"], z["labelled"]
    schemes = sorted(k.split("|")[1] for k in z.files if k.startswith("blocks|"))
    names = list(dict.fromkeys(k.split("|")[0] for k in z.files if "|" in k and not k.startswith("blocks|")))
    if reference not in names:
        raise SystemExit(f"{path}: no row {reference!r}; rows: {names}")

    def block_aucs(sc, bl):
        return np.array([roc_auc_score(y[lab & (bl == b)], sc[lab & (bl == b)]) for b in np.unique(bl)])
    print(f"paired per block against {reference!r} ({path}):")
    for n in names:
        if n == reference:
            continue
        for scheme in schemes:
            bl = z[f"blocks|{scheme}"]
            ref, row = z[f"{reference}|{scheme}"], z[f"{n}|{scheme}"]
            d = np.concatenate([block_aucs(r, bl) - block_aucs(f, bl) for r, f in zip(row, ref)])
            de = block_aucs(row.mean(0), bl) - block_aucs(ref.mean(0), bl)
            print(f"  {n} - reference, {scheme}: {d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f} over "
                  f"{len(d)} block x seed pairs (better {int((d > 0).sum())}, worse {int((d < 0).sum())}); "
                  f"seed ensembles {de.mean():+.3f} (per block " + ", ".join(f"{v:+.3f}" for v in de) + ")")


def main() -> None:
    import torch
    from spagraph.nn import ModelSettings
    from spagraph.nn.disc_mean import with_disc_means
    from spagraph.train.blocked import blocked_scores, logreg_block_fitter, spagraph_block_fitter, spatial_blocks
    from spagraph.train.fit import TrainSettings
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("SPAGRAPH_CACHE", Path.home() / ".cache" / "spagraph")))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--schemes", nargs="+", default=["kmeans", "quadrants"])
    ap.add_argument("--n-pcs", type=int, default=20)
    ap.add_argument("--only", nargs="*", default=None, help="spagraph variants to run (exact names)")
    ap.add_argument("--no-logreg", action="store_true")
    ap.add_argument("--pretrain", action="store_true", help="contrastive pretraining on B4, C2-C6 vs scratch")
    ap.add_argument("--pretrain-epochs", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--save", type=Path, default=None, help="write every out-of-block score to this .npz")
    ap.add_argument("--paired", type=Path, default=None, help="only compare rows of a --save file, paired per block")
    ap.add_argument("--reference", default="fusion (MSFA + cross-attention + InfoNCE)")
    a_ = ap.parse_args()
    if a_.paired:
        return paired_from_file(a_.paired, a_.reference)
    torch.set_num_threads(1)
    t0 = time.time()
    extra = None
    if a_.pretrain:
        from spagraph.pretrain.contrastive import PRETRAIN_SECTIONS, load_pretrain_slices
        extra = load_pretrain_slices(a_.data / "her2st_unlabelled", PRETRAIN_SECTIONS, a_.cache, predicted=["A1"])
    a, genc = load_a1(a_.data, a_.cache, a_.n_pcs, extra)
    lab_s = a.obs["cancer"]
    lab = lab_s.notna().to_numpy()
    y = lab_s.astype("Float32").to_numpy(dtype=np.float32, na_value=np.nan)
    print(f"A1: {a.n_obs} spots, {lab.sum()} labelled, {int(np.nansum(y))} cancer; img d={a.obsm['img_emb'].shape[1]}, "
          f"gene PCs {a.obsm['gene_emb'].shape[1]}; load {os.getloadavg()[0]:.1f} ({time.time() - t0:.0f} s)", flush=True)
    blocks = {s: spatial_blocks(a.obsm["spatial"], s) for s in a_.schemes}
    g_both = graph_of(a, ("img", "gene"))
    rows = []
    scores = {}

    def report(name, seed, scheme, res, secs):
        pooled, mean, per = summarise(res, y, lab)
        eps = [p["epoch"] for p in res.per_block]
        rows.append((name, seed, scheme, pooled, mean, per))
        scores.setdefault((name, scheme), []).append(res.scores)
        print(f"| {name} | {seed} | {scheme} | {pooled:.3f} | {mean:.3f} | " + ", ".join(f"{v:.3f}" for v in per)
              + f" | {eps} | {secs:.0f} | {os.getloadavg()[0]:.1f} |", flush=True)

    print("| model | seed | blocks | pooled AUC | mean block AUC | per block | epochs | s | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    if not a_.pretrain and not a_.no_logreg:
        feats = {"image": lambda g: g.x_img.numpy(), "genes": lambda g: g.x_gene.numpy(),
                 "image + genes": lambda g: np.hstack([g.x_img.numpy(), g.x_gene.numpy()]),
                 "image + genes, disc means": lambda g: torch.cat([with_disc_means(g.x_img, g, g.num_scales),
                                                                  with_disc_means(g.x_gene, g, g.num_scales)], 1).numpy()}
        for fname, fn in feats.items():
            for scheme, bl in blocks.items():
                t = time.time()
                report(f"logistic regression: {fname}", "-", scheme, blocked_scores(g_both, bl, logreg_block_fitter(fn)),
                       time.time() - t)
    ts = TrainSettings(**BASE_TRAIN)
    if a_.pretrain:
        from spagraph.pretrain.contrastive import pretrain_contrastive
        ms = ModelSettings(**BASE_MODEL)
        for b in extra:
            b.obsm["gene_emb"] = genc.transform(b)
        pre_graphs = [graph_of(b, ("img", "gene"), name=b.uns["spagraph_slice"]["library_id"]) for b in extra]
        for seed in a_.seeds:
            arms = [("fusion from scratch", None)]
            for ep in a_.pretrain_epochs:
                t = time.time()
                pre = pretrain_contrastive(pre_graphs, ms, epochs=ep, seed=seed, predicted=["A1"])
                print(f"pretraining {ep} epochs, seed {seed}: InfoNCE on B4, C2-C6 {pre.history[0]:.3f} -> "
                      f"{pre.history[-1]:.3f}; on A1 (label-free): fresh streams {a1_nce(g_both, ms, seed, None):.3f}, "
                      f"pretrained {a1_nce(g_both, ms, seed, pre.state):.3f} ({time.time() - t:.0f} s)", flush=True)
                arms.append((f"fusion, contrastive-pretrained {ep} epochs", pre.state))
            for arm, warm in arms:
                for scheme, bl in blocks.items():
                    t = time.time()
                    report(arm, seed, scheme, blocked_scores(g_both, bl, spagraph_block_fitter(ms, ts, seed, warm)),
                           time.time() - t)
    else:
        graphs = {("img", "gene"): g_both, ("img",): graph_of(a, ("img",)), ("gene",): graph_of(a, ("gene",))}
        for name, (over, mods) in VARIANTS.items():
            if a_.only and name not in a_.only:
                continue
            ms = ModelSettings(**(BASE_MODEL | over))
            for seed in a_.seeds:
                for scheme, bl in blocks.items():
                    t = time.time()
                    report(name, seed, scheme, blocked_scores(graphs[mods], bl, spagraph_block_fitter(ms, ts, seed)),
                           time.time() - t)
    print("\nmean over seeds (pooled AUC / mean block AUC):")
    for name in dict.fromkeys(r[0] for r in rows):
        parts = []
        for scheme in a_.schemes:
            rr = [r for r in rows if r[0] == name and r[2] == scheme]
            parts.append(f"{scheme} {np.mean([r[3] for r in rr]):.3f} / {np.mean([r[4] for r in rr]):.3f}")
        print(f"  {name}: " + "; ".join(parts))
    if len(a_.seeds) > 1:
        from sklearn.metrics import roc_auc_score
        print(f"ensemble of the {len(a_.seeds)} seeds (mean probability per spot; pooled AUC / mean block AUC):")
        for name in dict.fromkeys(r[0] for r in rows if r[1] != "-"):
            parts = []
            for scheme in a_.schemes:
                ens = np.mean(scores[(name, scheme)], axis=0)
                per = [roc_auc_score(y[lab & (blocks[scheme] == b)], ens[lab & (blocks[scheme] == b)])
                       for b in np.unique(blocks[scheme])]
                parts.append(f"{scheme} {roc_auc_score(y[lab], ens[lab]):.3f} / {np.mean(per):.3f}")
            print(f"  {name}: " + "; ".join(parts))
    if a_.save:
        from spagraph.utils import atomic_path
        with atomic_path(a_.save) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, y=y, labelled=lab, **{f"{n}|{sc}": np.array(v) for (n, sc), v in scores.items()},
                         **{f"blocks|{sc}": b for sc, b in blocks.items()})
    if a_.pretrain:
        for arm in dict.fromkeys(r[0] for r in rows if "pretrained" in r[0]):
            for scheme in a_.schemes:
                d = [np.array(r2[5]) - np.array(r1[5]) for r1 in rows for r2 in rows
                     if r1[0] == "fusion from scratch" and r2[0] == arm and r1[1] == r2[1] and r1[2] == r2[2] == scheme]
                d = np.concatenate(d)
                print(f"  paired per block ({arm}, {scheme}, {len(d)} block x seed pairs): pretrained - scratch "
                      f"{d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f} (better {int((d > 0).sum())}, "
                      f"worse {int((d < 0).sum())})")
    print(f"total {time.time() - t0:.0f} s, load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
