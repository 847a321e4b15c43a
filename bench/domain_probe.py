"""How well a linear classifier tells source from target in a model's feature maps: a check of what an alignment
loss aligned. 50 % means the domains are indistinguishable to it; a method whose loss reaches a feature map
should lower its figure there, and the map the classifier reads is the one that matters.

Command line (MiniCity's source and target train by default):
``python -m bench.domain_probe NAME=STAGE_DIR [NAME=STAGE_DIR …] [--features layer4 decoder] [--images 48]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch


def feature_cells(model, dataset, features: Sequence[str], images: int, cells: int, rng, batch: int = 8) -> dict:
    """``cells`` random feature vectors [cells, D] per image from the first ``images`` items, for each map."""
    if len(dataset) < images:
        raise ValueError(f"the dataset has {len(dataset)} images; the probe asks for {images} (lower --images)")
    out: dict[str, list] = {k: [] for k in features}
    with torch.no_grad():
        for i in range(0, images, batch):
            x = torch.stack([dataset[j]["image"] for j in range(i, min(i + batch, images))])
            got = model(x).features
            for k in features:
                if k not in got:
                    raise ValueError(f"feature map {k!r}: the model gives {sorted(got)}")
                f = got[k].float()
                for one in f.permute(0, 2, 3, 1).reshape(f.shape[0], -1, f.shape[1]).numpy():
                    out[k].append(one[rng.choice(len(one), min(cells, len(one)), replace=False)])
    return {k: np.concatenate(v) for k, v in out.items()}


def domain_probe(model, source, target, features: Sequence[str] = ("layer4", "decoder"), images: int = 48,
                 cells: int = 50, folds: int = 3, seed: int = 0) -> dict[str, float]:
    """Cross-validated accuracy (%) of an L2-regularised logistic regression (C = 0.1, standardised features)
    separating source cells from target cells, per feature map. Same number of cells from each domain, so
    chance is 50 %. ``source``/``target``: datasets whose items hold a normalised ``image`` [3, H, W]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    was_training = model.training
    model.eval()
    try:
        rng = np.random.default_rng(seed)
        fs = feature_cells(model, source, features, images, cells, rng)
        ft = feature_cells(model, target, features, images, cells, rng)
    finally:
        model.train(was_training)
    result = {}
    for k in features:
        x = np.concatenate([fs[k], ft[k]])
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        y = np.r_[np.zeros(len(fs[k])), np.ones(len(ft[k]))]
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        result[k] = 100 * float(cross_val_score(LogisticRegression(C=0.1, max_iter=2000), x, y, cv=cv).mean())
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.domain_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="NAME=STAGE_DIR of a cached training stage (results/cache/<key>)")
    ap.add_argument("--features", nargs="+", default=["layer4", "decoder"], help="feature maps to probe")
    ap.add_argument("--images", type=int, default=48, help="images per domain (default 48)")
    ap.add_argument("--cells", type=int, default=50, help="random cells per image (default 50)")
    ap.add_argument("--source", default="datasets/minicity/gta5", help="GTA5-format source root")
    ap.add_argument("--target", default="datasets/minicity/cityscapes", help="Cityscapes-format target root")
    a = ap.parse_args(argv)
    from bench.data.datasets import build_dataset
    from bench.stage_exec import load_model

    source = build_dataset("gta5", a.source, normalize="imagenet")
    target = build_dataset("cityscapes", a.target, split="train", normalize="imagenet")
    print(f"{'model':16s}" + "".join(f"{k:>12s}" for k in a.features) + "   (linear domain-probe accuracy, %)")
    for spec in a.models:
        name, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"{spec!r}: expected NAME=STAGE_DIR")
        acc = domain_probe(load_model(path), source, target, a.features, a.images, a.cells)
        print(f"{name:16s}" + "".join(f"{acc[k]:12.1f}" for k in a.features), flush=True)


if __name__ == "__main__":
    main()
