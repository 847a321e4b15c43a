"""``bench data check``: validate a dataset tree file by file and print a summary and its fingerprint."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from bench.data import io, layouts
from bench.data.datasets import _READERS, build_dataset, fingerprint
from bench.data.labels import CLASS_NAMES, NUM_CLASSES, map_labels

SPLITS = {"gta5": ("all",), "synthia": ("all",), "cityscapes": ("train", "val"), "crosscity": ("train", "test")}


@dataclass
class SplitReport:
    split: str
    count: int = 0
    missing_labels: int = 0
    image_sizes: Counter = field(default_factory=Counter)
    size_mismatches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES + 1, dtype=np.int64))


@dataclass
class CheckReport:
    dataset: str
    root: Path
    splits: list[SplitReport]
    fingerprint: str = ""

    @property
    def ok(self) -> bool:
        return not any(s.errors for s in self.splits)


def _check_one(sample: layouts.Sample, label_format: str, deep: bool = False):
    """(image size, label size or None, trainId histogram or None, error or None) for one pair. Labels are always
    decoded; images only with ``deep`` (else their header is read: a truncated PNG passes a header read)."""
    try:
        if deep:
            h, w = io.read_image(sample.image).shape[:2]
            size = (w, h)
        else:
            size = io.image_size(sample.image)
        if sample.label is None:
            return size, None, None, None
        reader, lut = _READERS[label_format]
        train = map_labels(reader(sample.label), lut)
        # ignore (255) and anything ≥ 19 land in the last bin
        hist = np.bincount(np.minimum(train.ravel(), NUM_CLASSES), minlength=NUM_CLASSES + 1)
        return size, (train.shape[1], train.shape[0]), hist, None
    except io.DataError as e:
        return None, None, None, str(e)


def check_dataset(name: str, root, splits=None, city: str | None = None, progress=None,
                  deep: bool = False) -> CheckReport:
    """Read every file of the given splits; errors are collected (not raised) so one run lists them all.

    Layout errors (missing folders, no images) still raise DataError at once: nothing else can be checked.
    ``progress(done, total, split)`` is called as files are read.
    """
    root = Path(root)
    reports, files = [], []
    for split in splits or SPLITS[name]:
        ds = build_dataset(name, root, split, city=city) if name == "crosscity" else build_dataset(name, root, split)
        rep = SplitReport(split, len(ds), ds.missing_labels)
        fmt = label_format(name)
        with ThreadPoolExecutor(max_workers=4) as pool:
            check = partial(_check_one, label_format=fmt, deep=deep)
            for i, (s, res) in enumerate(zip(ds.samples, pool.map(check, ds.samples))):
                size, lsize, hist, err = res
                if err:
                    rep.errors.append(err)
                else:
                    rep.image_sizes[size] += 1
                    if lsize is not None and lsize != size:
                        msg = f"{s.name}: image {size[0]}x{size[1]}, label {lsize[0]}x{lsize[1]}"
                        (rep.size_mismatches if name in ("gta5", "synthia") else rep.errors).append(msg)
                    if hist is not None:
                        rep.class_pixels += hist
                if progress:
                    progress(i + 1, len(ds), split)
        files += [p for s in ds.samples for p in (s.image, s.label) if p is not None]
        reports.append(rep)
    return CheckReport(name, root, reports, fingerprint(root, files))


def class_frequencies(rep: SplitReport) -> dict[str, float]:
    """Fraction of labelled (non-ignore) pixels per class."""
    total = rep.class_pixels[:NUM_CLASSES].sum()
    return {n: float(c / total) if total else 0.0 for n, c in zip(CLASS_NAMES, rep.class_pixels[:NUM_CLASSES])}


def format_report(rep: CheckReport) -> str:
    """Plain-text summary (the CLI renders it; tests read it)."""
    out = [f"{rep.dataset} at {rep.root}"]
    for s in rep.splits:
        sizes = ", ".join(f"{w}x{h}: {n}" for (w, h), n in s.image_sizes.most_common(3))
        out.append(f"  {s.split}: {s.count} pairs, {s.missing_labels} images without label, sizes {sizes or '-'}")
        if s.size_mismatches:
            out.append(f"    {len(s.size_mismatches)} label/image size mismatches (labels are resized to the "
                       f"image at load time): {s.size_mismatches[:5]}")
        labelled = s.class_pixels[:NUM_CLASSES].sum()
        if labelled:
            freq = class_frequencies(s)
            ign = s.class_pixels[NUM_CLASSES] / max(s.class_pixels.sum(), 1)
            out.append("    class pixels: " + ", ".join(f"{k} {v:.1%}" for k, v in freq.items())
                       + f"; ignore {ign:.1%}")
        for e in s.errors[:20]:
            out.append(f"    ERROR {e}")
        if len(s.errors) > 20:
            out.append(f"    … and {len(s.errors) - 20} more errors")
    out.append(f"fingerprint {rep.fingerprint}")
    out.append("OK" if rep.ok else f"FAILED: {sum(len(s.errors) for s in rep.splits)} bad files")
    return "\n".join(out)



def decode_check(samples, label_format: str, what: str, progress=None) -> list[str]:
    """Decode every image and label of ``samples`` fully (4 threads); → the errors, one per bad file."""
    errors = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for i, res in enumerate(pool.map(partial(_check_one, label_format=label_format, deep=True), samples)):
            if res[3]:
                errors.append(res[3])
            if progress:
                progress(i + 1, len(samples), what)
    return errors


def label_format(name: str) -> str:
    return {"gta5": "gta5", "synthia": "synthia"}.get(name, "labelids")
