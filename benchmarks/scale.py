"""Speed / memory scaling of graph build, training and inference on synthetic point clouds.

    .venv/bin/python benchmarks/scale.py                       # 1k, 10k, 100k, 1M spots
    .venv/bin/python benchmarks/scale.py --sizes 1000 10000    # quick
    .venv/bin/python benchmarks/scale.py --json runs/scale.json

Each size runs in its own subprocess so that peak RSS (``resource.getrusage``) is that size's
own. Points: a hex grid (Visium-like), random float32 features (50 gene dims, no image),
random labels; graph scales [1, 2, 3] pitches, 8 direction bins; SpaGraphNet defaults (hidden 64).

Stages per size:
  build  ``build_slice_graph`` wall time; tracemalloc peak (numpy allocations) and RSS after.
  train  one epoch of ``fit`` (no validation): full graph up to ``--max-full`` spots, else
         spatial tiles (``TrainSettings(batch_mode="tiles")``). Above ``--train-cap`` spots the
         epoch is timed on the first tiles covering ``--train-cap`` interior spots (same code path)
         and extrapolated by interior spots: marked ``extrapolated``. Reports the largest tile.
  infer  ``predict_scores`` over the whole slice (full graph or tiles, same rule).
Then a table and the log-log growth exponent of each stage's time between successive sizes.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from spagraph.graph.neighbours import ANN_THRESHOLD


def hex_grid(n: int, pitch: float = 100.0) -> np.ndarray:
    """``n`` spot centres on a roughly square hex grid with the given pitch."""
    cols = int(np.ceil(np.sqrt(n * 2 / np.sqrt(3))))
    rows = int(np.ceil(n / cols))
    r, c = np.divmod(np.arange(rows * cols), cols)
    x = (c + 0.5 * (r % 2)) * pitch
    y = r * pitch * np.sqrt(3) / 2
    return np.c_[x, y][:n].astype(np.float64)


def rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pca_like(n: int, d: int, rng) -> np.ndarray:
    """Features shaped like a gene embedding's principal components: 30 expression states (cluster
    centres) plus noise, both with variance decaying as 1/j over the ``d`` components (isotropic
    Gaussian noise would have no neighbour structure at all: every neighbour list is a tie)."""
    lam = 1.0 / np.arange(1, d + 1)
    centres = rng.normal(size=(30, d)) * np.sqrt(lam) * 2
    return (centres[rng.integers(0, 30, n)] + rng.normal(size=(n, d)) * np.sqrt(lam)).astype(np.float32)


def knn_recall(x: np.ndarray, edges: np.ndarray, k: int, rng, n_check: int = 2000) -> float:
    """recall@k of the graph's feature neighbours against exact search, on ``n_check`` random spots."""
    import torch
    n = len(x)
    s = rng.choice(n, min(n_check, n), replace=False)
    xt = torch.from_numpy(np.asarray(x, dtype=np.float64))
    exact = []
    for a in range(0, len(s), 100):           # 100 x n float64 at a time (a 1M-spot slice: 0.8 GB)
        d2 = torch.cdist(xt[s[a:a + 100]], xt)
        d2[torch.arange(len(d2)), torch.from_numpy(s[a:a + 100])] = float("inf")
        exact.append(torch.topk(d2, k, largest=False).indices.numpy())
        del d2
    exact = np.vstack(exact)
    got = edges[0].reshape(n, k)      # grouped by destination spot, k each
    return float(np.mean([len(set(exact[i]) & set(got[j])) / k for i, j in enumerate(s)]))


def one_size(n: int, d_gene: int, max_full: int, train_cap: int, tile_size: float, seed: int = 0,
             feature_knn: int = 10) -> dict:
    import anndata as ad
    import pandas as pd
    import torch
    from spagraph.graph import GraphSettings, build_slice_graph
    from spagraph.nn.model import ModelSettings
    from spagraph.train.fit import TrainSettings, _batches, _loss, fit, predict_scores, seed_everything
    from spagraph.nn.model import SpaGraphNet

    import spagraph.graph.build as gb
    from spagraph.graph.neighbours import feature_knn_edges
    rng = np.random.default_rng(seed)
    pos = hex_grid(n)
    a = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(n).astype(str)))
    a.obsm["spatial"] = pos
    a.obsm["gene_emb"] = pca_like(n, d_gene, rng)
    a.obs["cancer"] = pd.array(rng.integers(0, 2, n), dtype="Int8")
    # warm-up (lazy initialisation of torch / PyG kernels) on a small graph, not timed
    w = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(300).astype(str)))
    w.obsm["spatial"], w.obsm["gene_emb"] = hex_grid(300), rng.normal(size=(300, d_gene)).astype(np.float32)
    w.obs["cancer"] = pd.array(rng.integers(0, 2, 300), dtype="Int8")
    wg = build_slice_graph(w, GraphSettings(scales=[1.0, 2.0, 3.0], n_dir_bins=8))
    predict_scores(fit([wg], [], ModelSettings(contrastive_weight=0.0), TrainSettings(epochs=1, device="cpu"), seed).model, wg)
    rec = {"n": n, "threads": torch.get_num_threads(), "rss_start_mb": round(rss_mb(), 1)}

    gc.collect()
    knn_time = []

    def timed_knn(*args, **kw):      # the feature-kNN part of the build, timed on its own
        t1 = time.perf_counter()
        e = feature_knn_edges(*args, **kw)
        knn_time.append(time.perf_counter() - t1)
        return e

    gb.feature_knn_edges = timed_knn
    tracemalloc.start()
    t = time.perf_counter()
    g = build_slice_graph(a, GraphSettings(scales=[1.0, 2.0, 3.0], n_dir_bins=8, feature_knn=feature_knn), name=f"hex{n}")
    rec["build_s"] = time.perf_counter() - t
    rec["feature_knn_s"] = knn_time[0] if knn_time else None
    if feature_knn:
        rec["knn_method"] = "approximate (ivf)" if n > ANN_THRESHOLD else "exact"
        feats, knn_edges = np.asarray(a.obsm["gene_emb"]), g.edge_index_feat.numpy().copy()
    rec["build_tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    rec["edges"] = int(sum(g[f"edge_index_{k}"].shape[1] for k in range(g.num_scales)))
    rec["graph_mb"] = sum(v.element_size() * v.numel() for _, v in g if torch.is_tensor(v)) / 2**20
    rec["rss_after_build_mb"] = round(rss_mb(), 1)
    del a
    gc.collect()

    tiles = n > max_full
    ts = TrainSettings(epochs=1, batch_mode="tiles" if tiles else "full", tile_size=tile_size, device="cpu")
    ms = ModelSettings(contrastive_weight=0.0, feature_smoothing=0.5 if feature_knn else 0.0)
    rec["mode"] = "tiles" if tiles else "full"
    rss0 = rss_mb()
    if n <= train_cap:
        t = time.perf_counter()
        res = fit([g], [], ms, ts, seed)
        rec["train_epoch_s"] = time.perf_counter() - t
        rec["train_extrapolated"] = False
        model = res.model
    else:   # same per-piece code as fit(), on the first tiles only, then extrapolated by spots
        seed_everything(seed)
        model = SpaGraphNet(0, d_gene, g.num_scales, g.n_dir_bins, ms)
        opt = torch.optim.AdamW(model.parameters(), lr=ts.lr, weight_decay=ts.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        done, t = 0, time.perf_counter()
        model.train()
        for piece, mask in _batches(g, ts, np.random.default_rng(seed)):
            out = model(piece, ms.modality_dropout)
            loss, _ = _loss(model, out, piece.y, mask, 1.0, ts, gen)
            opt.zero_grad(); loss.backward(); opt.step()
            done += int(mask.sum())
            if done >= train_cap:
                break
        rec["train_epoch_s"] = (time.perf_counter() - t) * n / done
        rec["train_extrapolated"] = True
        rec["train_timed_spots"] = done
    rec["rss_train_delta_mb"] = round(rss_mb() - rss0, 1)
    if tiles:   # the tiling alone (subgraph extraction, no model), and the largest tile
        from spagraph.train.tiles import iter_tiles
        t = time.perf_counter()
        sizes = [(sub.num_nodes, sum(sub[f"edge_index_{k}"].shape[1] for k in range(g.num_scales)))
                 for sub, _ in iter_tiles(g, tile_size)]
        rec["tiling_s"] = time.perf_counter() - t
        rec["n_tiles"] = len(sizes)
        rec["max_tile_nodes"], rec["max_tile_edges"] = max(s[0] for s in sizes), max(s[1] for s in sizes)

    rss0 = rss_mb()
    t = time.perf_counter()
    s = predict_scores(model, g, ts)
    rec["infer_s"] = time.perf_counter() - t
    rec["rss_infer_delta_mb"] = round(rss_mb() - rss0, 1)
    assert s.shape == (n,) and np.isfinite(s).all()
    rec["rss_peak_mb"] = round(rss_mb(), 1)
    rec["total_s"] = rec["build_s"] + rec["train_epoch_s"] + rec["infer_s"]
    if feature_knn:     # after the peak above: the check itself must not count
        rec["knn_recall_at_k"] = knn_recall(feats, knn_edges, feature_knn, rng)
    return rec


def exponents(recs: list[dict], key: str) -> list[float | None]:
    out = [None]
    for a, b in zip(recs, recs[1:]):
        ok = a.get(key) and b.get(key)
        out.append(float(np.log(b[key] / a[key]) / np.log(b["n"] / a["n"])) if ok else None)
    return out


def print_table(recs: list[dict]) -> str:
    ex = {k: exponents(recs, k) for k in ("build_s", "train_epoch_s", "infer_s")}
    f = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ["| spots | feature kNN s | kNN | recall@k | total s | peak RSS MiB |", "|---|---|---|---|---|---|"]
    for r in recs:
        lines.append(f"| {r['n']:,} | {f(r.get('feature_knn_s'))} | {r.get('knn_method', 'off')} | "
                     f"{f(r.get('knn_recall_at_k'))} | {f(r.get('total_s'))} | {r['rss_peak_mb']:.0f} |")
    lines += ["", "| spots | edges | build s (exp) | build tracemalloc peak MiB | train epoch s (exp) | mode | "
             "infer s (exp) | tiling s | peak RSS MiB | RSS +train MiB | max tile nodes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(recs):
        tr = f"{r['train_epoch_s']:.2f}" + (" (extrap.)" if r.get("train_extrapolated") else "")
        lines.append(f"| {r['n']:,} | {r['edges']:,} | {r['build_s']:.2f} ({f(ex['build_s'][i])}) | "
                     f"{r['build_tracemalloc_peak_mb']:.0f} | {tr} ({f(ex['train_epoch_s'][i])}) | {r['mode']} | "
                     f"{r['infer_s']:.2f} ({f(ex['infer_s'][i])}) | {f(r.get('tiling_s'))} | {r['rss_peak_mb']:.0f} | {r['rss_train_delta_mb']:.0f} | "
                     f"{r.get('max_tile_nodes', '—')} |")
    if len(recs) > 2:
        n = np.log([r["n"] for r in recs])
        fits = {k: np.polyfit(n, np.log([r[k] for r in recs]), 1)[0] for k in ("build_s", "train_epoch_s", "infer_s")}
        lines.append("")
        lines.append("log-log slope over all sizes: " + ", ".join(f"{k} {v:.2f}" for k, v in fits.items()))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--d-gene", type=int, default=20, help="gene embedding dims (her2st default: 20 PCs)")
    ap.add_argument("--feature-knn", type=int, default=10, help="graph.feature_knn (her2st default 10; 0: off)")
    ap.add_argument("--max-full", type=int, default=50_000, help="full-graph training/inference up to this many spots")
    ap.add_argument("--train-cap", type=int, default=100_000, help="time training on at most this many spots, extrapolate beyond")
    ap.add_argument("--tile-size", type=float, default=40.0)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--json", help="also write the records here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    if a.one:
        print("RESULT " + json.dumps(one_size(a.one, a.d_gene, a.max_full, a.train_cap, a.tile_size, feature_knn=a.feature_knn)))
        return
    recs = []
    for n in a.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--d-gene", str(a.d_gene), "--feature-knn", str(a.feature_knn), "--max-full", str(a.max_full),
               "--train-cap", str(a.train_cap), "--tile-size", str(a.tile_size)] + (["--threads", str(a.threads)] if a.threads else [])
        t = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode != 0 or not line:
            print(f"size {n}: failed (rc {p.returncode})\n{p.stderr[-2000:]}", file=sys.stderr)
            break
        recs.append(json.loads(line[0][7:]))
        print(f"size {n:,}: done in {time.time() - t:.0f} s: {recs[-1]}", file=sys.stderr, flush=True)
    print(print_table(recs))
    print(f"\nload average at end: {os.getloadavg()}; cpu count {os.cpu_count()}")
    if a.json:
        from spagraph.utils import atomic_write_json
        atomic_write_json(a.json, recs)


if __name__ == "__main__":
    main()
