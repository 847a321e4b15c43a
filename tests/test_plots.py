"""Figures: each writes a PNG of the expected pixel size; qualitative panels use the Cityscapes palette."""

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from bench.data.labels import CLASS_NAMES, PALETTE
from bench.plots import colorize, per_class_bars, qualitative, training_curves
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


def test_per_class_bars(tmp_path):
    rng = np.random.default_rng(0)
    classes = list(CLASS_NAMES[:5])
    results = [{"method": m, "seed": s, "miou_19": rng.random(), **{f"iou_19/{c}": rng.random() for c in CLASS_NAMES}}
               for m in ("a", "b") for s in range(3)]
    paper = pd.DataFrame([{"paper": "P", "table": 1, "row": f"r{i}", "road": 50.0 + i, "mIoU": 40.0}
                          for i in range(6)])
    frame = comparison_frame(per_class_frame(results), paper, classes)
    out = per_class_bars(frame, [*classes, "mIoU"], tmp_path / "bars.png", "bars", figsize=(8, 3), dpi=100)
    assert out == tmp_path / "bars.png"
    assert read_rgb(out).shape == (300, 800, 3)
    picked = per_class_bars(frame, classes, tmp_path / "sub" / "picked.png", rows=["a", 4], figsize=(4, 2), dpi=50)
    assert read_rgb(picked).shape == (100, 200, 3)


def test_training_curves(tmp_path):
    curves = {name: pd.DataFrame({"step": np.arange(0, 100, 10), "value": np.linspace(0, k, 10)})
              for k, name in enumerate(["source_only", "cag_uda"], start=1)}
    out = training_curves(curves, tmp_path / "curves.png", "mIoU", "mIoU (%)", figsize=(5, 4), dpi=50)
    assert read_rgb(out).shape == (200, 250, 3)


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
    assert n * cell <= img.shape[0] <= n * cell + 50  # plus the column-title strip

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
