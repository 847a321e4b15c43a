"""Pseudo-label files: written by a label stage, read back through the dataset's own transform; diagnostics."""

import numpy as np
import pytest
import torch
from fixtures import make_cityscapes

from bench.data import build_dataset
from bench.data.labels import IGNORE
from bench.models.output import SegOutput
from bench.pseudo import LabelStats, save_label, with_pseudo_labels, write_pseudo_labels
from bench.stage_exec import StageContext


def test_pseudo_labels_replace_labels_and_follow_the_transform(tmp_path):
    make_cityscapes(tmp_path / "cs", split="train", size=(32, 16))
    ds = build_dataset("cityscapes", tmp_path / "cs", "train", labels=False, resize=(16, 8), flip=True)
    for i in range(len(ds)):
        lab = np.full((16, 32), IGNORE, np.uint8)
        lab[:, :16] = i  # left half class i, right half unlabelled
        save_label(tmp_path / "pl", i, lab)
    pl = with_pseudo_labels(ds, tmp_path / "pl")
    for i in range(len(ds)):
        item = pl[(i, 3)]
        img_only = ds[(i, 3)]
        assert torch.equal(item["image"], img_only["image"])  # same images, same random flip
        flipped = item["label"][0, 0] == IGNORE
        left, right = (item["label"][:, 8:], item["label"][:, :8]) if flipped else (item["label"][:, :8],
                                                                                    item["label"][:, 8:])
        assert (left == i).all() and (right == IGNORE).all()
    assert (ds[0]["label"] == IGNORE).all()  # the original stays unlabelled
    with pytest.raises(ValueError, match="outside 0..18"):
        save_label(tmp_path / "pl", 0, np.full((4, 4), 19, np.uint8))


def test_label_stats_by_hand():
    s = LabelStats()
    pseudo = np.array([[0, 0, 1, IGNORE]], np.uint8)
    gt = np.array([[0, 1, 1, 1]], np.uint8)
    s.update(pseudo, gt)
    out = s.summary()
    # 3 of 4 pixels labelled; class 0: 1 of 2 right, class 1: 1 of 1; overall 2 of 3
    assert out["pl_ratio"] == 0.75 and out["pl_precision/road"] == 0.5 and out["pl_precision/sidewalk"] == 1.0
    assert abs(out["pl_precision"] - 2 / 3) < 1e-12


def test_label_stats_leave_void_ground_truth_out_of_precision():
    s = LabelStats()
    # 4 labelled pixels; 2 lie on void (an ego-vehicle hood the evaluation never scores)
    pseudo = np.array([[13, 13, 13, 0, IGNORE]], np.uint8)
    gt = np.array([[13, IGNORE, IGNORE, 1, 0]], np.uint8)
    s.update(pseudo, gt)
    out = s.summary()
    assert out["pl_ratio"] == 0.8 and out["pl_void"] == 0.5
    assert out["pl_precision/car"] == 1.0 and out["pl_precision/road"] == 0.0 and out["pl_precision"] == 0.5
    s.update(np.array([[5, 5]], np.uint8), np.array([[IGNORE, IGNORE]], np.uint8))
    assert "pl_precision/pole" not in s.summary()  # labelled only on void: no precision to report


def test_label_stats_report_no_precision_for_an_empty_label_set():
    # a δ that labels nothing (or only void) has no precision: 0 % would read as "all labels wrong"
    s = LabelStats()
    s.update(np.full((2, 3), IGNORE, np.uint8), np.zeros((2, 3), np.uint8))
    out = s.summary()
    assert out["pl_ratio"] == 0.0 and "pl_precision" not in out
    s.update(np.array([[7]], np.uint8), np.array([[IGNORE]], np.uint8))
    out = s.summary()
    assert "pl_precision" not in out and out["pl_void"] == 1.0


class Constant(torch.nn.Module):
    def forward(self, x):
        logits = torch.zeros(x.shape[0], 19, x.shape[2] // 2, x.shape[3] // 2)
        logits[:, 2] = 1.0
        return SegOutput(logits)


def test_write_pseudo_labels_at_native_size_with_ground_truth(tmp_path):
    make_cityscapes(tmp_path / "cs", split="train", size=(32, 16))
    specs = {"target_train": {"name": "cityscapes", "root": str(tmp_path / "cs"), "split": "train",
                              "options": {"resize": [16, 8], "flip": True}}}
    ctx = StageContext(tmp_path / "out", 0, specs, {})
    plain = ctx.dataset("target_train", plain=True, labels=False)
    assert not plain.transform.flip and all(s.label is None for s in plain.samples)
    gt = ctx.ground_truth("target_train")

    def rule(out, size):
        up = torch.nn.functional.interpolate(out.logits, size=size)
        return up.argmax(1)[0].numpy().astype(np.uint8)

    stats = write_pseudo_labels(Constant(), plain, tmp_path / "out", rule, "cpu", gt_dataset=gt)
    from PIL import Image

    saved = np.asarray(Image.open(tmp_path / "out" / "labels" / "000000.png"))
    assert saved.shape == (16, 32) and (saved == 2).all()  # the file's native size, not the resize
    # every pixel is labelled 2; precision = the share of the non-void pixels whose ground truth is 2
    assert stats["pl_ratio"] == 1.0
    total = sum(int((gt.raw(i)[1] == 2).sum()) for i in range(len(gt)))
    scored = sum(int((gt.raw(i)[1] != IGNORE).sum()) for i in range(len(gt)))
    assert 0 < scored < 16 * 32 * len(gt)  # the fixture has void pixels, so the two definitions differ
    assert stats["pl_precision"] == pytest.approx(total / scored)
    assert stats["pl_void"] == pytest.approx(1 - scored / (16 * 32 * len(gt)))
