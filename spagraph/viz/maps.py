"""Spatial maps of labels, scores and predictions (matplotlib, colour-blind-safe)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Okabe-Ito palette
LABEL_COLOURS = {1: "#D55E00", 0: "#56B4E9", -1: "#BBBBBB"}


def _ax_spots(ax, pos, colours, size, title, image=None, extent=None):
    if image is not None:
        ax.imshow(image, extent=extent)
    ax.scatter(pos[:, 0], pos[:, 1], c=colours, s=size, linewidths=0)
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")
    ax.invert_yaxis() if image is None else None
    ax.set_xticks([]); ax.set_yticks([])


def plot_slice_map(pos: np.ndarray, label: np.ndarray, score: np.ndarray, pred: np.ndarray, path: str | Path,
                   title: str = "", image: np.ndarray | None = None, image_scale: float = 1.0) -> Path:
    """Three panels: pathologist label, cancer score, thresholded prediction.

    pos : (n, 2) full-resolution pixel coordinates. label : (n,) 1/0/NaN. score : (n,) in [0, 1].
    image : optional RGB image whose pixel = full-res pixel × ``image_scale`` (drawn underneath).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from spagraph.utils import atomic_path

    pos = np.asarray(pos, float) * (image_scale if image is not None else 1.0)
    span = np.ptp(pos, axis=0).max() if len(pos) > 1 else 1.0
    size = max(2.0, 9000.0 / max(len(pos), 1)) * (1.0 if len(pos) < 3000 else 0.5)
    lab = np.where(np.isnan(label), -1, label).astype(int)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), constrained_layout=True)
    _ax_spots(axes[0], pos, [LABEL_COLOURS[v] for v in lab], size, "pathologist label", image)
    from matplotlib.lines import Line2D
    axes[0].legend(handles=[Line2D([], [], marker="o", ls="", color=c, label=l) for l, c in
                            (("cancer", LABEL_COLOURS[1]), ("non-cancer", LABEL_COLOURS[0]), ("undetermined", LABEL_COLOURS[-1]))],
                   loc="lower left", fontsize=7, frameon=True)
    if image is not None:
        axes[1].imshow(image)
    sc = axes[1].scatter(pos[:, 0], pos[:, 1], c=score, cmap="viridis", vmin=0, vmax=1, s=size, linewidths=0)
    axes[1].set_title("cancer score", fontsize=10); axes[1].set_aspect("equal"); axes[1].set_xticks([]); axes[1].set_yticks([])
    if image is None:
        axes[1].invert_yaxis()
    fig.colorbar(sc, ax=axes[1], shrink=0.8)
    _ax_spots(axes[2], pos, [LABEL_COLOURS[int(v)] for v in pred], size, "prediction", image)
    fig.suptitle(title)
    del span
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
