"""Which classes a label stage's pseudo-labels cover: per class, the precision the stage reports and what it
does not, the recall (the share of the class's target pixels that got the right pseudo-label) and the label
share (pseudo-labelled pixels of the class / its ground-truth pixels). Diagnostics on the target train labels,
never fed back into a run.

A class with high precision but near-zero recall is one that self-training never shows on the target; its IoU
then drifts down stage after stage (CAG-UDA's car on MiniCity: anchor labels of recall 0 %).

    python -m bench.label_coverage STAGE_DIR [STAGE_DIR …] [--target datasets/minicity/cityscapes]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.labels import CLASS_NAMES
from bench.pseudo import LabelStats, label_path, read_trainid_label


def label_sets(stage_dir: Path) -> list[Path]:
    """The pseudo-label folders of a label stage (``labels``, ``labels_anchor``, ``labels_prob``, …)."""
    sets = sorted(p for p in Path(stage_dir).glob("labels*") if p.is_dir())
    if not sets:
        raise FileNotFoundError(f"{stage_dir}: no labels* folder; pass the cache folder of a label stage "
                                "(results/cache/<method>-label-<hash>)")
    return sets


def coverage(label_dir: Path, gt) -> pd.DataFrame:
    """Per-class coverage of the pseudo-labels in ``label_dir`` (file i = image i of ``gt``, the target train
    split with its labels, in the order the label stage read it), with an ``all`` row (pixel totals)."""
    n_files = len(list(Path(label_dir).glob("*.png")))
    if n_files != len(gt):
        raise ValueError(f"{label_dir}: {n_files} label files, but the target split has {len(gt)} images; pass the "
                         "--target root the label stage read")
    stats = LabelStats()
    for i in range(len(gt)):
        stats.update(read_trainid_label(label_path(label_dir, i)), gt.raw(i)[1])
    if stats.with_gt < len(gt):
        raise ValueError(f"{label_dir}: {len(gt) - stats.with_gt} label file(s) differ in size from their "
                         "ground truth; pass the --target root the label stage read")
    rows = pd.DataFrame({"gt pixels": stats.gt_pixels, "labelled": stats.scored, "correct": stats.correct},
                        index=list(CLASS_NAMES))
    rows.loc["all"] = rows.sum()
    rows["precision %"] = 100 * rows["correct"] / rows["labelled"].replace(0, np.nan)  # NaN, not 0: no label
    rows["recall %"] = 100 * rows["correct"] / rows["gt pixels"].replace(0, np.nan)
    rows["label share"] = rows["labelled"] / rows["gt pixels"].replace(0, np.nan)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.label_coverage", description=__doc__.split("\n\n")[0])
    ap.add_argument("stages", nargs="+", help="cache folder of a label stage (results/cache/<key>)")
    ap.add_argument("--target", default="datasets/minicity/cityscapes",
                    help="Cityscapes-format target root whose train split the stage labelled")
    a = ap.parse_args(argv)
    from bench.data.datasets import build_dataset

    gt = build_dataset("cityscapes", a.target, split="train")
    for stage in a.stages:
        for labels in label_sets(Path(stage)):
            table = coverage(labels, gt)
            print(f"\n{Path(stage).name}/{labels.name}: {int(table.loc['all', 'labelled'])} of "
                  f"{int(table.loc['all', 'gt pixels'])} labelled pixels (void GT excluded)")
            print(table[["precision %", "recall %", "label share"]].round(2).to_string(na_rep="–"))


if __name__ == "__main__":
    main()
