"""Score every kept checkpoint of a train stage: when, during training, does a model gain or lose a class?

A train stage keeps only its last checkpoints. To keep every one, run it again into another results root with
``train.checkpoint_every=N train.keep_checkpoints=0``: neither setting enters the stage key, so the run ends in the
cached model, byte for byte. Then::

    python -m bench.checkpoint_curve STAGE_DIR --pairs road:car --classes road car

prints, per checkpoint, the mIoU, the IoU of each ``--classes`` class, and for each ``--pairs a:b`` the share of
class a's pixels predicted as b. It scores the held-out 20 % of target train that sweeps select on (``--split
holdout``, the default); ``--split val`` is for diagnosis only: never pick a checkpoint or a setting on it. The
sweeps score the held-out images through target train's training options, which flip about half of them (seeded
per image); this reads them as they are, so its figures differ from a sweep's by a few tenths.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SPLITS = ("holdout", "train", "val")


def confusion_share(cm: np.ndarray, gt: int, pred: int) -> float:
    """Per cent of the pixels of ground-truth class ``gt`` predicted as ``pred`` (rows = ground truth); NaN when
    ``gt`` has no pixel."""
    total = cm[gt].sum()
    return float(100 * cm[gt, pred] / total) if total else float("nan")


def model_spec(stage_dir: Path, spec_dir: Path | None = None) -> dict:
    """The stage's ``model.json`` (or ``spec_dir``'s: a finished stage that built the same model)."""
    path = Path(spec_dir or stage_dir) / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model.json. A stage writes it when it finishes; wait for it, or pass "
                                "--spec with a finished stage of the same model (e.g. the cached one)")
    return json.loads(path.read_text())


def curve(stage_dir, dataset, classes: list[int], pairs: list[tuple[int, int]], spec_dir=None,
          device: str = "cpu"):
    """One row per checkpoint of ``stage_dir`` (oldest first): mIoU, the ``classes``' IoU, the ``pairs``' shares."""
    import pandas as pd
    import torch

    from bench.checkpoint import list_checkpoints
    from bench.data.labels import CLASS_NAMES
    from bench.evaluate import evaluate
    from bench.metrics import iou_from_confusion, miou_from_confusion
    from bench.models import build_model

    stage_dir = Path(stage_dir)
    spec = model_spec(stage_dir, spec_dir)
    found = list_checkpoints(stage_dir)
    if not found:
        raise FileNotFoundError(f"{stage_dir}: no checkpoint. Rerun the stage into another results root with "
                                "train.checkpoint_every=N train.keep_checkpoints=0 to keep them all")
    model = build_model(spec["name"], **spec["options"]).to(device)  # one net; each checkpoint loads into it
    rows = []
    for it, path in found:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["modules"][spec["module"]])
        except Exception as e:  # noqa: BLE001 - any unreadable or foreign file: name it, keep the rows so far
            raise RuntimeError(f"{path}: not a checkpoint of this stage's {spec['name']!r} model "
                               f"({type(e).__name__}: {e}); move it aside and rerun") from e
        cm = evaluate(model, dataset, device=device, per_image=False)["confusion"]
        iou = 100 * iou_from_confusion(cm)
        row = {"iteration": it, "mIoU": float(100 * miou_from_confusion(cm))}
        row.update({CLASS_NAMES[c]: float(iou[c]) for c in classes})
        row.update({f"{CLASS_NAMES[a]}→{CLASS_NAMES[b]} %": confusion_share(cm, a, b) for a, b in pairs})
        rows.append(row)
    return pd.DataFrame(rows).set_index("iteration")


def _class(name: str) -> int:
    from bench.data.labels import CLASS_NAMES

    if name not in CLASS_NAMES:
        raise SystemExit(f"unknown class {name!r}; the classes are: {', '.join(CLASS_NAMES)}")
    return CLASS_NAMES.index(name)


def _dataset(split: str, root: str):
    from bench.data.datasets import build_dataset
    from bench.sweep import HOLDOUT

    if split == "holdout":
        return build_dataset("cityscapes", root, split="train", holdout=HOLDOUT, normalize="imagenet")
    return build_dataset("cityscapes", root, split=split, normalize="imagenet")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.checkpoint_curve", description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", help="a train stage's directory (results/cache/<key>) holding ckpt_*.pt files")
    ap.add_argument("--split", choices=SPLITS, default="holdout",
                    help="target split to score (default: the held-out 20 %% of target train)")
    ap.add_argument("--target", default="datasets/minicity/cityscapes", help="Cityscapes-format target root")
    ap.add_argument("--classes", nargs="*", default=[], help="classes whose IoU to print")
    ap.add_argument("--pairs", nargs="*", default=[], help="a:b = share of class a's pixels predicted as b")
    ap.add_argument("--spec", help="a finished stage of the same model, for its model.json")
    a = ap.parse_args(argv)
    pairs = []
    for p in a.pairs:
        gt, sep, pred = p.partition(":")
        if not sep:
            ap.error(f"{p!r}: expected a:b, e.g. road:car")
        pairs.append((_class(gt), _class(pred)))
    table = curve(a.stage, _dataset(a.split, a.target), [_class(c) for c in a.classes], pairs, a.spec)
    print(f"{a.stage}: target {a.split}, per checkpoint (IoU and shares in %)")
    print(table.round(1).to_string())


if __name__ == "__main__":
    main()
