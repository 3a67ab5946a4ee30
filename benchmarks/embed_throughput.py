"""Embedding throughput: patches/s of the image encoders, spots/s of the gene encoders.

    PYTHONPATH=. .venv/bin/python benchmarks/embed_throughput.py [--uni2h-batches 1] [--skip-uni2h] [--spots 2000] [--sentence-spots 300]

handcrafted: ``patch_features`` on 224 px patches (features only), and the whole encoder on a
synthetic slice (crop + resize + features, the default two scales at 112 px working size).
UNI2-h: the full architecture with random weights, batch 32 (CUDA when available), a few batches.
Gene encoders: fit on two synthetic slices, transform a third; spots/s of the transform.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                    "RTX 4090": 165.0}
VIT_H14_TFLOP_PER_PATCH = 0.36     # forward pass of one 224-px patch through ViT-H/14 (~0.36 TFLOP)


def _rate(fn, n_items: int, repeat: int = 1) -> float:
    fn()                                            # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return n_items * repeat / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uni2h-batches", type=int, default=1)
    ap.add_argument("--skip-uni2h", action="store_true")
    ap.add_argument("--spots", type=int, default=2000)
    ap.add_argument("--sentence-spots", type=int, default=300)
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: looked up by name)")
    ap.add_argument("--uni2h-batch", type=int, default=32)
    ap.add_argument("--compile", action="store_true", help="torch.compile the ViT (GPU)")
    args = ap.parse_args()
    import torch
    from spagraph.embed.gene import fit_gene_encoder
    from spagraph.embed.handcrafted import patch_features
    from spagraph.embed.image import get_image_encoder
    from spagraph.io.synthetic import make_synthetic_slice
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {dev}")
    rng = np.random.default_rng(0)
    b = rng.integers(0, 256, (256, 224, 224, 3), dtype=np.uint8)
    print(f"handcrafted patch_features @224px, batch 256: {_rate(lambda: patch_features(b), 256, 3):8.1f} patches/s")
    a = make_synthetic_slice(n_spots=1000, seed=0)
    enc = get_image_encoder("handcrafted", {"patch_size": 224, "patch_scales": [2.8]})
    print(f"handcrafted slice encode @224px, 1 scale (crop+resize+features): "
          f"{_rate(lambda: enc.encode(a), a.n_obs):8.1f} patches/s")
    enc = get_image_encoder("handcrafted", {})
    print(f"handcrafted slice encode, default (2 scales @112px):            "
          f"{_rate(lambda: enc.encode(a), a.n_obs):8.1f} spots/s")
    if not args.skip_uni2h:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            u = get_image_encoder("uni2h", {"device": dev, "compile": args.compile})
            build = time.perf_counter() - t
        x = rng.integers(0, 256, (args.uni2h_batch, 224, 224, 3), dtype=np.uint8)
        u.encode_patches(x)                          # warm-up (and compilation) at the timed batch size
        t = time.perf_counter()
        for _ in range(args.uni2h_batches):
            y = u.encode_patches(x)
        if dev == "cuda":
            torch.cuda.synchronize()
        r = args.uni2h_batch * args.uni2h_batches / (time.perf_counter() - t)
        print(f"uni2h (random weights) build {build:.1f} s; batch 32 on {dev} ({u.precision}, channels_last "
              f"{u.channels_last}): {r:8.2f} patches/s  (out {y.shape})")
        if dev == "cuda":
            name = torch.cuda.get_device_name()
            peak = args.peak_tflops or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
            got = r * VIT_H14_TFLOP_PER_PATCH
            print(f"  {got:.1f} TFLOP/s at {VIT_H14_TFLOP_PER_PATCH} TFLOP per 224-px ViT-H/14 patch"
                  + (f" = {got / peak:.1%} of {name}'s dense bf16 peak ({peak} TFLOP/s)" if peak else
                     f" (unknown peak for {name}: pass --peak-tflops)"))
    tr = [make_synthetic_slice(n_spots=args.spots, seed=s, n_genes=2000) for s in (1, 2)]
    te = make_synthetic_slice(n_spots=args.spots, seed=3, n_genes=2000)
    te_small = te[: min(args.spots, args.sentence_spots)].copy()
    for name, st in (("hvg", {"n_hvg": 2000}), ("pca", {"n_hvg": 2000, "n_pcs": 50}), ("sentence", {"top_n": 50})):
        try:
            t = time.perf_counter()
            g = fit_gene_encoder(name, tr, st)
            fit_s = time.perf_counter() - t
            x = te_small if name == "sentence" else te       # the text model is ~1000x slower: fewer spots
            print(f"gene {name:8s} fit on {2 * args.spots} spots {fit_s:6.2f} s; transform ({x.n_obs} spots) "
                  f"{_rate(lambda: g.transform(x), x.n_obs):9.1f} spots/s", flush=True)
        except ImportError as e:
            print(f"gene {name}: skipped ({e})")


if __name__ == "__main__":
    main()
