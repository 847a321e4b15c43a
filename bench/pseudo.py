"""Offline pseudo-labels: what a *label* stage writes and what the next *train* stage reads.

A label stage predicts on the target train images (the suite's resize, no random augmentation), turns each
prediction into trainIds with the method's rule (255 = not labelled), and saves one 8-bit PNG per image at
the file's native resolution, so the training dataset reads it exactly like a ground-truth label file (same
resize, crop and flip). Quality diagnostics (pseudo-label ratio, per-class precision against the target
train labels where they exist) are computed afterwards and only reported, never fed back into training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.data.labels import CLASS_NAMES, IGNORE, NUM_CLASSES

LABEL_DIR = "labels"
AUGMENTATIONS = ("scale", "crop", "flip")


def label_path(label_dir: Path, index: int) -> Path:
    return Path(label_dir) / f"{index:06d}.png"


def save_label(label_dir: Path, index: int, label: np.ndarray) -> None:
    """One pseudo-label map (uint8 trainIds, 255 ignore) as a PNG."""
    label = np.asarray(label)
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"pseudo-label must be a 2-D uint8 trainId map, got {label.dtype} {label.shape}")
    bad = (label >= NUM_CLASSES) & (label != IGNORE)
    if bad.any():
        raise ValueError(f"pseudo-label holds ids {sorted(set(label[bad].tolist()))[:5]} outside 0..18 and 255")
    Path(label_dir).mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(label_path(label_dir, index))


def read_trainid_label(path: Path) -> np.ndarray:
    from bench.data.io import DataError

    if not Path(path).is_file():
        raise DataError(f"{path}: pseudo-label missing; the label stage that wrote {Path(path).parent} is incomplete "
                        f"— clear it with `bench cache clear {Path(path).parent.parent.name}`")
    return np.asarray(Image.open(path))


_IDENTITY = np.full(256, IGNORE, dtype=np.uint8)
_IDENTITY[:NUM_CLASSES] = np.arange(NUM_CLASSES, dtype=np.uint8)


def with_pseudo_labels(dataset, label_dir: Path):
    """A copy of ``dataset`` (same images, transform and seed) whose labels are the PNGs in ``label_dir``."""
    out = type(dataset).__new__(type(dataset))
    out.__dict__.update(dataset.__dict__)
    out.samples = [dataclasses.replace(s, label=label_path(label_dir, i)) for i, s in enumerate(dataset.samples)]
    out._read_label, out._lut = read_trainid_label, _IDENTITY
    return out


def plain_spec(spec: dict) -> dict:
    """A dataset spec without random augmentation (what a label or fit stage reads)."""
    spec = dict(spec)
    spec["options"] = {k: v for k, v in (spec.get("options") or {}).items() if k not in AUGMENTATIONS}
    return spec


@torch.no_grad()
def predictions(model, dataset, device, amp_dtype=None) -> Iterator[tuple[int, object, tuple[int, int]]]:
    """``(index, model output, native (H, W))`` for every item, the model in eval mode."""
    model.eval()
    for i in range(len(dataset)):
        item = dataset[i]
        x = item["image"][None].to(device)
        with torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
        h, w = Image.open(dataset.samples[i].image).size[::-1]
        yield i, out, (h, w)


def upsample(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=True, as the evaluation) to ``size``; ``t`` is ``[N,C,h,w]``."""
    return t if t.shape[-2:] == tuple(size) else F.interpolate(t.float(), size=size, mode="bilinear",
                                                                align_corners=True)


class LabelStats:
    """Pseudo-label ratio and, where ground truth exists, per-class precision (diagnostics only). Precision counts
    only pixels whose ground truth is a class: a pseudo-label on void (Cityscapes' ego vehicle, borders, out of
    ROI) is neither right nor wrong, and the evaluation never scores it. ``pl_void`` is the share of the
    pseudo-labelled pixels that fall on void."""

    def __init__(self) -> None:
        self.labelled = self.total = 0
        self.scored = np.zeros(NUM_CLASSES, np.int64)  # pseudo-labelled pixels per class with a ground-truth class
        self.correct = np.zeros(NUM_CLASSES, np.int64)
        self.gt_pixels = np.zeros(NUM_CLASSES, np.int64)  # per class, for recall (bench.label_coverage)
        self.with_gt = 0

    def update(self, pseudo: np.ndarray, gt: np.ndarray | None = None) -> None:
        mask = pseudo != IGNORE
        self.labelled += int(mask.sum())
        self.total += pseudo.size
        if gt is not None and gt.shape == pseudo.shape:
            self.with_gt += 1
            scored = mask & (gt != IGNORE)
            self.scored += np.bincount(pseudo[scored], minlength=NUM_CLASSES)[:NUM_CLASSES]
            hit = scored & (gt == pseudo)
            self.correct += np.bincount(pseudo[hit], minlength=NUM_CLASSES)[:NUM_CLASSES]
            self.gt_pixels += np.bincount(gt[gt != IGNORE], minlength=NUM_CLASSES)[:NUM_CLASSES]

    def summary(self, prefix: str = "pl_") -> dict:
        out = {f"{prefix}ratio": self.labelled / self.total if self.total else 0.0}
        if self.with_gt:
            if self.scored.sum():  # no pseudo-label on a class pixel: precision is undefined, not 0
                out[f"{prefix}precision"] = float(self.correct.sum() / self.scored.sum())
            out[f"{prefix}void"] = float(1 - self.scored.sum() / self.labelled) if self.labelled else 0.0
            for c, name in enumerate(CLASS_NAMES):
                if self.scored[c]:
                    out[f"{prefix}precision/{name}"] = float(self.correct[c] / self.scored[c])
        return out


def write_pseudo_labels(model, dataset, out_dir: Path, rule: Callable, device, gt_dataset=None,
                        amp_dtype=None) -> dict:
    """Run ``model`` over ``dataset``, ``rule(output, (H, W)) -> uint8 [H,W]`` per image, save the labels under
    ``out_dir/labels`` and return the diagnostics (``gt_dataset``: the same images with their labels, if any)."""
    stats = LabelStats()
    label_dir = Path(out_dir) / LABEL_DIR
    for i, out, size in predictions(model, dataset, device, amp_dtype):
        pseudo = rule(out, size)
        save_label(label_dir, i, pseudo)
        gt = gt_dataset.raw(i)[1] if gt_dataset is not None else None
        stats.update(pseudo, gt)
    return stats.summary()
