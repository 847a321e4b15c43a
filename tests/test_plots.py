"""Figures: each writes a PNG of the expected pixel size; qualitative panels use the Cityscapes palette."""

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from bench.data.labels import CLASS_NAMES, PALETTE
from bench.plots import (
    PAGE_HEIGHT,
    PAGE_WIDTH,
    colorize,
    per_class_heatmap,
    qualitative,
    qualitative_figures,
    training_curves,
)
from bench.tables import comparison_frame, per_class_frame


def read_rgb(path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    img = mpimg.imread(path)  # float RGBA in [0, 1] for PNG
    return np.round(img[..., :3] * 255).astype(np.uint8)


def test_colorize_palette_and_ignore():
    label = np.array([list(range(19)) + [255, 200]], dtype=np.uint8)
    rgb = colorize(label)
    assert rgb.shape == (1, 21, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, :19], PALETTE)
    assert not rgb[0, 19:].any()
    wide = colorize(np.array([[-1, 13, 70000]], dtype=np.int64))
    np.testing.assert_array_equal(wide[0], [[0, 0, 0], PALETTE[13], [0, 0, 0]])


def test_per_class_heatmap_fits_a_page_and_greys_missing_cells(tmp_path):
    rng = np.random.default_rng(0)
    results = [{"method": m, "seed": s, "miou_19": rng.random(), **{f"iou_19/{c}": rng.random() for c in CLASS_NAMES}}
               for m in [f"method_{k}" for k in range(30)] for s in range(2)]
    paper = pd.DataFrame([{"paper": "P", "table": 1, "row": f"r{i}", "road": 50.0 + i, "mIoU": 40.0}
                          for i in range(8)])
    frame = comparison_frame(per_class_frame(results), paper, list(CLASS_NAMES))
    out = per_class_heatmap(frame, list(CLASS_NAMES), tmp_path / "heat.png", "t", dpi=50)
    img = read_rgb(out)
    assert img.shape[1] == PAGE_WIDTH * 50 and img.shape[0] <= PAGE_HEIGHT * 50  # 36 rows still on one page
    grey = (img == 0xDD).all(axis=-1).sum()  # the paper rows' missing classes
    assert grey > 0
    small = read_rgb(per_class_heatmap(frame, ["road"], tmp_path / "s.png", rows=["method_0", 30], dpi=50))
    assert small.shape[0] < img.shape[0] / 3


def test_training_curves_legend_outside_in_distinct_colours(tmp_path):
    from bench.plots import _styles

    curves = {f"stage {k}": pd.DataFrame({"step": np.arange(0, 100, 10), "value": np.full(10, 1.0)}) for k in range(24)}
    out = training_curves(curves, tmp_path / "curves.png", "loss", "loss", dpi=200)  # line cores unblended
    img = read_rgb(out)
    assert img.shape[1] == PAGE_WIDTH * 200
    styles = [(s["color"], s["linestyle"]) for s in _styles(24)]
    assert len(set(styles)) == 24
    spines = np.nonzero((img < 60).all(axis=-1).sum(axis=0) > 0.4 * img.shape[0])[0]  # the axes' vertical frame
    assert spines.max() < img.shape[1] - 40  # the axes stop short: the legend has the right of the figure
    right = img[:, spines.max() + 3:].reshape(-1, 3).astype(int)
    colours = np.round(255 * np.array([s["color"] for s in _styles(20)])).astype(int)
    near = [(np.abs(right - c).max(axis=1) <= 12).any() for c in colours]
    assert sum(near) >= 18  # the legend's line samples are there, outside the axes


def test_qualitative_figures_split_evenly(tmp_path):
    img, gt = np.zeros((8, 16, 3), np.uint8), np.zeros((8, 16), np.uint8)
    preds = {f"m{k} (v)": [gt] for k in range(19)}
    paths = qualitative_figures([img], [gt], preds, tmp_path / "q.png", dpi=50)
    assert [p.name for p in paths] == ["q_1.png", "q_2.png", "q_3.png"]  # 7 + 6 + 6 methods, not 8 + 8 + 3
    widths = [read_rgb(p).shape[1] for p in paths]
    assert widths[1] == widths[2] < widths[0] <= PAGE_WIDTH * 50 + 1
    assert [p.name for p in qualitative_figures([img], [gt], {"a": [gt]}, tmp_path / "one.png", dpi=50)] == ["one.png"]


@pytest.mark.parametrize("gt_class,pred_class", [(13, 11), (0, 8)])
def test_qualitative_grid_and_colours(tmp_path, gt_class, pred_class):
    h, w, n = 40, 80, 2
    images = [np.full((h, w, 3), 100, np.uint8) for _ in range(n)]  # grey: no palette colour
    gts = [np.full((h, w), gt_class, np.uint8) for _ in range(n)]
    gts[1][: h // 2] = 255  # upper half of the second GT ignored
    preds = {"m1": [np.full((h, w), pred_class, np.uint8)] * n, "m2": [np.full((h, w), pred_class, np.uint8)] * n}
    panel, dpi = 1.6, 100
    img = read_rgb(qualitative(images, gts, preds, tmp_path / "q.png", panel=panel, dpi=dpi))
    ncols = 2 + len(preds)
    assert img.shape[1] == round(panel * ncols * dpi)
    cell = panel * h / w * dpi
    assert n * cell + dpi <= img.shape[0] <= n * cell + 1.1 * dpi + 2  # plus the column titles and the legend

    legend = img[round(n * cell + 0.35 * dpi):]
    assert (legend == PALETTE[7]).all(axis=-1).any()  # the class legend: every class, present or not
    img = img[: round(n * cell + 0.35 * dpi)]  # the grid

    def where(colour):
        ys, xs = np.nonzero((img == colour).all(axis=-1))
        return ys, xs

    ys, xs = where(PALETTE[gt_class])
    panel_area = (panel * dpi) * cell
    assert len(xs) > 0.6 * 1.5 * panel_area  # the first GT fully, the second half
    assert xs.min() >= img.shape[1] / ncols - 2 and xs.max() <= 2 * img.shape[1] / ncols + 2  # GT column only
    ys_p, xs_p = where(PALETTE[pred_class])
    assert len(xs_p) > 0.6 * 2 * n * panel_area and xs_p.min() >= 2 * img.shape[1] / ncols - 2
    black = (img[:, img.shape[1] // ncols: 2 * img.shape[1] // ncols] == 0).all(axis=-1)
    assert black.sum() > 0.4 * 0.5 * panel_area  # ignore → black


def test_qualitative_rejects_mismatched_lists(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    gt = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError):
        qualitative([img, img], [gt], {"m": [gt, gt]}, tmp_path / "x.png")
