"""Spatial panels of one slice: label, score heat-map, prediction, regions, risk.

Spots are drawn as discs in data units (their size follows the spot pitch, whatever the figure
size), over the slice's H&E image when it has one, else on the bare spot layout. Colours are
Okabe-Ito for categories and viridis / cividis for continuous values (colour-blind safe).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from spagraph.graph.neighbours import spot_pitch

# Okabe-Ito
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
LABEL_COLOURS = {"cancer": "#D55E00", "non-cancer": "#56B4E9", "undetermined": "#BBBBBB"}
# high-risk is Okabe-Ito bluish green: nothing on an H&E slide is green, so it cannot be taken for
# eosin pink (the earlier reddish purple #CC79A7 could)
REGION_COLOURS = {"tumour": "#D55E00", "boundary": "#F0E442", "healthy": "#0072B2", "high_risk": "#009E73",
                  "none": "#BBBBBB"}
# spot centre-to-centre distance in microns per platform (legacy ST: 100 um spots at 200 um;
# Visium: 55 um spots at 100 um): turns the measured pitch in pixels into a micron scale bar
PITCH_UM = {"legacy_st": 200.0, "visium": 100.0}
SPOT_ALPHA = 0.6


def slice_image(adata) -> tuple[np.ndarray | None, float]:
    """The slice's H&E (hires, else lowres) and the factor full-resolution pixel -> image pixel."""
    sp = adata.uns.get("spatial", {}) if hasattr(adata, "uns") else {}
    if not isinstance(sp, dict):
        return None, 1.0
    for lib in sp.values():
        if not isinstance(lib, dict):
            continue
        imgs, sf = lib.get("images", {}) or {}, lib.get("scalefactors", {}) or {}
        for key, fkey in (("hires", "tissue_hires_scalef"), ("lowres", "tissue_lowres_scalef")):
            if key in imgs and imgs[key] is not None and np.size(imgs[key]) > 0:
                return np.asarray(imgs[key]), float(sf.get(fkey, 1.0))
    return None, 1.0


def _discs(ax, pos, colours, diameter, edge=None, lw=0.0, zorder=2):
    from matplotlib.collections import EllipseCollection
    n = len(pos)
    coll = EllipseCollection(np.full(n, diameter), np.full(n, diameter), np.zeros(n), units="xy",
                             offsets=pos, offset_transform=ax.transData, facecolors=colours,
                             edgecolors=edge if edge is not None else "none", linewidths=lw, zorder=zorder)
    ax.add_collection(coll)
    return coll


class SpatialCanvas:
    """Shared geometry of a slice's panels: positions in image pixels (or raw units), pitch, crop."""

    def __init__(self, pos: np.ndarray, image: np.ndarray | None = None, image_scale: float = 1.0):
        pos = np.asarray(pos, dtype=float)
        if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
            raise ValueError(f"spot positions must have shape (n, 2) with n >= 1, got {pos.shape}")
        self.image = image
        self.pos = pos * (image_scale if image is not None else 1.0)
        self.pitch = spot_pitch(self.pos) if len(self.pos) > 1 else 1.0
        lo, hi = self.pos.min(0) - 1.5 * self.pitch, self.pos.max(0) + 1.5 * self.pitch
        if image is not None:
            h, w = image.shape[:2]
            lo, hi = np.maximum(lo, 0), np.minimum(hi, [w, h])
        self.lo, self.hi = lo, hi
        self.diameter = 0.85 * self.pitch

    def setup(self, ax, title: str):
        if self.image is not None:
            ax.imshow(self.image, zorder=0)
        ax.set_xlim(self.lo[0], self.hi[0])
        ax.set_ylim(self.hi[1], self.lo[1])          # image convention: y grows downwards
        ax.set_aspect("equal")
        ax.set_xticks([]); ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        ax.set_title(title, fontsize=10)

    @property
    def alpha(self) -> float:
        return SPOT_ALPHA if self.image is not None else 1.0

    def scale_bar(self, ax, pitch_um: float | None) -> None:
        """A micron scale bar (lower right, outside the spots' colours) when the pitch in microns is known."""
        if not pitch_um or self.pitch <= 0:
            return
        from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
        um_per_unit = pitch_um / self.pitch
        width_um = float(self.hi[0] - self.lo[0]) * um_per_unit
        nice = [50, 100, 200, 250, 500, 1000, 2000, 5000, 10000]
        length = max([n for n in nice if n <= width_um / 4] or [nice[0]])
        label = f"{length / 1000:g} mm" if length >= 1000 else f"{length} µm"
        bar = AnchoredSizeBar(ax.transData, length / um_per_unit, label, "lower right", pad=0.3, borderpad=0.3,
                              sep=3, frameon=True, size_vertical=max(self.pitch * 0.08, 1e-9), color="black",
                              fontproperties={"size": 7})
        bar.patch.set_alpha(0.7)
        ax.add_artist(bar)


def _legend(ax, items, loc="lower left"):
    from matplotlib.lines import Line2D
    ax.legend(handles=[Line2D([], [], marker="o", ls="", markersize=7, markerfacecolor=c, markeredgecolor="#333333",
                              markeredgewidth=0.4, label=l) for l, c in items],
              loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(items), 4), fontsize=7, frameon=False,
              handletextpad=0.2, columnspacing=0.8, borderaxespad=0.2)


def _rgba(hexes, alpha):
    from matplotlib.colors import to_rgba
    return np.array([to_rgba(h, alpha) for h in hexes])


def panel_label(ax, cv: SpatialCanvas, label: np.ndarray, title="pathologist label"):
    lab = np.asarray(label, dtype=float)
    names = np.where(np.isnan(lab), "undetermined", np.where(lab == 1, "cancer", "non-cancer"))
    cv.setup(ax, title)
    _discs(ax, cv.pos, _rgba([LABEL_COLOURS[k] for k in names], cv.alpha), cv.diameter)
    _legend(ax, [(k, v) for k, v in LABEL_COLOURS.items() if (names == k).any()])


def panel_continuous(ax, cv: SpatialCanvas, value: np.ndarray, title: str, cmap="viridis", vmin=0.0, vmax=1.0,
                     mask=None, cbar_label: str = ""):
    """Heat-map of ``value``; spots outside ``mask`` (or NaN) drawn grey."""
    import matplotlib.pyplot as plt
    from matplotlib import cm
    from matplotlib.colors import Normalize
    v = np.asarray(value, dtype=float)
    show = ~np.isnan(v) if mask is None else (np.asarray(mask, bool) & ~np.isnan(v))
    cv.setup(ax, title)
    norm = Normalize(vmin, vmax)
    cmap = plt.get_cmap(cmap)
    col = np.tile(np.array([[0.73, 0.73, 0.73, cv.alpha]]), (len(v), 1))
    col[show] = cmap(norm(v[show]))
    col[show, 3] = cv.alpha
    _discs(ax, cv.pos, col, cv.diameter)
    sm = cm.ScalarMappable(norm=norm, cmap=cmap)
    cb = ax.figure.colorbar(sm, ax=ax, shrink=0.7, pad=0.02)
    cb.ax.tick_params(labelsize=7)
    if cbar_label:
        cb.set_label(cbar_label, fontsize=8)


def uncertainty_range(u) -> tuple[float, float]:
    """Colour range that shows variation: the 2nd to 98th percentile of the finite values (not 0..1
    when the spreads are 0..0.05); a constant map gets a tiny range around its value."""
    u = np.asarray(u, dtype=float)
    f = u[np.isfinite(u)]
    if not len(f):
        return 0.0, 1e-3
    lo, hi = (float(v) for v in np.percentile(f, [2, 98]))
    if hi - lo < 1e-6:
        lo, hi = max(lo - 5e-4, 0.0), lo + 5e-4
    return lo, hi


def panel_pred(ax, cv: SpatialCanvas, pred: np.ndarray, title="prediction"):
    p = np.asarray(pred, dtype=float)
    names = np.where(np.isnan(p), "undetermined", np.where(p == 1, "cancer", "non-cancer"))
    cv.setup(ax, title)
    _discs(ax, cv.pos, _rgba([LABEL_COLOURS[k] for k in names], cv.alpha), cv.diameter)
    _legend(ax, [(k, LABEL_COLOURS[k]) for k in ("cancer", "non-cancer") if (names == k).any()])


def panel_regions(ax, cv: SpatialCanvas, regions, title="regions"):
    import pandas as pd
    r = np.asarray(pd.Series(regions, dtype="object").fillna("none"), dtype=object)
    cv.setup(ax, title)
    _discs(ax, cv.pos, _rgba([REGION_COLOURS.get(k, "#BBBBBB") for k in r], cv.alpha), cv.diameter,
           edge="#333333", lw=0.2)
    _legend(ax, [(k.replace("_", "-"), REGION_COLOURS[k]) for k in REGION_COLOURS if (r == k).any()])


def panel_risk(ax, cv: SpatialCanvas, risk: np.ndarray, high_risk: np.ndarray | None = None,
               title="risk (non-cancer spots)"):
    panel_continuous(ax, cv, risk, title, cmap="cividis", cbar_label="upper bound P + 2·std")
    if high_risk is not None and np.asarray(high_risk, bool).any():
        hr = np.asarray(high_risk, bool)
        _discs(ax, cv.pos[hr], "none", cv.diameter * 1.15, edge=REGION_COLOURS["high_risk"], lw=1.6, zorder=3)
        _legend(ax, [("high-risk", REGION_COLOURS["high_risk"])])


def shrink_png(raw: bytes) -> bytes:
    """A figure PNG re-encoded losslessly and smaller: RGB instead of matplotlib's RGBA (opaque
    figures), a palette when the figure has at most 256 colours (curves; then zlib ``optimize``).
    Never lossy: a palette of an H&E would shift its colours. The original when not smaller."""
    import io
    from PIL import Image
    with Image.open(io.BytesIO(raw)) as im:
        if im.mode == "RGBA" and im.getchannel("A").getextrema()[0] < 255:
            return raw                                 # real transparency: keep as it is
        rgb = im.convert("RGB")
        few = rgb.getcolors(256) is not None
        out = rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE) if few else rgb
        buf = io.BytesIO()
        out.save(buf, format="PNG", optimize=few)      # optimize costs ~4 s on a photo-like map, gains ~1%
    small = buf.getvalue()
    return small if len(small) < len(raw) else raw


def panel_he(ax, cv: SpatialCanvas, title="H&E"):
    """The plain H&E (no spots), same crop as the overlays, so the tissue can be read unobstructed."""
    cv.setup(ax, title)


def plot_slice_panels(pos, path: str | Path | None, *, label=None, score=None, pred=None, regions=None, risk=None,
                      high_risk=None, uncertainty=None, title: str = "", image=None, image_scale: float = 1.0,
                      dpi: int = 110, ncols: int = 3, threshold: float | None = None,
                      threshold_method: str | None = None, platform: str | None = None,
                      pitch_um: float | None = None, he_panel: bool = True):
    """The one map drawing of spagraph (``run``, ``predict``, ``report``, ``spagraph.pl``).

    Panels, each drawn only when its data is given: the plain H&E (when the slice has one and
    ``he_panel``), pathologist label, cancer score, uncertainty, prediction, regions, risk. Spots
    are semi-transparent discs over the H&E; legends sit below the panels; a micron scale bar
    (from ``pitch_um``, else the platform's pitch: legacy ST 200 um, Visium 100 um) is drawn on
    each panel; ``threshold`` and ``threshold_method`` go in the title. Written atomically to
    ``path`` (returned); with ``path`` None the matplotlib figure is returned.
    """
    import matplotlib
    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from spagraph.utils import atomic_path
    cv = SpatialCanvas(pos, image, image_scale)
    pitch_um = pitch_um or PITCH_UM.get(str(platform or ""))
    n = len(cv.pos)
    for name, v in (("label", label), ("score", score), ("pred", pred), ("risk", risk), ("uncertainty", uncertainty)):
        if v is not None and len(v) != n:
            raise ValueError(f"{name} has {len(v)} values for {n} spots")
    panels = [p for p, v in (("label", label), ("score", score), ("uncertainty", uncertainty), ("pred", pred),
                             ("regions", regions), ("risk", risk)) if v is not None]
    if not panels:
        raise ValueError("plot_slice_panels: nothing to draw (give label, score, pred, regions or risk)")
    if he_panel and image is not None:
        panels.insert(0, "he")
        ncols = max(ncols, min(len(panels), 4))
    w, h = cv.hi - cv.lo
    aspect = h / max(w, 1e-9)
    pw = 3.8
    ncol = min(ncols, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(pw * ncol + 0.6, nrow * (pw * min(max(aspect, 0.5), 1.6)) + 0.5),
                             constrained_layout=True, squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_axis_off()
    for ax, p in zip(axes.ravel(), panels):
        if p == "he":
            panel_he(ax, cv)
        elif p == "label":
            panel_label(ax, cv, label)
        elif p == "score":
            panel_continuous(ax, cv, score, "cancer score", cbar_label="P(cancer)")
        elif p == "uncertainty":
            u = np.asarray(uncertainty, float)
            lo, hi = uncertainty_range(u)
            panel_continuous(ax, cv, u, "uncertainty (std)", cmap="magma", vmin=lo, vmax=hi,
                             cbar_label=f"std, {lo:.3g}–{hi:.3g}")
        elif p == "pred":
            panel_pred(ax, cv, pred)
        elif p == "regions":
            panel_regions(ax, cv, regions)
        else:
            panel_risk(ax, cv, risk, high_risk)
        cv.scale_bar(ax, pitch_um)
    if threshold is not None:
        title = (f"{title} — " if title else "") + f"threshold {float(threshold):.3f}" + \
            (f" ({threshold_method})" if threshold_method else "")
    if title:
        fig.suptitle(title, fontsize=11)
    if path is None:
        return fig
    import io
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(shrink_png(buf.getvalue()))
    return path
