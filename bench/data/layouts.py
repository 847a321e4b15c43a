"""Where each dataset keeps its files, exactly as distributed (reference/datasets.md §1).

Each ``list_*`` returns the image/label pairs of a split plus a count of images whose label is missing.
A wrong layout raises one DataError naming the path that was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.data.io import DataError

CROSSCITY_CITIES = ("Rome", "Rio", "Tokyo", "Taipei")
_HELP = "see datasets/README.md for where to get it and how to place it, or pass its root on the command line"


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path | None
    name: str  # image path relative to the dataset root: unique, stable across machines


@dataclass
class Listing:
    samples: list[Sample]
    missing_labels: int = 0
    label_format: str = "labelids"  # "gta5" | "labelids" | "synthia"


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: directory not found; expected {what} there ({_HELP})")
    return path


def _need_root(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found ({_HELP})")
    return root


def _paired(root: Path, img_dir: Path, lbl_dir: Path, pattern: str, fmt: str) -> Listing:
    """Pairs with the same file name in two folders; images with no label are dropped and counted."""
    images = sorted(img_dir.glob(pattern))
    if not images:
        raise DataError(f"{img_dir}: no {pattern} images found ({_HELP})")
    labels = {p.name for p in lbl_dir.glob(pattern)}
    samples = [Sample(p, lbl_dir / p.name, str(p.relative_to(root))) for p in images if p.name in labels]
    if not samples:
        raise DataError(f"{lbl_dir}: no label file matches an image in {img_dir} (same file names expected)")
    return Listing(samples, len(images) - len(samples), fmt)


def list_gta5(root, split: str = "all") -> Listing:
    """``images/00001.png`` + ``labels/00001.png`` (palette PNG of label ids)."""
    root = _need_root(root)
    if split != "all":
        raise DataError(f"GTA5 split {split!r}: use split='all' and a list_file for official subsets")
    img = _need_dir(root / "images", "GTA5 images (images/00001.png …)")
    lbl = _need_dir(root / "labels", "GTA5 labels (labels/00001.png …, palette PNGs)")
    return _paired(root, img, lbl, "*.png", "gta5")


def list_synthia(root, split: str = "all") -> Listing:
    """``RGB/0000000.png`` + ``GT/LABELS/0000000.png`` (16-bit, class in R)."""
    root = _need_root(root)
    if split != "all":
        raise DataError(f"SYNTHIA split {split!r}: use split='all' and a list_file for subsets")
    img = _need_dir(root / "RGB", "SYNTHIA-RAND-CITYSCAPES images (RGB/0000000.png …)")
    lbl = _need_dir(root / "GT" / "LABELS", "SYNTHIA 16-bit labels (GT/LABELS/0000000.png …)")
    return _paired(root, img, lbl, "*.png", "synthia")


def list_cityscapes(root, split: str = "val", labels: bool = True) -> Listing:
    """``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` + ``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``."""
    root = _need_root(root)
    if split not in ("train", "val"):
        raise DataError(
            f"Cityscapes split {split!r}: use 'train' or 'val' (the public test labels are placeholders)"
        )
    img_dir = _need_dir(root / "leftImg8bit" / split, f"Cityscapes leftImg8bit/{split}/<city>/*_leftImg8bit.png")
    images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise DataError(f"{img_dir}: no <city>/*_leftImg8bit.png images found ({_HELP})")
    if not labels:
        return Listing([Sample(p, None, str(p.relative_to(root))) for p in images], 0)
    gt_dir = _need_dir(root / "gtFine" / split, f"Cityscapes gtFine/{split}/<city>/*_gtFine_labelIds.png")
    samples, missing = [], []
    for p in images:
        lbl = gt_dir / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        (samples.append(Sample(p, lbl, str(p.relative_to(root)))) if lbl.is_file() else missing.append(lbl))
    if missing:
        raise DataError(
            f"{missing[0]}: label missing ({len(missing)} of {len(images)} {split} images have no "
            "*_gtFine_labelIds.png); extract gtFine_trainvaltest.zip into the same root"
        )
    return Listing(samples, 0)


def list_crosscity(root, split: str = "test", city: str | None = None) -> Listing:
    """``<City>/Images/{Train,Test}/<name>.{jpg,png}``; test labels ``<City>/Labels/Test/<name>_eval.png``."""
    root = _need_root(root)
    if city not in CROSSCITY_CITIES:
        raise DataError(f"Cross-City needs city= one of {CROSSCITY_CITIES} (got {city!r})")
    if split not in ("train", "test"):
        raise DataError(f"Cross-City split {split!r}: use 'train' (unlabelled) or 'test' (labelled)")
    img_dir = _need_dir(root / city / "Images" / split.capitalize(), f"NTHU {city} images")
    images = sorted([*img_dir.glob("*.jpg"), *img_dir.glob("*.png")])
    if not images:
        raise DataError(f"{img_dir}: no .jpg/.png images found ({_HELP})")
    if split == "train":
        return Listing([Sample(p, None, str(p.relative_to(root))) for p in images], 0)
    lbl_dir = _need_dir(root / city / "Labels" / "Test", f"NTHU {city} test labels (<name>_eval.png)")
    samples = []
    for p in images:
        lbl = lbl_dir / f"{p.stem}_eval.png"
        if not lbl.is_file():
            raise DataError(f"{lbl}: label missing for test image {p.name}")
        samples.append(Sample(p, lbl, str(p.relative_to(root))))
    return Listing(samples, 0)


def apply_list_file(listing: Listing, list_file, root: Path) -> Listing:
    """Keep the samples named in a split list (one name per line: file name or root-relative path)."""
    wanted = [ln.strip() for ln in Path(list_file).read_text().splitlines() if ln.strip()]
    by_key = {}
    for s in listing.samples:
        by_key[s.name] = s
        by_key.setdefault(s.image.name, s)
        by_key.setdefault(str(s.image.relative_to(s.image.parents[1])), s)  # <city>/<file> form
    absent = [w for w in wanted if w not in by_key]
    if absent:
        raise DataError(
            f"{list_file}: {len(absent)} of {len(wanted)} listed names are not in {root} (first: {absent[:3]})"
        )
    return Listing([by_key[w] for w in wanted], listing.missing_labels, listing.label_format)
