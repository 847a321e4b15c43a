"""Figures as PNG files: per-class bars, training curves, qualitative segmentation grids.

Every figure is drawn on an explicit Agg canvas (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), never
through pyplot, so no display is needed and the global matplotlib backend is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.data.labels import IGNORE, PALETTE

# trainId → RGB for every uint8 value: the 19 Cityscapes colours, everything else (255 = ignore) black.
COLOUR_LUT = np.zeros((256, 3), dtype=np.uint8)
COLOUR_LUT[: len(PALETTE)] = PALETTE


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=fig.dpi)
    return path


def colorize(label: np.ndarray) -> np.ndarray:
    """HxW trainIds (255 = ignore) → HxWx3 uint8 RGB with the Cityscapes palette; ignore and unknown ids black."""
    label = np.asarray(label)
    if label.dtype != np.uint8:
        label = np.where((label >= 0) & (label < 256), label, IGNORE).astype(np.uint8)
    return COLOUR_LUT[label]


def per_class_bars(frame: pd.DataFrame, classes: Sequence[str], path: str | Path, title: str = "",
                   rows: Sequence[int | str] | None = None, max_paper: int = 4,
                   figsize: tuple[float, float] | None = None, dpi: int = 100) -> Path:
    """Grouped bars per class from a ``comparison_frame``: ours with std error bars, paper rows beside.

    ``rows`` picks rows by position or method name; by default all our rows and the first ``max_paper`` paper rows.
    """
    ours = frame["ours"].to_numpy(bool) if "ours" in frame.columns else np.ones(len(frame), bool)
    if rows is None:
        picked = [i for i in range(len(frame)) if ours[i]] + [i for i in range(len(frame)) if not ours[i]][:max_paper]
    else:
        names = list(frame["method"])
        picked = [int(r) if isinstance(r, (int, np.integer)) else names.index(r) for r in rows]
    classes = list(classes)
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(picked))
    fig = Figure(figsize=figsize or (max(6.0, 0.45 * len(classes) * max(1.0, len(picked) / 2)), 3.6), dpi=dpi)
    ax = fig.add_subplot()
    top = 0.0
    for k, i in enumerate(picked):
        r = frame.iloc[i]
        mean = np.array([r.get(c, np.nan) for c in classes], dtype=float)
        std = np.array([r.get(f"{c}_std", np.nan) for c in classes], dtype=float)
        label = f"{r['method']} (ours)" if ours[i] else f"{r['method']} [{r.get('source', 'paper')}]"
        yerr = np.nan_to_num(std) if ours[i] and np.isfinite(std).any() else None
        ax.bar(x + (k - (len(picked) - 1) / 2) * width, mean, width, yerr=yerr, capsize=2, label=label)
        tops = mean + (yerr if yerr is not None else 0)
        top = max(top, float(np.nanmax(tops))) if np.isfinite(tops).any() else top
    ax.set_ylim(0, max(top, 1.0) * 1.3)  # headroom for the legend
    ax.set_xticks(x, classes, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=min(len(picked), 4) or 1, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def training_curves(curves: dict[str, pd.DataFrame], path: str | Path, title: str = "", ylabel: str = "",
                    xlabel: str = "step", figsize: tuple[float, float] = (6.0, 4.0), dpi: int = 100) -> Path:
    """One line per label from frames with columns ``step`` and ``value``."""
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.add_subplot()
    for label, df in curves.items():
        df = df.sort_values("step")
        ax.plot(df["step"].to_numpy(), df["value"].to_numpy(), label=str(label), linewidth=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def qualitative(images: Sequence[np.ndarray], gts: Sequence[np.ndarray], preds: dict[str, Sequence[np.ndarray]],
                path: str | Path, panel: float = 1.6, dpi: int = 100) -> Path:
    """Grid: one row per image; columns image, ground truth, then one per method (palette colours, ignore black).

    Each panel is ``panel`` inches wide (height from the first image's aspect ratio).
    """
    if not len(images) or len(gts) != len(images) or any(len(p) != len(images) for p in preds.values()):
        raise ValueError("need one GT and one prediction per method for every image")
    names = ["image", "ground truth", *preds]
    h, w = np.asarray(images[0]).shape[:2]
    head = 0.25  # inches for the column titles
    cell_h = panel * h / w
    fig = Figure(figsize=(panel * len(names), cell_h * len(images) + head), dpi=dpi)
    total_h = cell_h * len(images) + head
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - head / total_h, wspace=0.02, hspace=0.02)
    axes = fig.subplots(len(images), len(names), squeeze=False)
    for r in range(len(images)):
        panels = [np.asarray(images[r], dtype=np.uint8), colorize(gts[r]), *(colorize(p[r]) for p in preds.values())]
        for c, img in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(names[c], fontsize=8)
    return _save(fig, path)
