"""Which part of MiniCity's domain shift costs a model what: re-render the target val scenes with one group of
the target's appearance effects switched off and score the model on each variant.

The scenes (layout, class frequencies, camera) stay the target's; only ``minicity_style.STYLES["cityscapes"]``
changes. ``source_look`` renders them in the source's style, so what is left of the gap there is the scene
shift alone (the default source's one blue sky: for a model trained on a ``source_weather`` tree it is one of its
skies, not all). A model trained on the source that gains much when ``look`` is switched off suffers from the
global colour transform; one trained on the target (the oracle) loses there instead.

Command line: ``python -m bench.data.minicity_decompose NAME=STAGE_DIR [NAME=STAGE_DIR …] [--images N]``.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.data.minicity import DEFAULT_SIZE, make_sample
from bench.data.minicity_style import STYLES, Look, Style
from bench.data.transforms import normalize

_TARGET = "cityscapes_val"


def _off(**fields):
    return lambda s: dataclasses.replace(s, **fields)


# variant → how the target style changes; each switches one group of effects off (defaults = the source's values)
VARIANTS = {
    "target": lambda s: s,
    "no_look": _off(look=Look()),  # the global colour transform (white balance, hue, saturation, tone curve)
    "no_texture": _off(texture=0.0),
    "no_blur_noise": _off(blur=(0.0, 0.0), noise=(0.0, 0.0)),
    "no_photometric": _off(p_shadow=0.0, haze=(0.0, 0.0), vignette=0.0, gamma=(1.0, 1.0),
                           gain=Style.gain, white_balance=Style.white_balance),  # per-image light and camera
    "source_look": lambda s: STYLES["gta5"],  # every appearance effect off: the scene shift alone
}


class VariantVal(Dataset):
    """The first ``n`` target val scenes of a MiniCity ``seed``, rendered in a variant of the target style; items
    as ``build_dataset`` gives them (``image`` normalised ``[3,H,W]``, ``label`` trainIds ``[H,W]``, ``name``)."""

    def __init__(self, variant: str, n: int = 200, seed: int = 0, size=DEFAULT_SIZE, norm: str = "imagenet"):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; valid: {list(VARIANTS)}")
        self.style = VARIANTS[variant](STYLES["cityscapes"])
        self.n, self.seed, self.size, self.norm = int(n), int(seed), tuple(size), norm

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        image, label, _ = make_sample(_TARGET, self.seed, i, self.size, style=self.style)
        return {"image": normalize(image, self.norm), "label": torch.from_numpy(label.astype(np.int64)),
                "name": f"{_TARGET}_{i:05d}"}


def decompose(models: dict, n: int = 200, seed: int = 0, variants=tuple(VARIANTS)) -> dict[str, dict[str, float]]:
    """mIoU (19 classes, protocol B, in %) of each model on each variant: ``{variant: {model name: mIoU}}``."""
    from bench.evaluate import evaluate

    out = {}
    for v in variants:
        data = VariantVal(v, n, seed)
        out[v] = {name: 100 * float(evaluate(m, data, per_image=False)["miou_19"]) for name, m in models.items()}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.data.minicity_decompose", description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="NAME=STAGE_DIR of a cached training stage (results/cache/<key>)")
    ap.add_argument("--images", type=int, default=200, help="target val scenes per variant (default 200, all)")
    ap.add_argument("--seed", type=int, default=0, help="the MiniCity seed the models were trained on")
    a = ap.parse_args(argv)
    from bench.stage_exec import load_model

    models = {}
    for spec in a.models:
        name, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"{spec!r}: expected NAME=STAGE_DIR")
        models[name] = load_model(path)
    table = decompose(models, a.images, a.seed)
    print(f"{'variant':16s}" + "".join(f"{m:>12s}" for m in models))
    for v, row in table.items():
        print(f"{v:16s}" + "".join(f"{row[m]:12.1f}" for m in models))


if __name__ == "__main__":
    main()
