"""The evaluator: a streaming confusion matrix, per-class IoU, and the 19/16/13-class means.

One int64 matrix accumulated over the whole evaluation set (never an average of per-image mIoUs), rows =
ground truth, columns = prediction, built with ``torch.bincount`` on whatever device the tensors live on.
Bad predictions (wrong shape, values outside [0, C)) raise instead of landing in a wrong cell, which is
what AdaptSegNet's ``fast_hist`` silently does (reference/datasets.md §4.3).
"""

from __future__ import annotations

import numpy as np
import torch

from bench.data.labels import CLASS_NAMES, IGNORE, SUBSETS


class EvaluationError(ValueError):
    """A prediction or label that cannot be evaluated without producing a wrong number."""


def _as_tensor(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


class ConfusionMatrix:
    """Streaming ``[C, C]`` confusion matrix over trainIds; label 255 is ignored.

    ``update`` accepts tensors or arrays of shape ``[H, W]`` or ``[N, H, W]`` on CPU or GPU.
    """

    def __init__(self, num_classes: int = 19, device: str | torch.device | None = None):
        self.num_classes = num_classes
        self.device = torch.device(device) if device is not None else None
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=self.device)
        self.images = 0

    def update(self, pred, label, name: str | None = None) -> None:
        """Add one image (or a batch) of predictions against its ground truth."""
        pred, label = _as_tensor(pred), _as_tensor(label)
        where = f" ({name})" if name else ""
        if pred.shape != label.shape:
            raise EvaluationError(
                f"prediction shape {tuple(pred.shape)} != label shape {tuple(label.shape)}{where}: upsample "
                "the logits to the label size before the argmax (no image is skipped or resized here)"
            )
        if pred.is_floating_point() or label.is_floating_point():
            raise EvaluationError(f"predictions and labels must be integer class maps, got {pred.dtype}{where}")
        n = self.num_classes
        if self.device is None:
            self.device = pred.device
            self.mat = self.mat.to(self.device)
        n_img = 1 if label.dim() <= 2 else label.shape[0]
        pred = pred.to(self.device, torch.int64).reshape(-1)
        label = label.to(self.device, torch.int64).reshape(-1)
        if pred.numel() == 0:
            return
        pmin, pmax = torch.aminmax(pred)
        if int(pmin) < 0 or int(pmax) >= n:
            bad = int(pmin) if int(pmin) < 0 else int(pmax)
            raise EvaluationError(
                f"prediction value {bad} outside [0, {n}){where}: predictions must be trainIds of the "
                f"{n} evaluated classes (255/ignore is not a valid prediction)"
            )
        lmin, lmax = torch.aminmax(label)
        if int(lmin) < 0 or int(lmax) > IGNORE:
            raise EvaluationError(f"label value {int(lmin) if int(lmin) < 0 else int(lmax)} is not a trainId{where}")
        # One bincount over all 256 possible label rows: rows n..254 must be empty (invalid labels),
        # row 255 is the ignore row and is dropped. Cheaper than masking the ignore pixels out first.
        full = torch.bincount(label * n + pred, minlength=256 * n).reshape(256, n)
        stray = full[n:IGNORE].sum(1).nonzero()
        if stray.numel():
            raise EvaluationError(
                f"label value {n + int(stray[0])} is neither a trainId in [0, {n}) nor {IGNORE}{where}: map "
                "label ids to trainIds with the dataset's table before evaluating"
            )
        self.mat += full[:n]
        self.images += n_img

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Sum another matrix (e.g. from another worker) into this one."""
        self.mat += other.mat.to(self.mat.device)
        self.images += other.images
        return self

    def numpy(self) -> np.ndarray:
        return self.mat.cpu().numpy()

    def iou(self, classes=None) -> np.ndarray:
        """Per-class IoU for ``classes`` (trainIds, or a subset name "19"/"16"/"13"; default all).

        With a subset, pixels whose ground truth is outside it are ignored, and a prediction outside it on
        a kept pixel counts as a miss (FN) of the ground-truth class. NaN where a class is absent from both
        prediction and ground truth (of the kept pixels).
        """
        cls = _resolve(classes, self.num_classes)
        mat = self.numpy().astype(np.float64)[cls]  # keep only GT rows of the subset
        tp = mat[np.arange(len(cls)), cls]
        fn = mat.sum(axis=1) - tp  # includes predictions outside the subset
        fp = mat[:, cls].sum(axis=0) - tp
        denom = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)

    def miou(self, classes=None) -> float:
        """Mean IoU over the classes present (NaN entries excluded)."""
        iou = self.iou(classes)
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def summary(self, subsets=("19",)) -> dict:
        """Named results: ``miou_<subset>`` and ``iou/<class>`` for each requested subset.

        When both "16" and "13" are asked for, ``miou_13_of_16`` is added: the mean of the 13 IoUs taken from
        the 16-class evaluation (MaxSquareLoss/ADVENT's "mIoU*"), which is not the same number as
        ``miou_13`` (a matrix restricted to the 13 classes).
        """
        out: dict = {"images": self.images, "pixels": int(self.mat.sum())}
        for s in subsets:
            cls = _resolve(s, self.num_classes)
            iou = self.iou(cls)
            out[f"miou_{s}"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
            for c, v in zip(cls, iou):
                out[f"iou_{s}/{CLASS_NAMES[c] if self.num_classes == 19 else c}"] = float(v)
        if "16" in subsets and "13" in subsets:
            out["miou_13_of_16"] = miou_13_of_16(self.iou("16"))
        return out


def _resolve(classes, num_classes: int) -> list[int]:
    if classes is None:
        return list(range(num_classes))
    if isinstance(classes, str):
        if classes not in SUBSETS:
            raise KeyError(f"unknown class subset {classes!r}; valid: {sorted(SUBSETS)}")
        classes = SUBSETS[classes]
    cls = [int(c) for c in classes]
    if any(c < 0 or c >= num_classes for c in cls) or len(set(cls)) != len(cls):
        raise ValueError(f"class subset {cls} must be distinct trainIds in [0, {num_classes})")
    return cls


def miou_13_of_16(iou16: np.ndarray) -> float:
    """The literature's other 13-class number: the 13 IoUs picked out of a 16-class evaluation."""
    pos = [SUBSETS["16"].index(c) for c in SUBSETS["13"]]
    return float(np.nanmean(np.asarray(iou16)[pos]))
