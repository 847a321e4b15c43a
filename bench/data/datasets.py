"""``build_dataset``: one torch Dataset over any of the four benchmarks (and MiniCity, which uses their formats).

Items are dicts: ``image`` float32 ``[3,H,W]``, ``label`` int64 ``[H,W]`` (trainIds 0–18, 255 ignore; all
255 for unlabelled splits), ``name`` (root-relative image path). ``ds[i]`` is deterministic; ``ds[(i, s)]``
draws the random augmentation from per-item seed ``s`` — the trainer's sampler passes one per epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from bench.data import io, layouts
from bench.data.labels import ID_TO_TRAINID, IGNORE, SYNTHIA_TO_TRAINID, map_labels
from bench.data.transforms import Transform, resize_label

log = logging.getLogger(__name__)

DATASETS = {
    "gta5": layouts.list_gta5,
    "cityscapes": layouts.list_cityscapes,
    "synthia": layouts.list_synthia,
    "crosscity": layouts.list_crosscity,
}
_READERS = {
    "gta5": (io.read_gta5_label, ID_TO_TRAINID),
    "labelids": (io.read_labelids, ID_TO_TRAINID),
    "synthia": (io.read_synthia_label, SYNTHIA_TO_TRAINID),
}


class SegmentationDataset(Dataset):
    """Image/label pairs read through the dataset's own label decoder and mapped to trainIds."""

    def __init__(self, dataset: str, root: Path, listing: layouts.Listing, transform: Transform, seed: int = 0):
        self.dataset, self.root, self.transform, self.seed = dataset, Path(root), transform, int(seed)
        self.samples = listing.samples
        self.missing_labels = listing.missing_labels
        self._read_label, self._lut = _READERS[listing.label_format]
        self.size_mismatches = 0  # pairs whose label was resized to the image (counted in this process)
        if self.missing_labels:
            log.warning("%s at %s: %d images have no label file and are skipped; %d pairs used",
                        dataset, root, self.missing_labels, len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed RGB image and its trainId label (for figures)."""
        s = self.samples[index]
        image = io.read_image(s.image)
        if s.label is None:
            return image, np.full(image.shape[:2], IGNORE, dtype=np.uint8)
        return image, map_labels(self._read_label(s.label), self._lut)

    def __getitem__(self, key) -> dict:
        index, aug_seed = key if isinstance(key, tuple) else (key, None)
        s = self.samples[index]
        image = io.read_image(s.image)
        h, w = image.shape[:2]
        if s.label is None:
            label = np.full((h, w), IGNORE, dtype=np.uint8)
        else:
            label = map_labels(self._read_label(s.label), self._lut)
            if label.shape != (h, w):
                label = self._fix_size(s, label, (w, h))
        rng = np.random.default_rng([self.seed, index] + ([] if aug_seed is None else [int(aug_seed)]))
        x, y = self.transform(image, label, rng)
        return {"image": x, "label": y, "name": s.name}

    def _fix_size(self, s: layouts.Sample, label: np.ndarray, size) -> np.ndarray:
        if self.dataset not in ("gta5", "synthia"):
            raise io.DataError(
                f"{s.label}: label size {label.shape[1]}x{label.shape[0]} differs from image "
                f"{size[0]}x{size[1]} ({s.image}); the file is damaged — re-extract it"
            )
        # A few GTA5 pairs differ by some pixels: resize the label (nearest) to the image, report once.
        if self.size_mismatches == 0:
            log.warning("%s: label %s is %dx%d but image is %dx%d; label resized (nearest). Further "
                        "mismatches are counted silently; `bench data check` lists them all.",
                        self.dataset, s.name, label.shape[1], label.shape[0], *size)
        self.size_mismatches += 1
        return resize_label(label, size)

    def fingerprint(self) -> str:
        """Hash of the sorted root-relative paths and byte sizes of every file this dataset reads."""
        return fingerprint(self.root, [p for s in self.samples for p in (s.image, s.label) if p is not None])


def fingerprint(root: Path, paths) -> str:
    """sha256 over sorted ``relative/path<TAB>bytes<TAB>content hash`` lines: machine-independent, and an edit in
    place (same size) changes it, so cached stages that read the old bytes are not reused. Content hashes are
    remembered by path + size + mtime (:func:`content_hashes`): a file is read once, not on every run."""
    root = Path(root)
    paths = [Path(p) for p in paths]
    hashes = content_hashes(root, paths)
    lines = sorted(f"{p.relative_to(root)}\t{p.stat().st_size}\t{hashes[p]}" for p in paths)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def hash_cache_dir() -> Path:
    """Where content hashes (and the data checks done per fingerprint) are remembered: ``$BENCH_HASH_CACHE``,
    else ``$XDG_CACHE_HOME/uda-bench`` (``~/.cache/uda-bench``)."""
    env = os.environ.get("BENCH_HASH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uda-bench"


def content_hashes(root: Path, paths: list[Path]) -> dict[Path, str]:
    """{path: sha256 of its bytes (16 hex)}, read from a per-root record keyed by path, size and mtime_ns; only
    new or changed files are read (in parallel). The record is rewritten atomically; two runs racing on it only
    lose each other's additions."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.fsio import atomic_write_text, sha256_file

    record_path = hash_cache_dir() / "hashes" / (hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
                                                 + ".json")
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    out, todo = {}, []
    for p in paths:
        st = p.stat()
        rel = str(p.relative_to(root))
        entry = record.get(rel)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            out[p] = entry[2]
        else:
            todo.append((p, rel, st))
    if todo:
        with ThreadPoolExecutor(max_workers=4) as pool:  # hashlib releases the GIL on large buffers
            for (p, rel, st), h in zip(todo, pool.map(lambda t: sha256_file(t[0])[:16], todo)):
                out[p] = h
                record[rel] = [st.st_size, st.st_mtime_ns, h]
        try:
            atomic_write_text(record_path, json.dumps(record, separators=(",", ":")))
        except OSError:
            pass  # a read-only home: hashes are recomputed next time, the fingerprint is the same
    return out


def build_dataset(name: str, root, split: str | None = None, *, list_file=None, seed: int = 0,
                  labels: bool = True, city: str | None = None, holdout: dict | None = None,
                  **options) -> SegmentationDataset:
    """A torch Dataset over dataset ``name`` ∈ gta5, cityscapes, synthia, crosscity at ``root``.

    ``split``: gta5/synthia "all" (default; subset with ``list_file``), cityscapes "train"/"val",
    crosscity "train"/"test" with ``city``. ``labels=False`` reads images only (unlabelled target use).
    ``holdout={"fraction", "seed", "part": "rest"|"held"}`` keeps one side of a fixed split (:func:`holdout_split`).
    ``options`` are the Transform fields: resize=(w,h), interpolation, scale=(lo,hi), crop=(w,h), flip,
    normalize ∈ caffe | imagenet | unit. With no options items are at the files' native resolution.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; valid: {sorted(DATASETS)}")
    unknown = set(options) - set(Transform.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown dataset option(s) {sorted(unknown)}; valid: "
                        f"{sorted(Transform.__dataclass_fields__)} + list_file, seed, labels, city, holdout")
    defaults = {"gta5": "all", "synthia": "all", "cityscapes": "val", "crosscity": "test"}
    split = split or defaults[name]
    root = Path(root)
    if name == "crosscity":
        listing = layouts.list_crosscity(root, split, city=city)
    elif name == "cityscapes":
        listing = layouts.list_cityscapes(root, split, labels=labels)
    else:
        listing = DATASETS[name](root, split)
    if list_file is not None:
        listing = layouts.apply_list_file(listing, list_file, root)
    if holdout is not None:
        listing = layouts.Listing(holdout_split(listing.samples, **holdout), listing.missing_labels,
                                  listing.label_format)
    if not labels:
        listing = layouts.Listing([layouts.Sample(s.image, None, s.name) for s in listing.samples], 0,
                                  listing.label_format)
    return SegmentationDataset(name, root, listing, Transform(**_tuples(options)), seed=seed)


def holdout_split(samples: list, fraction: float, seed: int = 0, part: str = "rest") -> list:
    """A fixed split of ``samples`` for model selection without the test split (e.g. choosing a threshold on
    a held-out part of target train). A sample is held out when sha256("seed:name") falls below ``fraction``
    of the hash range: the split depends only on the names and the seed, not on the order or on the other
    files. ``part="held"`` keeps the held-out samples, ``"rest"`` the others."""
    if not 0 < fraction < 1 or part not in ("rest", "held"):
        raise ValueError(f"holdout: need 0 < fraction < 1 and part 'rest' or 'held', got fraction={fraction!r}, "
                         f"part={part!r}")

    def held(name: str) -> bool:
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        return int.from_bytes(digest[:8], "big") < fraction * 2**64

    out = [s for s in samples if held(s.name) == (part == "held")]
    if not out:
        raise ValueError(f"holdout fraction={fraction} part={part!r} leaves no sample out of {len(samples)}")
    return out


def _tuples(options: dict) -> dict:
    # YAML/CLI give lists; the frozen Transform wants hashable tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}

