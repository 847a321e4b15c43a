"""The evaluator against a hand-worked example and against cityscapesscripts' pixel-level evaluation."""

import math

import numpy as np
import pytest
import torch
from fixtures import write_l_label

from bench.data.labels import CLASS_NAMES, ID_TO_TRAINID, SUBSETS, TRAINID_TO_ID
from bench.metrics import ConfusionMatrix, EvaluationError, class_argmax, miou_13_of_16


def test_hand_worked_three_classes():
    gt = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    # rows = GT: gt0→{0,1}, gt1→{1,1}, gt2→{0}; the ignore pixel is dropped
    assert cm.numpy().tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 0.0])
    assert cm.miou() == pytest.approx(1 / 3)


def test_absent_class_is_nan_and_excluded():
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 1]]), np.array([[0, 1]]))
    iou = cm.iou()
    assert iou[:2].tolist() == [1.0, 1.0] and math.isnan(iou[2])
    assert cm.miou() == 1.0


def test_subset_ignores_gt_outside_and_counts_predictions_outside_as_miss():
    cm = ConfusionMatrix(19)
    gt = torch.tensor([0, 0, 9, 9, 2])      # 9 = terrain, not in the 16 classes
    pred = torch.tensor([0, 9, 0, 9, 2])    # road pixel predicted terrain; terrain pixel predicted road
    cm.update(pred, gt)
    iou16 = dict(zip(SUBSETS["16"], cm.iou("16")))
    # road: TP 1, FN 1 (predicted terrain, outside the subset), FP 0 (the terrain GT pixel is ignored)
    assert iou16[0] == pytest.approx(0.5)
    assert iou16[2] == 1.0
    iou19 = cm.iou("19")
    assert iou19[0] == pytest.approx(1 / 3)  # in 19 classes the terrain pixel predicted road is an FP


def test_13_from_16_differs_from_13_restricted():
    cm = ConfusionMatrix(19)
    gt = torch.tensor([3, 3, 0, 0])          # wall pixels predicted road
    pred = torch.tensor([0, 0, 0, 0])
    cm.update(pred, gt)
    s = cm.summary(("16", "13"))
    assert s["miou_13"] == 1.0                          # wall GT ignored in the 13-class matrix
    assert s["miou_13_of_16"] == pytest.approx(0.5)     # wall GT counts, road gets 2 FP
    assert miou_13_of_16(cm.iou("16")) == s["miou_13_of_16"]
    assert s["iou_16/road"] == pytest.approx(0.5)


@pytest.mark.parametrize("pred,label,msg", [
    (np.zeros((2, 3), np.int64), np.zeros((3, 2), np.int64), "shape"),
    (np.full((2, 2), 255, np.int64), np.zeros((2, 2), np.int64), "prediction value 255"),
    (np.full((2, 2), -1, np.int64), np.zeros((2, 2), np.int64), "prediction value -1"),
    (np.zeros((2, 2), np.float32), np.zeros((2, 2), np.int64), "integer"),
    (np.zeros((2, 2), np.int64), np.full((2, 2), 33, np.int64), "label value 33"),
])
def test_bad_predictions_raise(pred, label, msg):
    cm = ConfusionMatrix(19)
    with pytest.raises(EvaluationError, match=msg):
        cm.update(pred, label, name="x.png")
    assert cm.mat.sum() == 0


def test_batched_equals_per_image_and_counts_images():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 19, (4, 8, 8))
    gt = rng.choice(np.r_[np.arange(19), 255], (4, 8, 8))
    a, b = ConfusionMatrix(), ConfusionMatrix()
    a.update(pred, gt)
    for p, g in zip(pred, gt):
        b.update(p, g)
    assert np.array_equal(a.numpy(), b.numpy()) and a.images == b.images == 4
    # cross-check against a numpy bincount
    keep = gt != 255
    ref = np.bincount(19 * gt[keep] + pred[keep], minlength=361).reshape(19, 19)
    assert np.array_equal(a.numpy(), ref)


def test_agrees_with_cityscapesscripts(tmp_path):
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as csev

    rng = np.random.default_rng(3)
    gts, preds, cm = [], [], ConfusionMatrix(19)
    for i in range(4):
        gt_ids = rng.integers(0, 34, (24, 40)).astype(np.uint8)
        pred_train = rng.integers(0, 19, (24, 40))
        # make the prediction right more often than chance so IoUs are not all tiny
        gt_train = ID_TO_TRAINID[gt_ids]
        right = (rng.random(gt_ids.shape) < 0.5) & (gt_train != 255)
        pred_train[right] = gt_train[right]
        gp, pp = tmp_path / f"gt{i}_gtFine_labelIds.png", tmp_path / f"pred{i}.png"
        write_l_label(gp, gt_ids)
        write_l_label(pp, TRAINID_TO_ID[pred_train])
        gts.append(str(gp))
        preds.append(str(pp))
        cm.update(torch.from_numpy(pred_train), torch.from_numpy(gt_train.astype(np.int64)))
    args = csev.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    res = csev.evaluateImgLists(preds, gts, args)
    ref = {k: v for k, v in res["classScores"].items() if k in CLASS_NAMES}
    assert len(ref) == 19
    ours = cm.summary(("19",))
    for name, v in ref.items():
        assert ours[f"iou_19/{name}"] == pytest.approx(v, abs=1e-12), name
    assert ours["miou_19"] == pytest.approx(res["averageScoreClasses"], abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    rng = np.random.default_rng(1)
    pred, gt = rng.integers(0, 19, (2, 64, 64)), rng.integers(0, 19, (2, 64, 64))
    a, b = ConfusionMatrix(device="cpu"), ConfusionMatrix(device="cuda")
    a.update(pred, gt)
    b.update(torch.from_numpy(pred).cuda(), torch.from_numpy(gt).cuda())
    assert np.array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_class_argmax_is_numpys_argmax_on_ties_and_nan(dtype, channels_last):
    """The fast class map equals numpy's argmax over the class axis: the first maximum wins ties, and a NaN
    counts as the maximum (its first occurrence), whatever the dtype and memory layout."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (3, 19, 5, 7), generator=g).float()  # values 0-2: most pixels have tied classes
    x[0, :, 0, 0] = 2.0  # a pixel where every class ties
    x[1, 4, 2, 3], x[1, 9, 2, 3] = math.nan, math.nan
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = np.argmax(x.float().numpy(), axis=1)
    got = class_argmax(x)
    assert got.dtype == torch.int64 and got.shape == (3, 5, 7)
    np.testing.assert_array_equal(got.numpy(), want)
    assert got[0, 0, 0] == 0 and got[1, 2, 3] == 4
