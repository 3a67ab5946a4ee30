"""Speed / memory scaling of graph build, training and inference on synthetic point clouds.

    PYTHONPATH=. .venv/bin/python benchmarks/scale.py --sizes 1000000   # the issue-17 target, every figure
    PYTHONPATH=. .venv/bin/python benchmarks/scale.py                   # 1k, 10k, 100k, 1M spots
    PYTHONPATH=. .venv/bin/python benchmarks/scale.py --sizes 1000 10000 --json runs/scale.json

Each size runs in its own subprocess so that peak RSS (``resource.getrusage``) is that size's
own. Points: a hex grid (Visium-like), gene-embedding-like float32 features (``--d-gene`` 20
dims, :func:`pca_like`; no image), random labels; graph scales [1, 2, 3] pitches, 8 direction
bins, ``feature_knn`` 10 (her2st's default; exact up to 200k spots, approximate above);
SpaGraphNet defaults (hidden 64) with score smoothing over the feature kNN (0.5).
``--threads`` (default 2, the 2-core target) sets torch's threads and the graph build's.

Stages per size, each as wall and CPU (user + sys, all threads) seconds, with the load average:
  spatial      ``build_slice_graph`` without the feature kNN (3 radii, direction bins).
  feature kNN  ``feature_knn_edges`` inside the build; recall@k against exact search on
               ``--n-check`` random spots (after the timings and the peak RSS).
  train        one whole epoch of ``fit`` (no validation): full graph up to ``--max-full`` spots,
               else spatial tiles (``TrainSettings(batch_mode="tiles")``). With ``--train-cap``
               the epoch is timed on the first tiles covering that many interior spots and
               extrapolated (marked ``extrap.``).
  infer        ``predict_scores`` over the whole slice (tiles, no_grad, then smoothing).
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


def clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system of this process, all threads)."""
    t = os.times()
    return time.perf_counter(), t.user + t.system


def since(c0: tuple[float, float]) -> tuple[float, float]:
    w, c = clock()
    return w - c0[0], c - c0[1]


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


def one_size(n: int, d_gene: int, max_full: int, train_cap: int | None, tile_size: float, seed: int = 0,
             feature_knn: int = 10, build_only: bool = False, n_check: int = 2000) -> dict:
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
    rec = {"n": n, "threads": torch.get_num_threads(), "rss_start_mb": round(rss_mb(), 1),
           "load_start": round(os.getloadavg()[0], 2)}

    gc.collect()
    knn_time = []

    def timed_knn(*args, **kw):      # the feature-kNN part of the build, timed on its own
        c1 = clock()
        e = feature_knn_edges(*args, **kw)
        knn_time.append(since(c1))
        return e

    gb.feature_knn_edges = timed_knn
    c0 = clock()
    g = build_slice_graph(a, GraphSettings(scales=[1.0, 2.0, 3.0], n_dir_bins=8, feature_knn=feature_knn), name=f"hex{n}")
    rec["build_s"], rec["build_cpu_s"] = since(c0)
    rec["feature_knn_s"], rec["feature_knn_cpu_s"] = knn_time[0] if knn_time else (0.0, 0.0)
    rec["spatial_s"], rec["spatial_cpu_s"] = rec["build_s"] - rec["feature_knn_s"], rec["build_cpu_s"] - rec["feature_knn_cpu_s"]
    rec["load_build"] = round(os.getloadavg()[0], 2)
    if feature_knn:
        rec["knn_method"] = "approximate (ivf)" if n > ANN_THRESHOLD else "exact"
        feats, knn_edges = np.asarray(a.obsm["gene_emb"]), g.edge_index_feat.numpy().copy()
    rec["edges"] = int(sum(g[f"edge_index_{k}"].shape[1] for k in range(g.num_scales)))
    rec["graph_mb"] = sum(v.element_size() * v.numel() for _, v in g if torch.is_tensor(v)) / 2**20
    rec["rss_after_build_mb"] = round(rss_mb(), 1)
    del a
    gc.collect()
    if build_only:        # graph + feature kNN only (train / infer skipped)
        rec["rss_peak_mb"] = round(rss_mb(), 1)
        rec.update(mode="build only", train_epoch_s=None, infer_s=None, total_s=rec["build_s"],
                   total_cpu_s=rec["build_cpu_s"], rss_train_delta_mb=0)
        if feature_knn:
            rec["knn_recall_at_k"] = knn_recall(feats, knn_edges, feature_knn, rng, n_check)
        return rec

    tiles = n > max_full
    ts = TrainSettings(epochs=1, batch_mode="tiles" if tiles else "full", tile_size=tile_size, device="cpu")
    ms = ModelSettings(contrastive_weight=0.0, feature_smoothing=0.5 if feature_knn else 0.0)
    rec["mode"] = "tiles" if tiles else "full"
    rss0 = rss_mb()
    if not train_cap or n <= train_cap:     # one whole epoch: every tile (or the full graph) once
        c0 = clock()
        res = fit([g], [], ms, ts, seed)
        rec["train_epoch_s"], rec["train_epoch_cpu_s"] = since(c0)
        rec["train_extrapolated"] = False
        model = res.model
    else:   # same per-piece code as fit(), on the first tiles only, then extrapolated by spots
        seed_everything(seed)
        model = SpaGraphNet(0, d_gene, g.num_scales, g.n_dir_bins, ms)
        opt = torch.optim.AdamW(model.parameters(), lr=ts.lr, weight_decay=ts.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        done, c0 = 0, clock()
        model.train()
        for piece, mask in _batches(g, ts, np.random.default_rng(seed)):
            out = model(piece, ms.modality_dropout)
            loss, _ = _loss(model, out, piece.y, mask, 1.0, ts, gen)
            opt.zero_grad(); loss.backward(); opt.step()
            done += int(mask.sum())
            if done >= train_cap:
                break
        wall, cpu = since(c0)
        rec["train_epoch_s"], rec["train_epoch_cpu_s"] = wall * n / done, cpu * n / done
        rec["train_extrapolated"] = True
        rec["train_timed_spots"] = done
    rec["load_train"] = round(os.getloadavg()[0], 2)
    rec["rss_train_delta_mb"] = round(rss_mb() - rss0, 1)

    rss0 = rss_mb()
    c0 = clock()
    s = predict_scores(model, g, ts)
    rec["infer_s"], rec["infer_cpu_s"] = since(c0)
    rec["load_infer"] = round(os.getloadavg()[0], 2)
    rec["rss_infer_delta_mb"] = round(rss_mb() - rss0, 1)
    assert s.shape == (n,) and np.isfinite(s).all()
    rec["rss_peak_mb"] = round(rss_mb(), 1)
    rec["total_s"] = rec["build_s"] + rec["train_epoch_s"] + rec["infer_s"]
    rec["total_cpu_s"] = rec["build_cpu_s"] + rec["train_epoch_cpu_s"] + rec["infer_cpu_s"]
    if tiles:   # the tiling alone (subgraph extraction, no model), and the largest tile; not in the total
        from spagraph.train.tiles import iter_tiles
        c0 = clock()
        sizes = [(sub.num_nodes, sum(sub[f"edge_index_{k}"].shape[1] for k in range(g.num_scales)))
                 for sub, _ in iter_tiles(g, tile_size)]
        rec["tiling_s"], rec["tiling_cpu_s"] = since(c0)
        rec["n_tiles"] = len(sizes)
        rec["max_tile_nodes"], rec["max_tile_edges"] = max(s[0] for s in sizes), max(s[1] for s in sizes)
    if feature_knn:     # after the peak above: the check itself must not count
        rec["knn_recall_at_k"] = knn_recall(feats, knn_edges, feature_knn, rng, n_check)
        rec["knn_recall_checked"] = min(n_check, n)
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
    wc = lambda r, k: "—" if r.get(k) is None else f"{r[k]:.1f} / {r.get(k.replace('_s', '_cpu_s'), float('nan')):.1f}"  # noqa: E731
    lines = ["wall / CPU seconds (CPU = user + sys of the process, all threads; on a shared machine wall > CPU / threads)",
             "", "| spots | threads | spatial graph | feature kNN | kNN | recall@k | train epoch | infer | total | "
             "peak RSS MiB | load avg (start, end) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        tr = wc(r, "train_epoch_s") + (" (extrap.)" if r.get("train_extrapolated") else "")
        lines.append(f"| {r['n']:,} | {r.get('threads', '—')} | {wc(r, 'spatial_s')} | {wc(r, 'feature_knn_s')} | "
                     f"{r.get('knn_method', 'off')} | {f(r.get('knn_recall_at_k'))} | {tr} | {wc(r, 'infer_s')} | "
                     f"{wc(r, 'total_s')} | {r['rss_peak_mb']:.0f} | {r.get('load_start', '—')}, "
                     f"{r.get('load_infer', r.get('load_build', '—'))} |")
    if any(r["mode"] == "build only" for r in recs):
        return "\n".join(lines + ["", "(--build-only: graph build with feature kNN only; no training or inference)"])
    lines += ["", "| spots | edges | build s (exp) | train epoch s (exp) | mode | infer s (exp) | tiling s | "
              "peak RSS MiB | RSS +train MiB | tiles | max tile nodes |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(recs):
        lines.append(f"| {r['n']:,} | {r['edges']:,} | {r['build_s']:.2f} ({f(ex['build_s'][i])}) | "
                     f"{r['train_epoch_s']:.2f} ({f(ex['train_epoch_s'][i])}) | {r['mode']} | "
                     f"{r['infer_s']:.2f} ({f(ex['infer_s'][i])}) | {f(r.get('tiling_s'))} | {r['rss_peak_mb']:.0f} | "
                     f"{r['rss_train_delta_mb']:.0f} | {r.get('n_tiles', '—')} | {r.get('max_tile_nodes', '—')} |")
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
    ap.add_argument("--build-only", action="store_true", help="graph + feature kNN (+ recall) only")
    ap.add_argument("--max-full", type=int, default=50_000, help="full-graph training/inference up to this many spots")
    ap.add_argument("--train-cap", type=int, default=None,
                    help="time training on at most this many spots and extrapolate (default: the whole epoch)")
    ap.add_argument("--tile-size", type=float, default=40.0)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads, also used by the graph "
                    "build's threaded parts (default 2: the 2-core target)")
    ap.add_argument("--n-check", type=int, default=2000, help="spots whose feature neighbours are checked against exact search")
    ap.add_argument("--json", help="also write the records here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    if a.one:
        print("RESULT " + json.dumps(one_size(a.one, a.d_gene, a.max_full, a.train_cap, a.tile_size, feature_knn=a.feature_knn,
                                                   build_only=a.build_only, n_check=a.n_check)))
        return
    recs = []
    for n in a.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--d-gene", str(a.d_gene), "--feature-knn", str(a.feature_knn)] + (["--build-only"] if a.build_only else []) + ["--max-full", str(a.max_full),
               "--tile-size", str(a.tile_size), "--n-check", str(a.n_check)] + (["--train-cap", str(a.train_cap)] if a.train_cap else []) + (["--threads", str(a.threads)] if a.threads else [])
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
