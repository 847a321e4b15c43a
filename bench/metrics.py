"""The evaluator: a streaming confusion matrix, per-class IoU, and the 19/16/13-class means.

One int64 matrix accumulated over the whole evaluation set (never an average of per-image mIoUs), rows =
ground truth, columns = prediction, built with ``torch.bincount`` on whatever device the tensors live on.
Optionally the matrix of every image is kept as well (``per_image=True``): the mIoU is still computed from the
sum, but ``bench.stats`` can resample images for confidence intervals on differences between methods.
Bad predictions (wrong shape, values outside [0, C)) raise instead of landing in a wrong cell, which is
what AdaptSegNet's ``fast_hist`` silently does (reference/datasets.md §4.3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.data.labels import CLASS_NAMES, IGNORE, SUBSETS


class EvaluationError(ValueError):
    """A prediction or label that cannot be evaluated without producing a wrong number."""


def _as_tensor(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(1)`` bit for bit (the first maximum on ties, NaN counted as the maximum), the class map of
    ``[N, C, ...]`` scores. Computed with ``max(1)``: torch 2.14's CPU ``argmax`` over a strided dim is ~4x slower
    (4×19×128×256 floats: 72 against 15 ms, one thread), and every evaluation and label map goes through here."""
    return scores.max(1).indices


class ConfusionMatrix:
    """Streaming ``[C, C]`` confusion matrix over trainIds; label 255 is ignored.

    ``update`` accepts tensors or arrays of shape ``[H, W]`` or ``[N, H, W]`` on CPU or GPU. With
    ``per_image=True`` every image's own ``[C, C]`` matrix (and its name) is kept too: :meth:`per_image`.
    """

    def __init__(self, num_classes: int = 19, device: str | torch.device | None = None, per_image: bool = False):
        self.num_classes = num_classes
        self.device = torch.device(device) if device is not None else None
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=self.device)
        self.images = 0
        self.keep_per_image = per_image
        self._per_image: list[torch.Tensor] = []  # [n_img, C, C] per update, on the CPU
        self.names: list[str] = []

    def update(self, pred, label, name=None) -> None:
        """Add one image (or a batch) of predictions against its ground truth. ``name``: the image id (for a
        batch, a list of ids), used in error messages and kept with the per-image matrices."""
        pred, label = _as_tensor(pred), _as_tensor(label)
        names = [name] if name is None or isinstance(name, str) else [str(x) for x in name]
        where = f" ({names[0]})" if names[0] else ""
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
        # Per image: the image index is one more digit of the bin, so a batch is still one bincount.
        index = label * n + pred
        if self.keep_per_image and n_img > 1:
            index += torch.arange(n_img, device=self.device).repeat_interleave(index.numel() // n_img) * (256 * n)
        per = torch.bincount(index, minlength=n_img * 256 * n if self.keep_per_image else 256 * n)
        per = per.reshape(-1, 256, n)
        full = per.sum(0) if per.shape[0] > 1 else per[0]
        stray = full[n:IGNORE].sum(1).nonzero()
        if stray.numel():
            raise EvaluationError(
                f"label value {n + int(stray[0])} is neither a trainId in [0, {n}) nor {IGNORE}{where}: map "
                "label ids to trainIds with the dataset's table before evaluating"
            )
        if self.keep_per_image:
            self._per_image.append(per[:, :n].cpu())
            # without one id per image: the running index (a batch under one name gets name[i])
            self.names += (names if len(names) == n_img and all(names) else
                           [f"{names[0]}[{i}]" if names[0] else str(self.images + i) for i in range(n_img)])
        self.mat += full[:n]
        self.images += n_img

    def per_image(self) -> np.ndarray:
        """``[N, C, C]`` int64: one matrix per image in update order (needs ``per_image=True``); sums to
        :meth:`numpy`."""
        if not self.keep_per_image:
            raise RuntimeError("ConfusionMatrix(per_image=True) keeps the per-image matrices; this one did not")
        if not self._per_image:
            return np.zeros((0, self.num_classes, self.num_classes), np.int64)
        return torch.cat(self._per_image).numpy()

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Sum another matrix (e.g. from another worker) into this one (and append its per-image matrices)."""
        self.mat += other.mat.to(self.mat.device)
        self.images += other.images
        if self.keep_per_image:
            if not other.keep_per_image:
                raise RuntimeError("cannot merge a matrix without per-image matrices into one that keeps them")
            self._per_image += other._per_image
            self.names += other.names
        return self

    def numpy(self) -> np.ndarray:
        return self.mat.cpu().numpy()

    def iou(self, classes=None) -> np.ndarray:
        """Per-class IoU for ``classes`` (trainIds, or a subset name "19"/"16"/"13"; default all).

        With a subset, pixels whose ground truth is outside it are ignored, and a prediction outside it on
        a kept pixel counts as a miss (FN) of the ground-truth class. NaN where a class is absent from both
        prediction and ground truth (of the kept pixels).
        """
        return iou_from_confusion(self.numpy(), classes)

    def miou(self, classes=None) -> float:
        """Mean IoU over the classes present (NaN entries excluded)."""
        return float(miou_from_confusion(self.numpy(), classes))

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


def iou_from_confusion(mat, classes=None) -> np.ndarray:
    """Per-class IoU of one ``[C, C]`` confusion matrix or of a stack ``[..., C, C]`` (rows = ground truth) →
    ``[..., K]`` for the K ``classes`` (trainIds or a subset name; default all), float64.

    The one definition of the subset semantics (used by :class:`ConfusionMatrix` and by ``bench.stats``): pixels
    whose ground truth is outside the subset are ignored; a prediction outside the subset on a kept pixel is a
    miss (FN) of the ground-truth class. NaN where a class is absent from both prediction and ground truth.
    """
    mat = np.asarray(mat)
    cls = _resolve(classes, mat.shape[-1])
    rows = mat[..., cls, :].astype(np.float64)  # keep only GT rows of the subset
    tp = rows[..., np.arange(len(cls)), cls]
    fn = rows.sum(axis=-1) - tp  # includes predictions outside the subset
    fp = rows[..., :, cls].sum(axis=-2) - tp
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)


def miou_from_confusion(mat, classes=None) -> np.ndarray:
    """Mean of :func:`iou_from_confusion` over the classes present (NaN excluded) → ``[...]`` (a 0-d array for
    one matrix); NaN where no class is present at all."""
    iou = iou_from_confusion(mat, classes)
    present = np.isfinite(iou)
    n = present.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(present, iou, 0.0).sum(axis=-1) / np.maximum(n, 1), np.nan)


PER_IMAGE_FILE = "confusion_per_image.npz"


def save_per_image(path: str | Path, mats: np.ndarray, names) -> Path:
    """Write per-image matrices ``[N, C, C]`` and their image ids as a compressed ``.npz`` (``confusion``,
    ``names``). int32 when every count fits (one image's pixels always do): most cells are 0, so compressed
    this is a few hundred bytes per image."""
    mats = np.asarray(mats)
    if mats.ndim != 3 or mats.shape[1] != mats.shape[2] or len(names) != len(mats):
        raise ValueError(f"per-image matrices must be [N, C, C] with N names; got {mats.shape}, {len(names)} names")
    small = mats.size == 0 or int(mats.max()) < np.iinfo(np.int32).max
    path = Path(path)
    np.savez_compressed(path, confusion=mats.astype(np.int32 if small else np.int64),
                        names=np.asarray([str(x) for x in names]))
    return path


def load_per_image(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """``(matrices [N, C, C] int64, image ids)`` from :func:`save_per_image`'s file."""
    with np.load(path, allow_pickle=False) as z:
        return z["confusion"].astype(np.int64), [str(x) for x in z["names"]]


def miou_13_of_16(iou16: np.ndarray) -> float:
    """The literature's other 13-class number: the 13 IoUs picked out of a 16-class evaluation."""
    pos = [SUBSETS["16"].index(c) for c in SUBSETS["13"]]
    return float(np.nanmean(np.asarray(iou16)[pos]))
