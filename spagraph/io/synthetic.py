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
        drop = rng.random(G) < be["gene_dropout"]
        X[:, drop] = 0
    # --- labels
    ann = np.where(tumour, np.where(rng.random(n_spots) < 0.15, "cancer in situ", "invasive cancer"),
                   np.where(immune, "immune infiltrate", np.where(adipose, "adipose tissue", "connective tissue")))
    ann = ann.astype(object)
    ann[rng.random(n_spots) < undetermined_frac] = "undetermined"
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
        images["hires"] = _render_image(rng, field, extent, scalef, pos, immune, adipose, be["stain_shift"])
    adata.uns["spatial"] = {lib_id: {"images": images,
                                     "scalefactors": {"tissue_hires_scalef": scalef, "tissue_lowres_scalef": scalef,
                                                      "spot_diameter_fullres": 0.55 * pitch}}}
    adata.uns["spagraph_slice"] = {"library_id": lib_id, "platform": "synthetic", "source": f"synthetic seed={seed}",
                                   "has_image": with_image}
    return adata


def _render_image(rng, field, extent, scalef, pos, immune, adipose, stain_shift):
    """H&E-like RGB: eosin background, hematoxylin nuclei whose density/size differ by region."""
    H, W = int(extent[1] * scalef) + 1, int(extent[0] * scalef) + 1
    yy, xx = np.mgrid[0:H, 0:W]
    # region maps at a coarse resolution then upsampled
    step = 4
    pts = np.c_[xx[::step, ::step].ravel(), yy[::step, ::step].ravel()] / scalef
    tum = (field(pts) > 0).reshape(xx[::step, ::step].shape)
    from scipy.spatial import cKDTree
    d, nn = cKDTree(pos).query(pts)
    imm = immune[nn].reshape(tum.shape) & ~tum
    adi = adipose[nn].reshape(tum.shape) & ~tum
    inside = (d < 0.8 * np.min(np.ptp(pos, 0)) / 2 + 1e9).reshape(tum.shape)
    up = lambda m: np.kron(m, np.ones((step, step), bool))[:H, :W]
    tum, imm, adi = up(tum), up(imm), up(adi)
    del inside
    img = np.empty((H, W, 3), np.float32)
    img[:] = (236, 178, 205)  # eosin pink
    # stroma fibres: oriented streaks
    fib = ndimage.gaussian_filter(rng.normal(size=(H, W)), (0.8, 5.0))
    fib = (fib > 0.15) & ~tum & ~adi
    img[fib] = (222, 135, 175)
    # adipose: pale, almost white
    img[adi] = (246, 236, 240)

    def nuclei(mask, density, sigma, colour):
        seeds = (rng.random((H, W)) < density) & mask
        blob = ndimage.gaussian_filter(seeds.astype(np.float32), sigma)
        blob /= blob.max() + 1e-9
        a = np.clip(blob * 3.0, 0, 1)[..., None]
        img[:] = img * (1 - a) + np.array(colour, np.float32) * a

    nuclei(tum, 0.012, 2.2, (88, 44, 128))         # big, crowded, dark tumour nuclei
    nuclei(imm, 0.03, 1.0, (60, 30, 110))          # small dense lymphocytes
    nuclei(~tum & ~imm & ~adi, 0.003, 1.2, (110, 70, 150))  # sparse stromal nuclei
    img += rng.normal(0, 6, img.shape)
    if stain_shift:
        img = img * (1 - stain_shift) + np.array([120, 60, 160], np.float32) * stain_shift
    return np.clip(img, 0, 255).astype(np.uint8)


def make_synthetic_dataset(n_slices: int = 4, seed: int = 0, prefix: str = "syn", **kw) -> dict[str, ad.AnnData]:
    """``n_slices`` synthetic slices named ``<prefix><i>`` (each its own layout and regions)."""
    return {f"{prefix}{i}": make_synthetic_slice(seed=seed * 1000 + i, library_id=f"{prefix}{i}", **kw)
            for i in range(n_slices)}
