"""CAG-UDA's equation layer: each function against hand-worked values or a slow explicit loop."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.data.labels import CLASS_NAMES, IGNORE
from methods.base import SOURCES, make_config
from methods.cag_uda import equations as cag
from methods.cag_uda.config import TABLES

NAN = float("nan")


def _feat(values, d=1):
    """Feature map [1,d,1,P] from P pixel vectors (or P scalars for d=1)."""
    t = torch.tensor(values, dtype=torch.float32).reshape(-1, d)
    return t.T.reshape(1, d, 1, -1).contiguous()


def _slow_anchors(f, y, c):
    out = np.full((c, f.shape[1]), np.nan)
    for k in range(c):
        pix = [f[n, :, i, j] for n in range(f.shape[0]) for i in range(f.shape[2]) for j in range(f.shape[3])
               if y[n, i, j] == k]
        if pix:
            out[k] = np.mean(pix, axis=0)
    return out


def _random_case(seed, n=2, d=3, h=4, w=5, c=4, absent=(2,)):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d, h, w, generator=g)
    y = torch.randint(0, c, (n, h, w), generator=g)
    for k in absent:
        y[y == k] = 0
    y[torch.rand(n, h, w, generator=g) < 0.2] = IGNORE
    return f, y


# ------------------------------------------------------------------------------------------ grid, anchors
def test_labels_to_feature_grid_is_floor_index_nearest():
    y = torch.randint(0, 19, (2, 8, 12), generator=torch.Generator().manual_seed(0))
    y[0, 0, 0] = IGNORE
    out = cag.labels_to_feature_grid(y, (3, 5))
    rows = [math.floor(i * 8 / 3) for i in range(3)]  # 0, 2, 5
    cols = [math.floor(j * 12 / 5) for j in range(5)]  # 0, 2, 4, 7, 9
    assert torch.equal(out, y[:, rows][:, :, cols].long())
    assert out[0, 0, 0] == IGNORE
    assert torch.equal(cag.labels_to_feature_grid(y, (8, 12)), y.long())
    with pytest.raises(ValueError, match="labels"):
        cag.labels_to_feature_grid(y.float(), (3, 5))


def test_category_anchors_hand_case_pixel_weighted_with_absent_and_ignore():
    # image 0 (1×4): (1,2)→0, (3,4)→0, (5,6)→1, (100,100)→ignore; image 1 (1×4): (8,9)→0, rest ignore
    f0 = _feat([[1, 2], [3, 4], [5, 6], [100, 100]], d=2)
    f1 = _feat([[8, 9], [50, 50], [50, 50], [50, 50]], d=2)
    y = torch.tensor([[[0, 0, 1, IGNORE]], [[0, IGNORE, IGNORE, IGNORE]]])
    a = cag.category_anchors(torch.cat([f0, f1]), y, num_classes=3)
    # class 0: ((1+3+8)/3, (2+4+9)/3) = (4, 5) — pixel-weighted, not the mean of image means (2.5+... )
    # class 1: (5, 6); class 2: no pixel → NaN
    assert torch.allclose(a[:2], torch.tensor([[4.0, 5.0], [5.0, 6.0]]))
    assert torch.isnan(a[2]).all()
    assert torch.isnan(cag.category_anchors(f0, torch.full((1, 1, 4), IGNORE), 3)).all()  # all-ignore


def test_category_anchors_matches_slow_loop():
    f, y = _random_case(1)
    got = cag.category_anchors(f, y, num_classes=4).numpy()
    np.testing.assert_allclose(got, _slow_anchors(f.numpy(), y.numpy(), 4), rtol=1e-5, atol=1e-6)
    assert np.isnan(got[2]).all() and not np.isnan(got[[0, 1, 3]]).any()


def test_anchor_accumulator_equals_one_shot():
    f, y = _random_case(2, n=5, absent=(2,))
    y[:2][y[:2] == 3] = 0  # class 3 absent from the first batch
    acc = cag.AnchorAccumulator(num_classes=4)
    for sl in (slice(0, 2), slice(2, 3), slice(3, 5)):
        acc.update(f[sl], y[sl])
    np.testing.assert_allclose(acc.anchors().numpy(), cag.category_anchors(f, y, 4).numpy(), rtol=1e-6,
                               equal_nan=True)
    np.testing.assert_allclose(acc.anchors().numpy(), _slow_anchors(f.numpy(), y.numpy(), 4), rtol=1e-5,
                               atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="channels"):
        acc.update(torch.zeros(1, 2, 4, 5), y[:1])
    with pytest.raises(ValueError, match="no batch"):
        cag.AnchorAccumulator(4).anchors()


# ------------------------------------------------------------------------------------------ Eq. 5–7
def test_anchor_pseudo_labels_hand_case_1d():
    anchors = torch.tensor([[0.0], [4.0], [10.0]])
    x = [0.5, 0.75, 2.0, 4.25, 9.0, 7.0, -1.5]
    # distances to (0, 4, 10) and margin second − nearest:
    # 0.5: 0.5, 3.5, 9.5 → 3.0 > 2.5 → 0      0.75: 0.75, 3.25 → 2.5 exactly → 255 (strict)
    # 2.0: 2, 2 → 0 → 255                      4.25: 4.25, 0.25, 5.75 → 4.0 → 1
    # 9.0: 9, 5, 1 → 4 → 2                     7.0: 7, 3, 3 → 0 → 255        -1.5: 1.5, 5.5 → 4 → 0
    got = cag.anchor_pseudo_labels(_feat(x), anchors, 2.5)
    assert got.tolist() == [[[0, IGNORE, IGNORE, 1, 2, IGNORE, 0]]]
    inclusive = cag.anchor_pseudo_labels(_feat(x), anchors, 2.5, inclusive=True)  # the code's ≥
    assert inclusive.tolist() == [[[0, 0, IGNORE, 1, 2, IGNORE, 0]]]
    # Δd = 0: only exact ties stay unlabelled
    assert cag.anchor_pseudo_labels(_feat(x), anchors, 0.0).tolist() == [[[0, 0, IGNORE, 1, 2, IGNORE, 0]]]


def test_anchor_pseudo_labels_l2_in_2d():
    anchors = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    f = _feat([[0, 0], [1.5, 2], [3, 0], [3, 4]], d=2)
    # (0,0): d = 0, 5 → margin 5 → 0;  (1.5,2): 2.5, 2.5 → 0 → 255;  (3,0): 3, 4 → 1 → 255 at Δd 2.5, 0 at Δd 0.5
    # (3,4): 5, 0 → 5 → 1
    assert cag.anchor_pseudo_labels(f, anchors, 2.5).tolist() == [[[0, IGNORE, IGNORE, 1]]]
    assert cag.anchor_pseudo_labels(f, anchors, 0.5).tolist() == [[[0, IGNORE, 0, 1]]]


def test_anchor_pseudo_labels_nan_anchor_never_chosen_and_nan_feature():
    anchors = torch.tensor([[0.0], [NAN], [10.0]])
    # with anchor 1 absent: 0.75 → d 0.75, 9.25 → margin 8.5 → 0 (was 255 with an anchor at 4)
    # 4.25 → 4.25, 5.75 → 1.5 → 255;  9.0 → 9, 1 → 8 → 2;  NaN feature → 255
    got = cag.anchor_pseudo_labels(_feat([0.75, 4.25, 9.0, NAN]), anchors, 2.5)
    assert got.tolist() == [[[0, IGNORE, 2, IGNORE]]]
    with pytest.raises(ValueError, match="at least two"):
        cag.anchor_pseudo_labels(_feat([1.0]), torch.tensor([[0.0], [NAN]]), 2.5)


def test_anchor_pseudo_labels_match_slow_loop():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(2, 4, 5, 6, generator=g) * 3
    a = torch.randn(5, 4, generator=g) * 3
    got = cag.anchor_pseudo_labels(f, a, 1.0)
    d_all = cag.anchor_distances(f, a)
    for n in range(2):
        for i in range(5):
            for j in range(6):
                d = [float(np.linalg.norm(f[n, :, i, j].numpy() - a[c].numpy())) for c in range(5)]
                assert d_all[n, :, i, j].numpy() == pytest.approx(d, rel=1e-5)
                order = np.argsort(d)
                want = order[0] if d[order[1]] - d[order[0]] > 1.0 else IGNORE
                assert got[n, i, j].item() == want


def test_anchor_pseudo_labels_bad_input():
    with pytest.raises(ValueError, match="anchors"):
        cag.anchor_pseudo_labels(torch.zeros(1, 3, 2, 2), torch.zeros(4, 2), 2.5)
    with pytest.raises(ValueError, match="features"):
        cag.anchor_pseudo_labels(torch.zeros(3, 2, 2), torch.zeros(4, 3), 2.5)
    with pytest.raises(ValueError, match="delta_d"):
        cag.anchor_pseudo_labels(torch.zeros(1, 3, 2, 2), torch.zeros(4, 3), -1.0)


def test_probability_pseudo_labels_hand_and_numpy():
    p = torch.tensor([[0.75, 0.125, 0.125], [0.5, 0.25, 0.25], [0.01, 0.98, 0.01], [NAN, 0.5, 0.5]])
    probs = p.T.reshape(1, 3, 1, 4)
    # P0 = 0.5: 0.75 > 0.5 → 0; 0.5 is not > 0.5 → 255; 0.98 → 1; NaN pixel → 255
    assert cag.probability_pseudo_labels(probs, 0.5).tolist() == [[[0, IGNORE, 1, IGNORE]]]
    assert cag.probability_pseudo_labels(probs, 0.95).tolist() == [[[IGNORE, IGNORE, 1, IGNORE]]]
    g = torch.Generator().manual_seed(4)
    sm = torch.softmax(torch.randn(2, 5, 3, 4, generator=g) * 4, dim=1)
    arr = sm.numpy()
    want = np.where(arr.max(1) > 0.8, arr.argmax(1), IGNORE)
    assert np.array_equal(cag.probability_pseudo_labels(sm, 0.8).numpy(), want)
    with pytest.raises(ValueError, match="logits"):
        cag.probability_pseudo_labels(torch.randn(1, 3, 2, 2) * 5, 0.95)
    with pytest.raises(ValueError, match="p0"):
        cag.probability_pseudo_labels(sm, 1.0)
    with pytest.raises(ValueError, match="probs"):
        cag.probability_pseudo_labels(sm[0], 0.9)


# ------------------------------------------------------------------------------------------ losses
def test_anchor_distance_loss_hand_case_and_gradient():
    anchors = torch.tensor([[1.0, 1.0], [0.0, 2.0], [NAN, NAN]], requires_grad=True)
    f = _feat([[1, 2], [3, 3], [5, 5], [7, 7]], d=2).requires_grad_(True)
    y = torch.tensor([[[0, 1, IGNORE, 2]]])
    # (1,2)−(1,1) → 0² + 1² = 1;  (3,3)−(0,2) → 9 + 1 = 10;  ignore skipped;  class 2 has a NaN anchor → skipped
    loss = cag.anchor_distance_loss(f, y, anchors)
    assert loss.item() == pytest.approx(11 / 2)
    assert cag.anchor_distance_loss(f, y, anchors, reduction="sum").item() == pytest.approx(11.0)
    loss.backward()
    # d/df of the mean: 2·(f − a)/P with P = 2 → pixel 0: (0, 1); pixel 1: (3, 1); others 0
    assert f.grad[0, :, 0].T.tolist() == [[0.0, 1.0], [3.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    assert anchors.grad is None  # anchors are fixed within a stage
    empty = cag.anchor_distance_loss(f, torch.full((1, 1, 4), IGNORE), anchors)
    assert empty.item() == 0.0 and empty.requires_grad


def test_anchor_distance_loss_matches_slow_loop():
    f, y = _random_case(5)
    a = torch.randn(4, 3, generator=torch.Generator().manual_seed(6))
    terms = [float(((f[n, :, i, j] - a[y[n, i, j]]) ** 2).sum()) for n in range(2) for i in range(4) for j in range(5)
             if y[n, i, j] != IGNORE]
    assert cag.anchor_distance_loss(f, y, a).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_anchor_distance_loss_bad_labels():
    f = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"labels.*\[1, 3, 3\]"):
        cag.anchor_distance_loss(f, torch.zeros(1, 6, 6, dtype=torch.long), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="outside"):
        cag.anchor_distance_loss(f, torch.full((1, 3, 3), 7), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="integer"):
        cag.category_anchors(f, torch.zeros(1, 3, 3), 4)


def test_pseudo_label_ce_is_mean_over_active_pixels():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(1, 3, 2, 2, generator=g)
    pl = torch.tensor([[[0, IGNORE], [2, 2]]])
    logp = torch.log_softmax(logits, dim=1).numpy()
    want = -(logp[0, 0, 0, 0] + logp[0, 2, 1, 0] + logp[0, 2, 1, 1]) / 3
    assert cag.pseudo_label_ce(logits, pl).item() == pytest.approx(want, rel=1e-5)
    assert cag.pseudo_label_ce(logits, torch.full((1, 2, 2), IGNORE)).item() == 0.0


def test_cag_objective_eq12_weights_and_ablation():
    t = {k: torch.tensor(v) for k, v in zip(cag.TERMS, [1.0, 2.0, 3.0, 4.0, 5.0])}

    def total(terms, l1, l2):
        return sum(cag.cag_objective(terms, l1, l2).values()).item()

    # paper: 1 + 0.3·(2+3) + 0.7·(4+5) = 1 + 1.5 + 6.3 = 8.8;  code: 1 + 0.7·5 + 0.5·9 = 9.0
    assert total(t, 0.3, 0.7) == pytest.approx(8.8)
    assert total(t, 0.7, 0.5) == pytest.approx(9.0)
    weighted = cag.cag_objective(t, 0.3, 0.7)  # one weighted term per name, in TERMS order, for the trainer's log
    assert list(weighted) == list(cag.TERMS) and weighted["dis_t"].item() == pytest.approx(0.9)
    # Table 4 "+L^t_CE": 1 + 0.7·4 = 3.8
    assert total({"ce_s": t["ce_s"], "ce_t": t["ce_t"]}, 0.3, 0.7) == pytest.approx(3.8)
    with pytest.raises(ValueError, match="keys"):
        cag.cag_objective({"ce_s": t["ce_s"], "ce_x": t["ce_t"]}, 0.3, 0.7)
    with pytest.raises(ValueError, match="scalar"):
        cag.cag_objective({"ce_s": torch.ones(3)}, 0.3, 0.7)


# ------------------------------------------------------------------------------------------ code variant
def _code_case():
    """Two 4×4 images, D = 2. Image 0: 10 pixels class 0 (features (0.5, 1.5)), 6 pixels class 1 (< 10: dropped).
    Image 1: 12 pixels labelled 2 with features (100, 140), one of them predicted 0 (its feature (1000, 1000) must
    not count); 4 ignore pixels predicted 0."""
    f = torch.zeros(2, 2, 4, 4)
    y = torch.full((2, 4, 4), IGNORE)
    y[0].view(-1)[:10], y[0].view(-1)[10:] = 0, 1
    f[0, :, :, :].view(2, -1)[:, :10] = torch.tensor([[0.5], [1.5]])
    f[0, :, :, :].view(2, -1)[:, 10:] = 9.0
    y[1].view(-1)[:12] = 2
    f[1].view(2, -1)[:, :12] = torch.tensor([[100.0], [140.0]])
    f[1].view(2, -1)[:, 11] = 1000.0
    pred = y.clone()
    pred[1].view(-1)[11] = 0
    pred[1].view(-1)[12:] = 0
    return f, y, pred


def test_code_distance_loss_hand_case():
    f, y, pred = _code_case()
    anchors = torch.tensor([[0.0, 0.0], [9.0, 9.0], [0.0, 0.0]])
    # pair (0, 0): |diff| = 0.5, 1.5 → SmoothL1 0.5·0.5² = 0.125 and 1.5 − 0.5 = 1.0 → mean 0.5625 (≤ 5, kept)
    # pair (1, 2): 11 correct pixels, mean (100, 140) → 99.5, 139.5 → mean 119.5 → /10 = 11.95 → /10 = 1.195
    # total = (0.5625 + 1.195) / 2 · 10 = 8.7875
    assert cag.code_distance_loss(f, y, pred, anchors).item() == pytest.approx(8.7875, rel=1e-6)
    # clamp boundary: a single pair at exactly 50 → 5.0, not divided again (while > 5) → 5 / 1 · 10 = 50
    f2 = f.clone()
    f2[1].view(2, -1)[:, :11] = 50.5  # |50.5 − 0| − 0.5 = 50 in both dims
    y2 = y.clone()
    y2[0] = IGNORE
    assert cag.code_distance_loss(f2, y2, pred, anchors).item() == pytest.approx(50.0)
    # no qualifying pair → 0 (the code would divide 0 by 0)
    none = cag.code_distance_loss(f.requires_grad_(True), y, pred, anchors, min_pixels=13)
    assert none.item() == 0.0 and none.requires_grad


def test_code_distance_loss_gradient_rescale():
    f, y, pred = _code_case()
    anchors = torch.tensor([[0.0, 0.0], [9.0, 9.0], [0.0, 0.0]])
    for rescale, per_pixel in ((True, 2 / 16), (False, 1 / 10)):
        x = f.clone().requires_grad_(True)
        cag.code_distance_loss(x, y, pred, anchors, grad_rescale=rescale).backward()
        # d total / d L00 = 10/2 = 5; d SmoothL1 / d mean = (0.5/2, 1/2) = (0.25, 0.5) (quadratic, linear part);
        # d mean / d pixel = 2/(h·w) = 2/16 with the code's rescale, else 1/count = 1/10
        want = torch.tensor([5 * 0.25 * per_pixel, 5 * 0.5 * per_pixel])
        assert torch.allclose(x.grad[0].view(2, -1)[:, :10], want[:, None].expand(2, 10))
        assert (x.grad[0].view(2, -1)[:, 10:] == 0).all()  # class 1 had < 10 pixels
        assert (x.grad[1].view(2, -1)[:, 11:] == 0).all()  # mispredicted and ignore pixels


def test_code_distance_loss_skips_nan_anchor():
    f, y, pred = _code_case()
    anchors = torch.tensor([[0.0, 0.0], [9.0, 9.0], [NAN, NAN]])
    # only pair (0, 0) remains: 0.5625 / 1 · 10
    assert cag.code_distance_loss(f, y, pred, anchors).item() == pytest.approx(5.625)


def test_code_anchor_accumulator_image_weighted_running_mean_with_cap():
    acc = cag.CodeAnchorAccumulator(num_classes=3, min_pixels=2, cap=2)
    for v in (3.0, 6.0, 9.0, 0.0, 3.0):  # one 1×4 image per update: 3 pixels of class 0 with feature (v, 0)
        f = _feat([[v, 0], [v, 0], [v, 0], [50, 50]], d=2)
        y = torch.tensor([[[0, 0, 0, 1]]])  # class 1 has 1 pixel < min_pixels
        acc.update(f, y, y)
    # v1 = 3 (n=1); v2 = (3 + 6)/2 = 4.5 (n=2); v3 = (4.5·2 + 9)/3 = 6 (n capped at 2);
    # (0, 0) sums to 0 → skipped; v4 = (6·2 + 3)/3 = 5
    a = acc.anchors()
    assert a[0].tolist() == pytest.approx([5.0, 0.0])
    assert torch.isnan(a[1:]).all()
    # image-weighted, not pixel-weighted: means 1 (over 2 px) and 4 (over 6 px) → 2.5 (pixel-weighted: 3.25)
    acc = cag.CodeAnchorAccumulator(num_classes=2, min_pixels=2)
    acc.update(_feat([1, 1, 9, 9, 9, 9, 9, 9]), torch.tensor([[[0, 0, 1, 1, 1, 1, 1, 1]]]),
               torch.tensor([[[0, 0, 1, 1, 1, 1, 1, 1]]]))
    acc.update(_feat([4] * 6 + [9, 9]), torch.tensor([[[0] * 6 + [1, 1]]]), torch.tensor([[[0] * 6 + [1, 1]]]))
    assert acc.anchors()[0].item() == pytest.approx(2.5)


# ------------------------------------------------------------------------------------------ config, table 4
def test_config_fields_carry_sources_and_effective_variant():
    cfg = cag.Config()
    for f in dataclasses.fields(cfg):
        assert f.metadata.get("source") in SOURCES, f.name
    paper, code = cag.effective(cfg), cag.effective(cag.Config(variant="code"))
    assert (paper["lambda1"], paper["lambda2"], paper["lr"], paper["weight_decay"]) == (0.3, 0.7, 2.5e-4, 1e-4)
    assert (code["lambda1"], code["lambda2"], code["lr"], code["weight_decay"]) == (0.7, 0.5, 1e-4, 2e-4)
    assert (paper["crop"], code["crop"], paper["batch_size"], code["batch_size"]) == ((1280, 640), (896, 512), 1, 4)
    assert paper["distance_loss"] == "pixel_l2" and code["distance_loss"] == "class_mean_smoothl1"
    assert not paper["tie_inclusive"] and code["tie_inclusive"]
    assert (cfg.delta_d, cfg.p0, cfg.num_stages, cfg.warmup_adv_weight) == (2.5, 0.95, 3, 1e-2)
    for bad in ({"variant": "offical"}, {"terms": ("dis_s",)}, {"p0": 1.5}, {"dis_labels": "gt"}):
        with pytest.raises(ValueError):
            cag.Config(**bad)


def test_ablations_name_table4_rows_and_build_configs():
    frame = pd.read_csv(Path(__file__).resolve().parent.parent / "results/paper/cag_uda_t4_ablation.csv")
    assert list(frame.columns[:4]) == ["paper", "table", "row", "backbone"]
    assert list(frame.columns[4:23]) == list(CLASS_NAMES) and list(frame.columns[23:]) == ["mIoU", "gain"]
    t4 = TABLES["t4"]
    assert list(frame["row"]) == [t4.baseline[1]] + [label for label, _ in t4.rows.values()]  # printed order
    for _, overrides in t4.rows.values():
        make_config(cag.Config, dict(overrides))
    # printed mIoU = mean of the 19 printed IoUs (±0.15, rounding); gain = mIoU − source-only 34.1
    means = frame[list(CLASS_NAMES)].mean(axis=1)
    assert ((means - frame["mIoU"]).abs() <= 0.15).all()
    gains = frame["gain"].dropna()
    assert ((frame.loc[gains.index, "mIoU"] - 34.1 - gains).abs() < 0.051).all()
    assert frame.set_index("row").loc["CAG-UDA (Stage 1)", "mIoU"] == 47.2
