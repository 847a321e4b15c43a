"""The shift decomposition renders the target val scenes exactly as the generator writes them, switches only the
named effects off, and scores a model as the confusion-matrix definition of mIoU says."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data.labels import ID_TO_TRAINID, IGNORE, NUM_CLASSES
from bench.data.minicity import generate_minicity, relpaths
from bench.data.minicity_decompose import VARIANTS, VariantVal, decompose
from bench.data.minicity_style import STYLES, Look
from bench.data.transforms import normalize

SIZE = (64, 32)


def test_target_variant_is_the_written_val_set(tmp_path):
    generate_minicity(tmp_path, size=SIZE, counts={"gta5": 0, "synthia": 0, "cityscapes_train": 0,
                                                     "cityscapes_val": 3})
    data = VariantVal("target", n=3, size=SIZE)
    for i in range(3):
        img_path, lbl_path = (tmp_path / p for p in relpaths("cityscapes_val", i))
        assert torch.equal(data[i]["image"], normalize(np.asarray(Image.open(img_path).convert("RGB")), "imagenet"))
        written = ID_TO_TRAINID[np.asarray(Image.open(lbl_path))]  # Cityscapes ids → trainIds, as the loader
        assert (data[i]["label"].numpy() == written).all()


def test_each_variant_switches_only_its_effects():
    t = STYLES["cityscapes"]
    changed = {v: {f.name for f in dataclasses.fields(t) if getattr(VARIANTS[v](t), f.name) != getattr(t, f.name)}
               for v in VARIANTS}
    assert changed["target"] == set()
    assert changed["no_look"] == {"look"} and VARIANTS["no_look"](t).look == Look()
    assert changed["no_texture"] == {"texture"}
    assert changed["no_blur_noise"] == {"blur", "noise"}
    assert changed["no_photometric"] == {"p_shadow", "haze", "vignette", "gamma", "gain", "white_balance"}
    assert VARIANTS["source_look"](t) == STYLES["gta5"]
    # and a switched-off effect shows in the pixels, on the same scene
    a, b = VariantVal("target", 1, size=SIZE)[0], VariantVal("no_look", 1, size=SIZE)[0]
    assert torch.equal(a["label"], b["label"]) and not torch.allclose(a["image"], b["image"])


class _Constant(torch.nn.Module):
    """Predicts one class everywhere."""

    def __init__(self, cls: int):
        super().__init__()
        self.cls = cls

    def forward(self, x):
        out = torch.zeros(x.shape[0], NUM_CLASSES, *x.shape[-2:])
        out[:, self.cls] = 1.0
        return out


def test_decompose_scores_mean_iou_over_present_classes():
    table = decompose({"road": _Constant(0)}, n=4, variants=("target", "source_look"))
    assert set(table) == {"target", "source_look"}
    labels = np.stack([VariantVal("target", 4)[i]["label"].numpy() for i in range(4)])
    valid = labels[labels != IGNORE]
    present = len(np.unique(valid))  # every present class but road has IoU 0; absent classes are NaN
    expected = 100 * np.mean(valid == 0) / present
    assert table["target"]["road"] == pytest.approx(expected, rel=1e-6)
    assert table["source_look"]["road"] == pytest.approx(expected, rel=1e-6)  # same scenes, same labels
