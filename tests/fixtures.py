"""Tiny dataset trees written in the exact on-disk formats, with known contents (no real data needed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bench.data.labels import ID_PALETTE


def write_rgb(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), "RGB").save(path)


def write_palette_label(path: Path, ids: np.ndarray) -> None:
    """GTA5 style: 'P' mode PNG whose index is the Cityscapes label id, Cityscapes colours as palette."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), "P")
    im.putpalette(ID_PALETTE.ravel().tolist())
    im.save(path)


def write_l_label(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), "L").save(path)


def write_synthia_label(path: Path, cls: np.ndarray, inst: np.ndarray) -> None:
    """SYNTHIA style: 3-channel uint16 PNG, class in R, instance in G (cv2 writes BGR: R is index 2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.zeros(cls.shape + (3,), dtype=np.uint16)
    bgr[..., 2] = cls
    bgr[..., 1] = inst
    assert cv2.imwrite(str(path), bgr)


def random_ids(rng, shape, values) -> np.ndarray:
    return rng.choice(np.asarray(values), size=shape).astype(np.uint8)


def make_gta5(root: Path, n=3, size=(32, 16), seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    w, h = size
    ids = []
    for i in range(1, n + 1):
        lab = random_ids(rng, (h, w), np.arange(34))
        write_rgb(root / "images" / f"{i:05d}.png", rng.integers(0, 256, (h, w, 3)))
        write_palette_label(root / "labels" / f"{i:05d}.png", lab)
        ids.append(lab)
    return ids


def make_cityscapes(root: Path, split="val", cities=("frankfurt", "lindau"), per_city=2, size=(32, 16), seed=0):
    rng = np.random.default_rng(seed)
    w, h = size
    out = {}
    for city in cities:
        for k in range(per_city):
            stem = f"{city}_{k:06d}_000019"
            lab = random_ids(rng, (h, w), np.arange(34))
            write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rng.integers(0, 256, (h, w, 3)))
            write_l_label(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", lab)
            out[f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"] = lab
    return out


def make_synthia(root: Path, n=2, size=(32, 16), seed=0):
    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for i in range(n):
        cls = rng.integers(0, 23, (h, w)).astype(np.uint16)
        inst = rng.integers(0, 4000, (h, w)).astype(np.uint16)  # > 255: needs all 16 bits
        write_rgb(root / "RGB" / f"{i:07d}.png", rng.integers(0, 256, (h, w, 3)))
        write_synthia_label(root / "GT" / "LABELS" / f"{i:07d}.png", cls, inst)
        out.append(cls)
    return out


def make_crosscity(root: Path, city="Rome", n_train=2, n_test=2, size=(32, 16), seed=0):
    rng = np.random.default_rng(seed)
    w, h = size
    labels = {}
    for i in range(n_train):
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(
            _mk(root / city / "Images" / "Train" / f"pano_{i:05d}_0_0.jpg"))
    for i in range(n_test):
        name = f"pano_{i:05d}_1_180"
        write_rgb(root / city / "Images" / "Test" / f"{name}.png", rng.integers(0, 256, (h, w, 3)))
        lab = random_ids(rng, (h, w), [0, 7, 8, 11, 19, 20, 21, 23, 24, 25, 26, 28, 32, 33])
        write_l_label(root / city / "Labels" / "Test" / f"{name}_eval.png", lab)
        labels[name] = lab
    return labels


def _mk(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _tiny_pretrain(tmp: Path) -> dict:
    """The suite's generic-domain pretraining, 2 iterations on 4 tiny images (the real one takes minutes)."""
    return {"root": str(tmp / "weights"), "name": "generic",
            "recipe": {"iters": 2, "images": 4, "size": [64, 32], "batch_size": 2}}


def _replace_init(node, path: str) -> None:
    """Point every ``init_weights`` of the suite's methods (YAML anchors included) at ``path``."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "init_weights" and isinstance(v, str):
                node[k] = path
            else:
                _replace_init(v, path)


def tiny_minicity_suite(tmp: Path, counts: dict, **train) -> dict:
    """minicity.yaml pointed at a tiny MiniCity (64×32) generated under ``tmp/mc``, one seed, CPU, frequent
    checkpoints; ``counts`` are the generator's image counts, ``train`` updates the train section. Callers set
    the methods and write the YAML (:func:`write_suite`)."""
    import yaml

    from bench.suite_runner import SUITES_DIR

    suite = yaml.safe_load((SUITES_DIR / "minicity.yaml").read_text())
    root = tmp / "mc"
    suite["minicity"] = {"root": str(root), "seed": 0, "size": [64, 32], "counts": counts}
    pre = suite["minicity"]["pretrain"] = _tiny_pretrain(tmp)
    _replace_init(suite["methods"], f"{pre['root']}/{pre['name']}.pt")
    for domain, d in zip(["source", "target_train", "target_val"], ["gta5", "cityscapes", "cityscapes"]):
        suite["datasets"][domain]["root"] = str(root / d)
    suite["seeds"] = [0]
    suite["train"].update({"device": "cpu", "log_every": 0, "checkpoint_every": 3, "metrics_every": 2, **train})
    return suite


def write_suite(suite: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path
