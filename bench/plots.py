"""Figures as PNG files: a per-class IoU heatmap, training curves, qualitative segmentation grids.

Every figure is drawn on an explicit Agg canvas (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), never
through pyplot, so no display is needed and the global matplotlib backend is left alone. Figures are sized for
a page: ``PAGE_WIDTH`` inches wide (A4 less margins), at ``DPI``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.data.labels import CLASS_NAMES, IGNORE, PALETTE

# trainId → RGB for every uint8 value: the 19 Cityscapes colours, everything else (255 = ignore) black.
COLOUR_LUT = np.zeros((256, 3), dtype=np.uint8)
COLOUR_LUT[: len(PALETTE)] = PALETTE
PAGE_WIDTH, PAGE_HEIGHT, DPI = 7.0, 9.5, 150  # inches: A4 (8.27 x 11.69) less ~2 cm margins


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


def per_class_heatmap(frame: pd.DataFrame, classes: Sequence[str], path: str | Path, title: str = "",
                      rows: Sequence[int | str] | None = None, max_paper: int = 6, extra: Sequence[str] = ("mIoU",),
                      width: float = PAGE_WIDTH, dpi: int = DPI) -> Path:
    """Methods × classes from a ``comparison_frame``, each cell annotated with its IoU (%, our mean over seeds),
    ``extra`` columns (mIoU) after a gap, paper rows below ours after a rule; ``width`` inches wide.

    ``rows`` picks rows by position or method name; by default all our rows and the first ``max_paper`` paper rows.
    Row labels are the tables' method names (paper rows with their source).
    """
    ours = frame["ours"].to_numpy(bool) if "ours" in frame.columns else np.ones(len(frame), bool)
    if rows is None:
        picked = [i for i in range(len(frame)) if ours[i]] + [i for i in range(len(frame)) if not ours[i]][:max_paper]
    else:
        names = list(frame["method"])
        picked = [int(r) if isinstance(r, (int, np.integer)) else names.index(r) for r in rows]
    cols = [*classes, *[c for c in extra if c in frame.columns]]
    values = np.array([[frame.iloc[i].get(c, np.nan) for c in cols] for i in picked], dtype=float)
    labels = [frame["method"].iloc[i] if ours[i] else f"{frame['method'].iloc[i]} [{frame['source'].iloc[i]}]"
              for i in picked]
    n, m = values.shape
    top, bottom, right = 0.4, 0.75, 0.65  # inches: title; rotated class names; colour bar and its label
    row_h = min(0.24, (PAGE_HEIGHT - top - bottom) / max(n, 1))  # a long table shrinks to stay on the page
    height = top + bottom + row_h * n
    fig = Figure(figsize=(width, height), dpi=dpi)
    ax = fig.add_axes((0.3, bottom / height, 0.5, row_h * n / height))
    img = ax.imshow(np.ma.masked_invalid(values), cmap=_viridis(), vmin=0, vmax=100, aspect="auto",
                    interpolation="nearest")
    ax.set_yticks(np.arange(n), labels, fontsize=min(7.0, 30 * row_h))
    ax.set_xticks(np.arange(m), cols, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    FigureCanvasAgg(fig).draw()  # the row labels' width decides where the cells start
    left = max(t.get_window_extent().width for t in ax.get_yticklabels()) / dpi + 0.12
    ax.set_position((left / width, bottom / height, (width - left - right) / width, row_h * n / height))
    cell_w = (width - left - right) / m
    digits = 1 if cell_w >= 0.3 else 0  # "91.9" needs ~0.3 in at this size; the tables keep the decimal
    size = max(4.0, min(7.0, 28 * row_h, (24 if digits else 32) * cell_w))
    for r in range(n):
        for c in range(m):
            v = values[r, c]
            ax.text(c, r, "–" if np.isnan(v) else f"{v:.{digits}f}", ha="center", va="center", fontsize=size,
                    color="white" if v < 55 else "black")  # viridis is dark below about half way (NaN: black)
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(m + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    if len(extra) and m > len(classes):
        ax.axvline(len(classes) - 0.5, color="white", linewidth=3)
    split = sum(ours[i] for i in picked)
    if 0 < split < n:
        ax.axhline(split - 0.5, color="white", linewidth=3)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9, loc="left")
    pos = ax.get_position()
    cax = fig.add_axes((pos.x1 + 0.12 / width, pos.y0, 0.1 / width, pos.height))
    fig.colorbar(img, cax=cax).set_label("IoU (%)", fontsize=7)
    cax.tick_params(labelsize=6)
    return _save(fig, path)


def _viridis():
    from matplotlib import colormaps

    cmap = colormaps["viridis"].copy()
    cmap.set_bad("#dddddd")  # a value the row does not have (a paper row's missing class)
    return cmap


def _styles(n: int) -> list[dict]:
    """Distinct line styles for ``n`` curves: the 20 tab20 colours (dark and light of each hue apart), then the
    same colours dashed, dotted, ..."""
    from matplotlib import colormaps

    tab = colormaps["tab20"].colors
    order = [*range(0, 20, 2), *range(1, 20, 2)]  # the ten dark hues first
    dashes = ["-", "--", ":", "-."]
    return [{"color": tab[order[i % 20]], "linestyle": dashes[(i // 20) % 4]} for i in range(n)]


def training_curves(curves: dict[str, pd.DataFrame], path: str | Path, title: str = "", ylabel: str = "",
                    xlabel: str = "step", figsize: tuple[float, float] | None = None, dpi: int = DPI) -> Path:
    """One line per label from frames with columns ``step`` and ``value``; the legend outside the axes, to the
    right (the axes shrink to make room), in distinct colours."""
    fig = Figure(figsize=figsize or (PAGE_WIDTH, max(3.5, 0.17 * len(curves) + 0.8)), dpi=dpi)
    ax = fig.add_subplot()
    for (label, df), style in zip(curves.items(), _styles(len(curves))):
        df = df.sort_values("step")
        ax.plot(df["step"].to_numpy(), df["value"].to_numpy(), label=str(label), linewidth=1.2, **style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if curves:
        legend = fig.legend(*ax.get_legend_handles_labels(), loc="upper right", fontsize=7, frameon=False,
                            borderaxespad=0.3)
        FigureCanvasAgg(fig).draw()
        w = legend.get_window_extent().width / fig.bbox.width
        fig.subplots_adjust(right=max(0.3, 0.98 - w - 0.02))
    return _save(fig, path)


def class_legend(fig: Figure, rect: tuple[float, float, float, float], classes: Sequence[int] | None = None,
                 ncols: int = 7, fontsize: float = 7) -> None:
    """The palette as labelled patches (plus black = ignore) in the figure-fraction ``rect``."""
    from matplotlib.patches import Patch

    ids = list(range(len(PALETTE))) if classes is None else list(classes)
    handles = [Patch(facecolor=PALETTE[i] / 255, edgecolor="none", label=CLASS_NAMES[i]) for i in ids]
    handles.append(Patch(facecolor="black", edgecolor="none", label="ignore"))
    ax = fig.add_axes(rect)
    ax.set_axis_off()
    ax.legend(handles=handles, loc="center", ncols=ncols, fontsize=fontsize, frameon=False, handlelength=1.2,
              columnspacing=1.0)


def qualitative(images: Sequence[np.ndarray], gts: Sequence[np.ndarray], preds: dict[str, Sequence[np.ndarray]],
                path: str | Path, panel: float | None = None, dpi: int = DPI, legend: bool = True) -> Path:
    """Grid: one row per image; columns image, ground truth, then one per method (palette colours, ignore black),
    and the class colour legend under it.

    Each panel is ``panel`` inches wide (default: the page width shared by the columns, at most 1.6; height from
    the first image's aspect ratio).
    """
    if not len(images) or len(gts) != len(images) or any(len(p) != len(images) for p in preds.values()):
        raise ValueError("need one GT and one prediction per method for every image")
    names = ["image", "ground truth", *preds]
    panel = panel or min(1.6, PAGE_WIDTH / len(names))
    h, w = np.asarray(images[0]).shape[:2]
    head, foot = 0.35, (0.75 if legend else 0.0)  # inches: the column titles (two lines), the class legend
    cell_h = panel * h / w
    total_h = cell_h * len(images) + head + foot
    fig = Figure(figsize=(panel * len(names), total_h), dpi=dpi)
    fig.subplots_adjust(left=0, right=1, bottom=foot / total_h, top=1 - head / total_h, wspace=0.03, hspace=0.03)
    axes = fig.subplots(len(images), len(names), squeeze=False)
    for r in range(len(images)):
        panels = [np.asarray(images[r], dtype=np.uint8), colorize(gts[r]), *(colorize(p[r]) for p in preds.values())]
        for c, img in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(names[c].replace(" (", "\n("), fontsize=min(8.0, 9 * panel), pad=2)  # variant below
    if legend:
        class_legend(fig, (0, 0, 1, foot / total_h), ncols=max(4, min(10, round(panel * len(names) / 0.9))))
    return _save(fig, path)


def qualitative_figures(images, gts, preds: dict[str, Sequence[np.ndarray]], path: str | Path,
                        max_methods: int = 8, **kw) -> list[Path]:
    """:func:`qualitative` for at most ``max_methods`` methods per figure, split evenly and at one panel size:
    ``path`` itself when one figure is enough, else ``<stem>_1.png``, ``<stem>_2.png``, ... (each with the image
    and ground-truth columns)."""
    path = Path(path)
    names = list(preds)
    k = max(1, -(-len(names) // max_methods))
    chunks = [list(c) for c in np.array_split(np.array(names, dtype=object), k)]  # 19 → 7 + 6 + 6
    kw.setdefault("panel", min(1.6, PAGE_WIDTH / (2 + len(chunks[0]))))
    if len(chunks) == 1:
        return [qualitative(images, gts, preds, path, **kw)]
    return [qualitative(images, gts, {n: preds[n] for n in chunk}, path.with_name(f"{path.stem}_{k}{path.suffix}"),
                        **kw) for k, chunk in enumerate(chunks, start=1)]
