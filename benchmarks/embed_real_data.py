"""Every embedding encoder on real her2st slices (not part of the default tests).

    PYTHONPATH=. .venv/bin/python benchmarks/embed_real_data.py [--data ../shared/data] [--deep-spots 2]

* A1 (annotated; the 2000-px PNG downscale as ``hires``, scale 0.28761): gene encoders
  ``hvg``, ``pca``, ``sentence`` (fitted on the slice itself), ``omiclip`` without weights (must be a
  clear error), image encoder ``handcrafted`` on every spot, ``timm:resnet18`` and ``uni2h``
  (random weights: the architecture and patch path on a real image, not meaningful features) on
  the first ``--deep-spots`` spots. A1's top-right overview inset (x >= 1490, y <= 540 PNG px) is
  not tissue: the script checks that no spot lies there and how far the largest crop reaches.
* B4 of ``her2st_unlabelled``: the same, with crops from the full-resolution JPG named in
  ``uns["spagraph_slice"]["image_path"]``.
* The 7 annotated sections without an image: embedded together, each must come back with
  ``has_image False``, no ``img_emb`` and a gene embedding.

The cancer signal of the image features (spatially blocked CV on A1) is
``benchmarks/image_signal_a1.py``.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

ANNOTATED = ["A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1"]
A1_INSET = (1490, 540)        # x >= 1490 and y <= 540 in A1's PNG px: overview inset, not tissue


def check_a1_inset(adata) -> None:
    from spagraph.embed.patches import DEFAULT_PATCH_SCALE, load_slice_image, patch_side
    im = load_slice_image(adata)
    pos = np.asarray(adata.obsm["spatial"]) * im.scale
    inside = (pos[:, 0] >= A1_INSET[0]) & (pos[:, 1] <= A1_INSET[1])
    half = patch_side(adata, im, DEFAULT_PATCH_SCALE) / 2
    reach = (pos[:, 0] + half >= A1_INSET[0]) & (pos[:, 1] - half <= A1_INSET[1])
    print(f"A1 inset: spots inside {int(inside.sum())}; crops (side {2 * half:.0f} px at patch_scale "
          f"{DEFAULT_PATCH_SCALE}) reaching into it: {int(reach.sum())}")


def run_encoders(name: str, adata, deep_spots: int) -> None:
    from spagraph.embed import embed_slices
    from spagraph.embed.patches import load_slice_image
    t = time.perf_counter()
    im = load_slice_image(adata)
    print(f"\n== {name}: {adata.n_obs} spots, {adata.n_vars} genes; image from {im.source if im else None} "
          f"{im.pixels.shape if im else ''}, scale {im.scale if im else ''} (loaded in {time.perf_counter() - t:.1f} s)")
    del im
    for gene in ("hvg", "pca", "sentence"):
        t = time.perf_counter()
        rep = embed_slices({name: adata}, fit_on=[name], image_encoder=None, gene_encoder=gene,
                           settings={"n_hvg": 2000, "n_pcs": 50}, progress=False)
        e = adata.obsm["gene_emb"]
        print(f"  gene {gene:9s} -> {e.shape} finite={bool(np.isfinite(e).all())}, genes used {rep['genes_used']} "
              f"({time.perf_counter() - t:.1f} s)")
    try:
        embed_slices({name: adata}, fit_on=[name], image_encoder=None, gene_encoder="omiclip", progress=False)
        print("  gene omiclip    -> ran")
    except (ValueError, ImportError, FileNotFoundError) as err:
        print(f"  gene omiclip    -> clear error: {type(err).__name__}: {str(err)[:100]}...")
    t = time.perf_counter()
    rep = embed_slices({name: adata}, fit_on=[name], image_encoder="handcrafted", gene_encoder=None, progress=False)
    dt = time.perf_counter() - t
    e = adata.obsm["img_emb"]
    print(f"  image handcrafted   -> {e.shape} finite={bool(np.isfinite(e).all())} has_image={rep['has_image'][name]} "
          f"({dt:.1f} s, {adata.n_obs / dt:.0f} spots/s incl. image load, 2 scales)")
    if deep_spots <= 0:
        return
    sub = adata[:deep_spots].copy()
    for enc in ("timm:resnet18", "uni2h"):
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # random weights: warned about, expected here
            embed_slices({name: sub}, fit_on=[name], image_encoder=enc, gene_encoder=None,
                         settings={"batch_size": 8}, progress=False)
        e = sub.obsm["img_emb"]
        print(f"  image {enc:13s} (random weights, first {sub.n_obs} spots) -> {e.shape} "
              f"finite={bool(np.isfinite(e).all())} ({time.perf_counter() - t:.1f} s incl. build)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--deep-spots", type=int, default=2, help="spots for timm:resnet18 / uni2h (0: skip)")
    args = ap.parse_args()
    from spagraph.embed import embed_slices
    from spagraph.io import read_her2st
    data = Path(args.data)
    if not (data / "her2st").is_dir():
        raise SystemExit(f"her2st data not found under {data}")
    a1 = read_her2st(data / "her2st", "A1")
    sf = a1.uns["spatial"]["A1"]["scalefactors"]
    print(f"A1: hires {a1.uns['spatial']['A1']['images']['hires'].shape}, tissue_hires_scalef "
          f"{sf['tissue_hires_scalef']:.5f}, spot_diameter_fullres {sf['spot_diameter_fullres']:.1f}, "
          f"image_path {a1.uns['spagraph_slice'].get('image_path')}")
    check_a1_inset(a1)
    run_encoders("A1", a1, args.deep_spots)

    unl = data / "her2st_unlabelled"
    if (unl / "counts" / "B4.tsv.gz").exists():
        b4 = read_her2st(unl, "B4")
        print(f"\nB4: image_path {b4.uns['spagraph_slice'].get('image_path')}, hires (for plots) "
              f"{b4.uns['spatial']['B4']['images']['hires'].shape}")
        run_encoders("B4", b4, args.deep_spots)
    else:
        print(f"\nB4: not found under {unl}, skipped")

    print("\n== annotated sections without an image (embedded together, fitted on all 7)")
    others = {s: read_her2st(data / "her2st", s) for s in ANNOTATED if s != "A1"}
    rep = embed_slices(others, fit_on=list(others), image_encoder="handcrafted", gene_encoder="pca", progress=False)
    for s, a in others.items():
        print(f"  {s}: has_image={rep['has_image'][s]}, img_emb present={'img_emb' in a.obsm}, "
              f"gene_emb {a.obsm['gene_emb'].shape}")
    print(f"  genes shared by the 7: {rep['genes_shared']} of {rep['genes_union']} (union)")


if __name__ == "__main__":
    main()
