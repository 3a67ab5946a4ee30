"""Synthetic slices that look like real ones: spot grid, irregular tumour regions, gene
programs with overdispersed counts, and an H&E-like RGB image whose colour and texture
differ by region. Used by the demo and the tests (no download)."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import ndimage

TUMOUR_GENES = ["ERBB2", "GRB7", "KRT19", "KRT8", "KRT18", "EPCAM", "CD24", "MUC1", "MGP", "SCGB2A2", "AGR2",
                "TFF1", "TFF3", "ESR1", "FOXA1", "GATA3", "XBP1", "SPDEF", "CLDN4", "ELF3", "KRT7", "MKI67",
                "TOP2A", "CCND1", "MYC", "S100A14", "PRSS8", "CDH1", "SPINT2", "ANKRD30A"]
STROMA_GENES = ["COL1A1", "COL1A2", "COL3A1", "COL6A1", "COL6A2", "DCN", "LUM", "SPARC", "FN1", "POSTN", "FBLN1",
                "PDGFRB", "ACTA2", "TAGLN", "MYL9", "VIM", "FABP4", "ADIPOQ", "PLIN1", "ADH1B", "CFD", "SFRP4",
                "MMP2", "THY1", "BGN"]
IMMUNE_GENES = ["PTPRC", "CD3E", "CD3D", "CD2", "CD19", "MS4A1", "CD79A", "IGKC", "IGHG1", "IGHG3", "IGHA1",
                "IGLC2", "JCHAIN", "CD74", "HLA-DRA", "HLA-DRB1", "LYZ", "CD68", "CXCL13", "CCL19"]
HOUSEKEEPING = ["ACTB", "GAPDH", "B2M", "EEF1A1", "TPT1", "MT-CO1", "MT-CO2", "MT-ND1", "MT-ATP6", "RPL13",
                "RPS18", "RPL41", "RPS27", "RPLP1", "MALAT1"]


def _grid(n_spots: int, grid: str, pitch: float):
    side = int(np.ceil(np.sqrt(n_spots * 1.15)))
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    if grid == "hex":
        x = (cols + 0.5 * (rows % 2)) * pitch
        y = rows * pitch * np.sqrt(3) / 2
    else:
        x, y = cols * pitch, rows * pitch
    pos = np.c_[x, y]
    # an elliptical tissue outline: keep the n_spots spots closest to the centre
    c = pos.mean(0)
    keep = np.argsort(np.linalg.norm((pos - c) / [1.0, 0.85], axis=1), kind="stable")[:n_spots]
    keep.sort()
    return pos[keep] + pitch, rows[keep], cols[keep]


def _smooth_field(rng, shape, sigma):
    f = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-9)


def _regions(rng, pos: np.ndarray, extent: np.ndarray, pitch: float, n_tumours: int):
    """Tumour score field at arbitrary points: blobs with noisy (irregular) radii."""
    centres = rng.uniform(0.2, 0.8, size=(n_tumours, 2)) * extent
    radii = rng.uniform(0.14, 0.26, size=n_tumours) * extent.min() * (1.3 if n_tumours == 1 else 1.0)
    grid_n = 48
    noise = _smooth_field(rng, (grid_n, grid_n), 3.0)

    def field(pts):
        g = np.clip((pts / extent * (grid_n - 1)).astype(int), 0, grid_n - 1)
        nz = noise[g[:, 1], g[:, 0]]
        d = np.min([np.linalg.norm(pts - c, axis=1) / r for c, r in zip(centres, radii)], axis=0)
        return 1.0 - d + 0.35 * nz          # > 0 inside a tumour
    return field


def make_synthetic_slice(n_spots: int = 600, grid: str = "hex", seed: int = 0, n_genes: int = 300,
                         with_image: bool = True, batch_effect: dict | None = None, library_id: str | None = None,
                         n_tumours: int | None = None, undetermined_frac: float = 0.03) -> ad.AnnData:
    """One synthetic slice in spagraph's AnnData convention.

    Parameters
    ----------
    n_spots : number of spots. grid : "hex" (Visium-like) or "square" (legacy ST-like).
    batch_effect : e.g. ``{"gene_dropout": 0.3, "library_scale": 0.5, "stain_shift": 0.15}``:
        fraction of genes that read zero (platform panel), library-size multiplier,
        strength of an image colour shift.
    """
    if grid not in ("hex", "square"):
        raise ValueError(f"grid must be 'hex' or 'square', got {grid!r}")
    if n_spots < 2:
        raise ValueError(f"n_spots must be >= 2, got {n_spots}")
    rng = np.random.default_rng(seed)
    be = {"gene_dropout": 0.0, "library_scale": 1.0, "stain_shift": 0.0, **(batch_effect or {})}
    pitch = 100.0  # full-resolution pixels (a 100 um Visium-like pitch at 1 um/px)
    pos, arr_r, arr_c = _grid(n_spots, grid, pitch)
    extent = pos.max(0) + pitch
    field = _regions(rng, pos, extent, pitch, n_tumours or int(rng.integers(1, 4)))
    f = field(pos)
    tumour = f > 0
    # immune infiltrate: along the tumour margin and in a few random patches
    edge = np.abs(f) < 0.25
    patch = _smooth_field(rng, (32, 32), 2.5)
    g = np.clip((pos / extent * 31).astype(int), 0, 31)
    immune = (~tumour) & ((edge & (rng.random(n_spots) < 0.6)) | (patch[g[:, 1], g[:, 0]] > 1.6))
    adipose = (~tumour) & (~immune) & (patch[g[:, 0], g[:, 1]] < -1.0)

    # --- genes: program activities with mixing at the margins and per-spot noise
    t_act = np.clip(1 / (1 + np.exp(-f / 0.12)) + rng.normal(0, 0.25, n_spots), 0, 1.2)
    i_act = np.clip(immune * 0.9 + rng.normal(0, 0.25, n_spots), 0, 1.2)
    s_act = np.clip(1 - t_act + rng.normal(0, 0.2, n_spots), 0, 1.2)
    n_fill = max(0, n_genes - len(TUMOUR_GENES) - len(STROMA_GENES) - len(IMMUNE_GENES) - len(HOUSEKEEPING))
    genes = TUMOUR_GENES + STROMA_GENES + IMMUNE_GENES + HOUSEKEEPING + [f"GENE{i:04d}" for i in range(n_fill)]
    G = len(genes)
    base = rng.lognormal(-1.0, 1.0, G)
    base[len(TUMOUR_GENES) + len(STROMA_GENES) + len(IMMUNE_GENES):][:len(HOUSEKEEPING)] *= 20
    prog = np.zeros((3, G))
    a, b, c = len(TUMOUR_GENES), len(STROMA_GENES), len(IMMUNE_GENES)
    prog[0, :a] = rng.uniform(0.8, 2.0, a)
    prog[1, a:a + b] = rng.uniform(0.8, 2.0, b)
    prog[2, a + b:a + b + c] = rng.uniform(0.8, 2.5, c)
    # filler genes weakly tied to programs, so that expression PCs are not trivially clean
    prog[:, a + b + c + len(HOUSEKEEPING):] = rng.normal(0, 0.15, (3, n_fill))
    act = np.c_[t_act, s_act, i_act]
    logmu = np.log(base)[None, :] + act @ prog
    mu = np.exp(logmu)
    mu /= mu.sum(1, keepdims=True)
    lib = rng.lognormal(np.log(3000), 0.5, n_spots) * be["library_scale"]
    disp = 2.0  # negative binomial: Gamma(shape=disp) mixing of the Poisson mean
    lam = rng.gamma(disp, (lib[:, None] * mu) / disp)
    X = rng.poisson(lam).astype(np.float32)
    if be["gene_dropout"] > 0:
        # own stream: the same seed gives the same tissue and labels with or without a batch effect
        drop = np.random.default_rng([seed, 7919]).random(G) < be["gene_dropout"]
        X[:, drop] = 0
    # --- labels
    # labels and image draw from their own streams (counts use a variable number of draws), so a
    # batch effect changes the measurement, never the tissue
    lrng = np.random.default_rng([seed, 104729])
    ann = np.where(tumour, np.where(lrng.random(n_spots) < 0.15, "cancer in situ", "invasive cancer"),
                   np.where(immune, "immune infiltrate", np.where(adipose, "adipose tissue", "connective tissue")))
    ann = ann.astype(object)
    ann[lrng.random(n_spots) < undetermined_frac] = "undetermined"
    lib_id = library_id or f"synthetic_{seed}"
    obs = pd.DataFrame(index=[f"spot{r}x{c}" for r, c in zip(arr_r, arr_c)])
    obs["array_row"], obs["array_col"] = arr_r, arr_c
    from spagraph.io.labels import LabelSchema
    obs["annotation"] = pd.Categorical(ann)
    cls, canc = LabelSchema().apply(obs["annotation"].astype(object), lib_id)
    obs["label_class"] = cls
    obs["cancer"] = canc.array
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=genes))
    adata.obsm["spatial"] = pos
    scalef = 0.35
    images = {}
    if with_image:
        images["hires"] = _render_image(np.random.default_rng([seed, 15485863]), field, extent, scalef, pos, immune, adipose, be["stain_shift"],
                                        patch=patch, pitch=pitch)
    adata.uns["spatial"] = {lib_id: {"images": images,
                                     "scalefactors": {"tissue_hires_scalef": scalef, "tissue_lowres_scalef": scalef,
                                                      "spot_diameter_fullres": 0.55 * pitch}}}
    adata.uns["spagraph_slice"] = {"library_id": lib_id, "platform": "synthetic", "source": f"synthetic seed={seed}",
                                   "has_image": with_image}
    return adata


def _render_image(rng, field, extent, scalef, pos, immune, adipose, stain_shift, patch=None, pitch: float = 100.0):
    """H&E-like RGB (uint8, H x W x 3) of the slice at ``scalef`` x full resolution.

    Eosin-pink stroma with oriented fibres; hematoxylin nuclei whose density, size and darkness
    differ by region (tumour: crowded, large, dark; immune: small dense dots; stroma: sparse,
    elongated); pale adipocytes; white glass outside the tissue. Region maps are evaluated on
    a 4-px grid and upsampled; nuclei are drawn as seeds blurred and thresholded, so edges are
    crisp and sizes vary.
    """
    from scipy.spatial import cKDTree
    H, W = int(extent[1] * scalef) + 1, int(extent[0] * scalef) + 1
    step = 4
    cy, cx = np.arange(0, H, step), np.arange(0, W, step)
    gx, gy = np.meshgrid(cx, cy)
    pts = np.c_[gx.ravel(), gy.ravel()] / scalef
    shape = gx.shape
    tum = (field(pts) > 0).reshape(shape)
    d, nn = cKDTree(pos).query(pts)
    tissue = (d < 0.8 * pitch).reshape(shape)
    imm = immune[nn].reshape(shape) & ~tum
    if patch is not None:     # adipose from the same smooth field as the spot labels: smooth outlines
        gi = pts / extent * (patch.shape[0] - 1)
        adi = (ndimage.map_coordinates(patch, [gi[:, 0], gi[:, 1]], order=1, mode="nearest") < -1.0).reshape(shape)
        adi &= ~tum & ~imm
    else:
        adi = adipose[nn].reshape(shape) & ~tum

    def up(m):
        return np.repeat(np.repeat(m, step, 0), step, 1)[:H, :W]
    tum, imm, adi, tissue = up(tum), up(imm), up(adi), up(tissue)
    img = np.empty((H, W, 3), np.float32)
    img[:] = (234, 170, 200)                                    # eosin pink
    fib = ndimage.gaussian_filter(rng.standard_normal((H, W), dtype=np.float32), (0.8, 4.0))
    streak = (fib > 0.12) & ~tum & ~adi
    img[streak] = (220, 128, 170)                               # collagen fibres
    img[tum] = (226, 160, 196)                                  # denser cytoplasm in tumour nests
    img[adi] = (247, 240, 243)                                  # adipocytes: almost white

    def nuclei(mask, density, sigma, colour, elong=1.0):
        n = rng.poisson(density * H * W)
        yy, xx = rng.integers(0, H, n), rng.integers(0, W, n)
        keep = mask[yy, xx]
        canvas = np.zeros((H, W), np.float32)
        np.add.at(canvas, (yy[keep], xx[keep]), rng.uniform(0.7, 1.6, int(keep.sum())).astype(np.float32))
        blob = ndimage.gaussian_filter(canvas, (sigma, sigma * elong))
        peak = 1.0 / (2 * np.pi * sigma * sigma * elong)
        a = np.clip((blob / peak - 0.3) * 3.0, 0, 1)[..., None]
        img[:] = img * (1 - a) + np.asarray(colour, np.float32) * a

    nuclei(tum, 0.010, 1.9, (78, 36, 120))                      # large, crowded, dark tumour nuclei
    nuclei(imm, 0.030, 0.9, (55, 28, 105))                      # small dense lymphocytes
    nuclei(~tum & ~imm & ~adi, 0.0025, 0.8, (105, 62, 145), elong=2.5)   # sparse spindle stromal nuclei
    img[~tissue] = (243, 241, 244)                              # glass outside the tissue
    img += rng.normal(0, 5, (H, W, 1)).astype(np.float32)       # illumination / grain
    if stain_shift:
        img = img * (1 - stain_shift) + np.array([120, 60, 160], np.float32) * stain_shift
    return np.clip(img, 0, 255).astype(np.uint8)


def make_synthetic_dataset(n_slices: int = 4, seed: int = 0, prefix: str = "syn", **kw) -> dict[str, ad.AnnData]:
    """``n_slices`` synthetic slices named ``<prefix><i>`` (each its own layout and regions)."""
    return {f"{prefix}{i}": make_synthetic_slice(seed=seed * 1000 + i, library_id=f"{prefix}{i}", **kw)
            for i in range(n_slices)}
