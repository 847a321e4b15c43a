"""MiniCity: an embedded procedural street-scene benchmark written in the real dataset formats.

``generate_minicity(root)`` writes, under ``root`` (by default ``<repo>/datasets/minicity/``)::

    gta5/images/00001.png           RGB          gta5/labels/00001.png         palette PNG, index = label id
    synthia/RGB/0000000.png         RGB          synthia/GT/LABELS/0000000.png 16-bit 3-channel, class in R
    cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    cityscapes/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   8-bit label ids
    minicity.json                   manifest (written last)

so the embedded suite goes through exactly the loaders the real benchmark uses. Scenes come from
``minicity_scene`` (geometry, per-domain class frequencies), pixels from ``minicity_style`` (appearance).
Every image is seeded by (seed, domain, index) alone, so the output is byte-identical for a seed whatever
the process count. ``ensure_minicity`` regenerates only when the manifest or a file is missing or differs.
The synthetic sources draw their sky per image (``source_weather``, on since generator v4; ``False`` gives
v3's one blue source sky, the ``minicity_clear`` suite).
Command line: ``bench data minicity [--suite NAME] [--root DIR] [--seed N] [--force] [--no-source-weather]``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bench.data.labels import CLASS_NAMES, ID_PALETTE, IGNORE, NUM_CLASSES, SYNTHIA_TO_TRAINID, TRAINID_TO_ID
from bench.data.minicity_objects import PAINT, ROAD
from bench.data.minicity_scene import SPECS, Scene, make_scene
from bench.data.minicity_style import STYLES, Style, render, weather_sky

GENERATOR_VERSION = 4  # bump whenever the bytes written for a given seed change (4: source weather by default)
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "datasets" / "minicity"  # <repo>/datasets/minicity
DEFAULT_SIZE = (256, 128)
# 4,000 GTA5-format source images (1,000 until 2026-12-03): at the same mean, source-only's 5-seed std on held-out
# target train fell from 1.9 to 1.0 (bench/suites/minicity.yaml). Item i is the same bytes at any count.
DEFAULT_COUNTS = {"gta5": 4000, "synthia": 1000, "cityscapes_train": 500, "cityscapes_val": 200}
DOMAINS = tuple(DEFAULT_COUNTS)  # order fixes the seed code of each domain: never reorder
CITIES = {"train": ("aldmoor", "brenvik"), "val": ("corvasse", "dunholm")}
MANIFEST = "minicity.json"
_PARTIAL = ".minicity-partial"
_SUBDIRS = ("gta5", "synthia", "cityscapes")
_PNG_LEVEL = 3  # fixed compression level: part of what makes files byte-identical across runs

# trainId → SYNTHIA raw id (inverse of SYNTHIA_TO_TRAINID); terrain, truck, train get SYNTHIA's own ids
# 16/18/20, which the 16-class protocol maps to ignore.
TRAINID_TO_SYNTHIA = np.zeros(256, np.uint16)
for _raw in range(256):
    if SYNTHIA_TO_TRAINID[_raw] != IGNORE:
        TRAINID_TO_SYNTHIA[SYNTHIA_TO_TRAINID[_raw]] = _raw
TRAINID_TO_SYNTHIA[[9, 14, 16]] = [16, 18, 20]
_SYNTHIA_LANEMARKING, _SYNTHIA_PARKING = 22, 13
_THING_IDS = np.zeros(256, bool)
_THING_IDS[[11, 12, 13, 14, 15, 16, 17, 18]] = True


def _style_key(domain: str) -> str:
    return "cityscapes" if domain.startswith("cityscapes") else domain


SOURCES = ("gta5", "synthia")  # the synthetic domains ``source_weather`` applies to


def _rngs(seed: int, domain: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent scene and render generators for one image, from (seed, domain, index) only."""
    ss = np.random.SeedSequence([seed, DOMAINS.index(domain), index])
    a, b = ss.spawn(2)
    return np.random.default_rng(a), np.random.default_rng(b)


def _weather_rng(seed: int, domain: str, index: int) -> np.random.Generator:
    """A third child of the image's seed sequence (the first two are ``_rngs``'): drawing the weather from it
    leaves every other pixel of the image as it is without weather."""
    return np.random.default_rng(np.random.SeedSequence([seed, DOMAINS.index(domain), index]).spawn(3)[2])


def make_sample(domain: str, seed: int = 0, index: int = 0, size: tuple[int, int] = DEFAULT_SIZE,
                style: Style | None = None, source_weather: bool = True):
    """One (RGB uint8 ``[H,W,3]``, trainId uint8 ``[H,W]``, Scene) triple, in memory, as the writer makes it.

    ``domain`` is one of ``DOMAINS``; also useful for tests and quick experiments without touching disk.
    ``style`` renders the domain's scene in another style (``minicity_decompose``); default: the domain's own.
    ``source_weather``: a synthetic source draws its sky per image (``minicity_style.weather_sky``; ``False``:
    the one canonical blue); the target and every other pixel are the same either way.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown MiniCity domain {domain!r}; valid: {DOMAINS}")
    scene_rng, render_rng = _rngs(seed, domain, index)
    scene = make_scene(SPECS[_style_key(domain)], scene_rng, size)
    style = style or STYLES[_style_key(domain)]
    if source_weather and domain in SOURCES:
        style = replace(style, sky=weather_sky(_weather_rng(seed, domain, index)))
    return render(scene, style, render_rng), scene.label, scene


def relpaths(domain: str, index: int) -> tuple[str, str]:
    """(image, label) paths of item ``index`` of ``domain``, relative to the MiniCity root."""
    if domain == "gta5":
        name = f"{index + 1:05d}.png"  # GTA5 numbers from 00001
        return f"gta5/images/{name}", f"gta5/labels/{name}"
    if domain == "synthia":
        name = f"{index:07d}.png"
        return f"synthia/RGB/{name}", f"synthia/GT/LABELS/{name}"
    split = domain.split("_")[1]
    cities = CITIES[split]
    city = cities[index % len(cities)]
    stem = f"{city}_{index // len(cities):06d}_000019"
    return (f"cityscapes/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
            f"cityscapes/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png")


def _label_ids(scene: Scene) -> np.ndarray:
    """Cityscapes label ids: evaluated classes via the id table, ignore regions keep their void id."""
    ids = TRAINID_TO_ID[np.minimum(scene.label, NUM_CLASSES - 1)]
    return np.where(scene.label == IGNORE, scene.void, ids).astype(np.uint8)


def _save_png(im: Image.Image, path: Path) -> None:
    im.save(path, format="PNG", compress_level=_PNG_LEVEL)


def _write_label(domain: str, scene: Scene, path: Path, rng: np.random.Generator) -> None:
    h, w = scene.label.shape
    if domain == "gta5":
        im = Image.frombytes("P", (w, h), _label_ids(scene).tobytes())
        im.putpalette(ID_PALETTE.tobytes())
        _save_png(im, path)
    elif domain == "synthia":
        cls = TRAINID_TO_SYNTHIA[scene.label]
        cls[(scene.label == ROAD) & (scene.part == PAINT)] = _SYNTHIA_LANEMARKING  # its own class there
        cls[(scene.label == IGNORE) & (scene.void == 9)] = _SYNTHIA_PARKING
        # Instance ids start at a random offset so they often exceed 255: an 8-bit decode must go wrong.
        inst = np.where(_THING_IDS[scene.label], scene.inst.astype(np.uint16) + int(rng.integers(200, 1000)), 0)
        bgr = np.stack([np.zeros_like(cls), inst.astype(np.uint16), cls], axis=-1)  # cv2 writes BGR: R = class
        if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_PNG_COMPRESSION, _PNG_LEVEL]):
            raise OSError(f"{path}: cv2.imwrite failed")
    else:
        _save_png(Image.fromarray(_label_ids(scene)), path)


def _make_items(args) -> tuple[int, int, np.ndarray]:
    """Worker: write items [lo, hi) of one domain; return (files, bytes, pixel counts per trainId + ignore)."""
    root, domain, lo, hi, seed, size, weather = args
    nbytes, counts = 0, np.zeros(NUM_CLASSES + 1, np.int64)
    for i in range(lo, hi):
        image, label, scene = make_sample(domain, seed, i, size, source_weather=weather)
        img_path, lbl_path = (Path(root) / p for p in relpaths(domain, i))
        img_path.parent.mkdir(parents=True, exist_ok=True)
        lbl_path.parent.mkdir(parents=True, exist_ok=True)
        _save_png(Image.fromarray(image), img_path)
        _write_label(domain, scene, lbl_path, _rngs(seed, domain, i)[1])
        nbytes += img_path.stat().st_size + lbl_path.stat().st_size
        counts += np.bincount(np.minimum(label, NUM_CLASSES).ravel(), minlength=NUM_CLASSES + 1)
    return 2 * (hi - lo), nbytes, counts


def _norm_counts(counts: Mapping[str, int] | None) -> dict[str, int]:
    out = dict(DEFAULT_COUNTS)
    for k, v in (counts or {}).items():
        if k not in out:
            raise ValueError(f"unknown MiniCity domain {k!r} in counts; valid: {DOMAINS}")
        if int(v) < 0:
            raise ValueError(f"counts[{k!r}] = {v}: must be ≥ 0")
        out[k] = int(v)
    return out


def _config(seed: int, size, counts, source_weather: bool = True) -> dict:
    w, h = (int(v) for v in size)
    if w < 32 or h < 16:
        raise ValueError(f"MiniCity size {size} is too small; use at least (32, 16) as (width, height)")
    if not isinstance(source_weather, bool):
        raise ValueError(f"MiniCity source_weather = {source_weather!r}: must be true or false")
    return {"generator": "minicity", "version": GENERATOR_VERSION, "seed": int(seed), "size": [w, h],
            "counts": _norm_counts(counts), "source_weather": source_weather}


def generate_minicity(root: str | os.PathLike = DEFAULT_ROOT, seed: int = 0, size=DEFAULT_SIZE,
                      counts: Mapping[str, int] | None = None, processes: int | None = None,
                      source_weather: bool = True) -> dict:
    """(Re)write the whole MiniCity tree under ``root`` and its manifest; return statistics.

    ``size`` is (width, height); ``counts`` overrides any of ``DEFAULT_COUNTS``; ``source_weather``: the
    synthetic sources draw their sky per image (``make_sample``); ``processes`` defaults to
    min(2, CPUs); workers are spawned, so a script calling this needs an ``if __name__ == "__main__":``
    guard. Existing ``gta5/``, ``synthia/``, ``cityscapes/`` subtrees under a MiniCity ``root`` are
    replaced; a directory holding them without MiniCity's manifest is refused (FileExistsError).
    Returns ``files``, ``bytes``, ``seconds``, per-domain ``class_freq`` (fraction of pixels per class
    name, plus ``"ignore"``) and the manifest fields.
    """
    t0, root = time.perf_counter(), Path(root)
    cfg = _config(seed, size, counts, source_weather)
    ours = (root / MANIFEST).exists() or (root / _PARTIAL).exists()
    if not ours and any((root / sub).exists() for sub in _SUBDIRS):
        # Never delete what MiniCity did not write (e.g. a real dataset root passed by mistake).
        raise FileExistsError(f"{root}: holds gta5/, synthia/ or cityscapes/ but no {MANIFEST}, so it is not "
                              "(or no longer marked as) a MiniCity tree and will not be overwritten. Point "
                              "MiniCity at an empty directory, or delete this one if it is a stale MiniCity copy")
    root.mkdir(parents=True, exist_ok=True)
    (root / _PARTIAL).touch()  # marks the tree as ours while it is incomplete
    (root / MANIFEST).unlink(missing_ok=True)  # until the new one lands, the tree counts as incomplete
    for sub in _SUBDIRS:
        shutil.rmtree(root / sub, ignore_errors=True)
    chunk = 25
    tasks = [(str(root), d, lo, min(lo + chunk, n), cfg["seed"], tuple(cfg["size"]), source_weather)
             for d, n in cfg["counts"].items() for lo in range(0, n, chunk)]
    procs = max(1, min(processes or min(2, os.cpu_count() or 1), len(tasks) or 1))
    if processes is None and sum(cfg["counts"].values()) <= 200:
        procs = 1  # a tiny tree: a process pool costs more than it saves (and needs a __main__ guard)
    if procs == 1:
        results = [_make_items(t) for t in tasks]
    else:  # spawn: safe even when the caller has threads (torch, Ray) running
        with mp.get_context("spawn").Pool(procs) as pool:
            results = pool.map(_make_items, tasks, chunksize=1)
    files, nbytes, freq, k = 0, 0, {}, 0
    for d, n in cfg["counts"].items():
        c = np.zeros(NUM_CLASSES + 1, np.int64)
        for _ in range(0, n, chunk):
            f, b, cc = results[k]
            files, nbytes, c, k = files + f, nbytes + b, c + cc, k + 1
        total = max(int(c.sum()), 1)
        freq[d] = {name: round(float(c[i]) / total, 6) for i, name in enumerate(CLASS_NAMES)}
        freq[d]["ignore"] = round(float(c[NUM_CLASSES]) / total, 6)
    stats = {"files": files, "bytes": nbytes, "seconds": round(time.perf_counter() - t0, 2), "class_freq": freq}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({**cfg, "stats": stats}, indent=1, sort_keys=True))
    os.replace(tmp, root / MANIFEST)  # atomic: the manifest exists only for a complete tree
    (root / _PARTIAL).unlink(missing_ok=True)
    return {**cfg, **stats}


def _complete(root: Path, cfg: dict) -> dict | None:
    """The manifest if it matches ``cfg`` and every file it promises exists; otherwise None."""
    try:
        man = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if {k: v for k, v in man.items() if k != "stats"} != cfg:  # both ways: an extra key is another tree
        return None
    for d, n in cfg["counts"].items():
        if not all((root / p).is_file() for i in range(n) for p in relpaths(d, i)):
            return None
    return man


def ensure_minicity(root: str | os.PathLike = DEFAULT_ROOT, seed: int = 0, size=DEFAULT_SIZE,
                    counts: Mapping[str, int] | None = None, processes: int | None = None,
                    source_weather: bool = True, force: bool = False) -> dict:
    """Generate MiniCity under ``root`` unless a complete tree with the same manifest is already there
    (``force``: regenerate anyway).

    Returns the statistics (as ``generate_minicity``) with ``regenerated`` saying whether it wrote anything.
    Holds ``<root's parent>/.<root's name>.lock`` throughout: two processes (two runs, or a run and
    ``bench data minicity``) never write one tree at once; the second finds the first's tree complete.
    """
    from bench.fsio import file_lock

    root = Path(root)
    with file_lock(root.parent / f".{root.name}.lock"):
        man = None if force else _complete(root, _config(seed, size, counts, source_weather))
        if man is not None:
            stats = man.pop("stats", {})
            return {**man, **stats, "regenerated": False}
        return {**generate_minicity(root, seed, size, counts, processes, source_weather), "regenerated": True}
