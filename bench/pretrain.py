"""MiniCity's stand-in for an ImageNet backbone: the small net pretrained on the generic shapes domain.

``ensure_pretrained`` writes ``<root>/<name>.pt`` once (a backbone-only state dict, or backbone and head with
``keep: all_but_classifier``, loaded like any local init file) and reuses it afterwards; the recipe is stored
beside it and a file made by another recipe is rebuilt. It is independent of the suite's seeds: every seed and
method starts from the same file, as every real run starts from the same ImageNet weights. The stage keys of the
stages that load it hold its sha256.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from bench.data.generic_shapes import KINDS, VERSION, GenericShapes
from bench.fsio import file_lock, sha256_file
from bench.tracking import cpu_environment

RECIPE = {"generator": "generic_shapes", "version": VERSION, "model": "small", "iters": 1500, "batch_size": 8,
          "images": 2000, "size": [256, 128], "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "power": 0.9,
          "seed": 0, "normalize": "imagenet", "threads": 1}  # threads: float sums, so the bytes, depend on it
# Keys a recipe may add; absent means these values, so files made before they existed stay valid.
# keep: "backbone" writes stem..layer4; "all_but_classifier" also the context head and decoder (trained with
# ``head_norm``, which must then be the suite rows' own), so every seed starts from one head too, as
# DeepLab-v2's COCO init gives the ASPP layers; the classifiers (proxy classes) are never kept.
OPTIONAL = {"keep": "backbone", "head_norm": "bn"}
KEEP = {"backbone": ("stem", "layer1", "layer2", "layer3", "layer4"),
        "all_but_classifier": ("stem", "layer1", "layer2", "layer3", "layer4", "context", "low", "fuse")}


def check_recipe(recipe: dict) -> None:
    """``ValueError`` naming the key for an unknown key or a bad ``keep`` / ``head_norm``."""
    bad = sorted(set(recipe) - set(RECIPE) - set(OPTIONAL))
    if bad:
        raise ValueError(f"pretrain recipe: unknown key(s) {bad}; valid: {sorted(set(RECIPE) | set(OPTIONAL))}")
    if recipe.get("keep", "backbone") not in KEEP:
        raise ValueError(f"pretrain recipe: keep={recipe['keep']!r}; valid: {sorted(KEEP)}")
    if recipe.get("head_norm", "bn") not in ("bn", "gn"):
        raise ValueError(f"pretrain recipe: head_norm={recipe['head_norm']!r}; valid: 'bn', 'gn'")


def _train(recipe: dict, out_dir: Path) -> tuple[dict, dict]:
    from bench.models import build_model
    from bench.schedule import OptimizerSpec
    from bench.train import TrainConfig, Trainer, seed_everything
    from methods.source_only import supervised_losses

    threads = torch.get_num_threads()
    torch.set_num_threads(recipe["threads"])
    seed_everything(recipe["seed"])
    model = build_model(recipe["model"], num_classes=len(KINDS), head_norm=recipe.get("head_norm", "bn"))
    spec = OptimizerSpec("segmenter", kind="sgd", lr=recipe["lr"], momentum=recipe["momentum"],
                         weight_decay=recipe["weight_decay"], power=recipe["power"])
    data = GenericShapes(recipe["images"], recipe["seed"], tuple(recipe["size"]), recipe["normalize"])
    cfg = TrainConfig(max_iters=recipe["iters"], batch_sizes={"generic": recipe["batch_size"]},
                      seed=recipe["seed"], device="cpu", checkpoint_every=0, log_every=250, progress=False)
    fit = Trainer({"segmenter": model}, {"segmenter": spec}, supervised_losses(model, "generic", 0.0),
                  {"generic": data}, cfg, out_dir=out_dir).fit()
    torch.set_num_threads(threads)
    prefixes = tuple(f"{n}." for n in KEEP[recipe.get("keep", "backbone")])
    state = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    return state, {k: round(float(v), 4) for k, v in fit["metrics"].items()}


def ensure_pretrained(root: str | os.PathLike, name: str = "generic_small", recipe: dict | None = None) -> dict:
    """Return ``{"path", "recipe", "regenerated", "seconds"}``; trains when the file or its recipe differ.

    ``recipe`` is ``RECIPE`` with any ``OPTIONAL`` keys; a ``ValueError`` names an unknown key or value."""
    recipe = dict(RECIPE if recipe is None else recipe)
    check_recipe(recipe)
    # Optional keys at their defaults are dropped, so such a recipe equals (and reuses) the file made without them.
    recipe = {k: v for k, v in recipe.items() if not (k in OPTIONAL and v == OPTIONAL[k])}
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # one writer per file: a second process (two runs starting together) waits, then finds the file made
    with file_lock(root / f".{name}.lock"):
        return _ensure(root, name, recipe)


def _ensure(root: Path, name: str, recipe: dict) -> dict:
    path, meta = root / f"{name}.pt", root / f"{name}.json"
    if path.is_file() and meta.is_file():
        try:
            if json.loads(meta.read_text()).get("recipe") == recipe:
                return {"path": path, "recipe": recipe, "regenerated": False, "seconds": 0.0}
        except json.JSONDecodeError:
            pass  # a damaged record: rebuild
    print(f"{path}: pretraining the {recipe['model']} net on the generic shapes domain "
          f"({recipe['iters']} iterations, once for every seed and method)", flush=True)
    t0 = time.perf_counter()
    work = root / f".{name}.work"
    state, metrics = _train(recipe, work)
    tmp = root / f".{name}.{os.getpid()}.pt"
    torch.save(state, tmp)
    os.replace(tmp, path)
    seconds = time.perf_counter() - t0
    # The file's hash and the CPU it was made on: the same recipe on a CPU of another kind gives other bytes
    # (oneDNN's kernels), so two machines' files, and every key that holds them, can be told apart.
    meta.write_text(json.dumps({"recipe": recipe, "seconds": round(seconds, 1), "final_metrics": metrics,
                                "sha256": sha256_file(path), "made_on": cpu_environment()}, indent=1))
    return {"path": path, "recipe": recipe, "regenerated": True, "seconds": seconds}
