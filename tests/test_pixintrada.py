"""PixIntraDA equations (methods/pixintrada/equations.py): hand-worked tiny cases, numpy/explicit-loop cross-checks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from bench.paper_rows import load_extra_table
from methods.base import provenance
from methods.pixintrada import equations as px

LN2, LN3 = math.log(2), math.log(3)


def _pix(rows, h, w, dtype=torch.float32):
    """``rows``: one probability vector per pixel, row-major over an [h, w] image → probs [1, C, h, w]."""
    return torch.tensor(rows, dtype=dtype).T.reshape(1, -1, h, w)


# ------------------------------------------------------------------------------------------ Config
def test_config_every_field_has_an_allowed_source_and_inferred_ones_a_note():
    cfg = px.Config()
    ledger = provenance(cfg)
    assert set(ledger) == {f.name for f in dataclasses.fields(cfg)}
    for name, (_, source, note) in ledger.items():
        assert source in ("paper", "inferred", "harness"), name  # no public code: never "code"
        if source == "inferred":
            assert note, name
    assert (cfg.lr, cfg.batch_size, cfg.threshold_cap, cfg.variant, cfg.rounds) == (2.4e-4, 4, 0.9, "cts", 2)
    assert (cfg.inter_adv_main, cfg.inter_adv_aux, cfg.inter_aux_weight, cfg.d_lr) == (0.001, 0.0002, 0.1, 1e-4)


def test_resolve_alpha():
    assert px.resolve_alpha(None, "gta5") == 0.85 and px.resolve_alpha(None, "synthia") == 0.79
    assert px.resolve_alpha(0.7, "gta5") == 0.7
    with pytest.raises(ValueError, match="source"):
        px.resolve_alpha(None, "minicity_x")


def test_transcribed_ablation_tables_agree_with_each_other():
    t = {k: load_extra_table("pixintrada", k).set_index("row") for k in range(3, 9)}
    # Table 4/6 gains are mIoU − INTER (45.2); Table 4's PLA rows are Table 3's; Table 5 at α = 0.85 is Table 4
    for k in (4, 6):
        gains = (t[k]["mIoU"] - 45.2).round(1).iloc[1:]
        assert gains.tolist() == t[k]["mIoU gain"].iloc[1:].tolist()
    t3_rows = t[3].loc[["INTER", "+PLA", "+CTS"], "mIoU"].tolist()
    assert t3_rows == t[4].loc[["INTER", "PLA", "PLA + CTS"], "mIoU"].tolist()
    at85 = t[5][t[5]["alpha"] == 0.85]
    assert at85["mIoU"].tolist() == t[4].loc[["IntraDA", "PLA", "PLA + CTS"], "mIoU"].tolist()
    at79 = t[8][t[8]["alpha"] == 0.79]
    assert at79["mIoU"].tolist() == t[7].loc[["+ PLA", "+ CTS"], "mIoU"].tolist()
    assert t[3]["mIoU"].is_monotonic_increasing and t[7]["mIoU"].is_monotonic_increasing


# ------------------------------------------------------------------------------------------ t_k
def test_class_thresholds_hand_worked_odd_even_unpredicted_and_ties():
    # class 0 predicted with confidences 0.5, 0.7, 0.6 (odd: sorted 0.5 0.6 0.7 → 0.6) and once on a tie
    # [0.4, 0.4, 0.2] (first index wins → class 0, conf 0.4): 0.4 0.5 0.6 0.7 → even → (0.5 + 0.6)/2 = 0.55.
    # class 1 predicted with 0.5, 0.8 (even: (0.5 + 0.8)/2 = 0.65); class 2 never predicted → 0.
    rows = [[0.5, 0.3, 0.2], [0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.3, 0.5, 0.2], [0.1, 0.8, 0.1], [0.4, 0.4, 0.2]]
    t = px.class_thresholds(_pix(rows, 2, 3))
    assert t.shape == (3,) and t.dtype == torch.float32
    torch.testing.assert_close(t, torch.tensor([0.55, 0.65, 0.0]), rtol=0, atol=1e-7)
    t_odd = px.class_thresholds(_pix(rows[:5], 1, 5))  # without the tie pixel: class 0 has 3 values → 0.6
    torch.testing.assert_close(t_odd, torch.tensor([0.6, 0.65, 0.0]), rtol=0, atol=1e-7)


def test_class_thresholds_cap_and_empty_set():
    # class 0: 0.95, 0.99 → median 0.97 → capped at 0.9 (or 0.8 with cap=0.8); class 1: 0.7 stays
    probs = _pix([[0.95, 0.05], [0.99, 0.01], [0.3, 0.7]], 1, 3, torch.float64)
    assert px.class_thresholds(probs).tolist() == [0.9, 0.7]
    assert px.class_thresholds(probs, cap=0.8).tolist() == [0.8, 0.7]
    assert px.class_thresholds(torch.zeros(0, 4, 2, 2)).tolist() == [0.0] * 4


def test_class_thresholds_match_numpy_median_on_random_data():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(3, 6, 7, 9, generator=g, dtype=torch.float64), 1)
    probs[:, 5] = 0  # class 5 never predicted
    conf, pred = probs.max(1).values.numpy().ravel(), probs.argmax(1).numpy().ravel()
    want = [min(np.median(conf[pred == k]), 0.9) if (pred == k).any() else 0.0 for k in range(6)]
    np.testing.assert_allclose(px.class_thresholds(probs).numpy(), want, rtol=0, atol=1e-15)


def test_streaming_thresholds_within_half_a_bin_of_numpy_median():
    bins = 1000
    g = torch.Generator().manual_seed(1)
    batches = [torch.softmax(2 * torch.randn(2, 5, 6, 8, generator=g), 1) for _ in range(3)]
    acc = px.ThresholdAccumulator(num_classes=5, bins=bins, cap=1.0)
    for b in batches:
        acc.update(b)
    probs = torch.cat(batches).double()
    conf, pred = probs.max(1).values.numpy().ravel(), probs.argmax(1).numpy().ravel()
    for k in range(5):
        want = np.median(conf[pred == k]) if (pred == k).any() else 0.0
        assert abs(acc.thresholds()[k].item() - want) <= 0.5 / bins + 1e-12, k
    capped = px.ThresholdAccumulator(num_classes=5, bins=bins, cap=0.9)
    for b in batches:
        capped.update(b)
    assert torch.all(capped.thresholds() <= 0.9)
    assert torch.all((capped.thresholds() - px.class_thresholds(probs)).abs() <= 0.5 / bins + 1e-12)


def test_streaming_thresholds_exact_on_bin_centres_and_merge():
    bins, c = 50, 4
    centres = (np.arange(bins) + 0.5) / bins
    rng = np.random.default_rng(2)
    idx = rng.integers(0, bins, size=(2, 5, 7))
    cls = rng.integers(0, c - 1, size=(2, 5, 7))  # the last class is never predicted
    probs = torch.zeros(2, c, 5, 7, dtype=torch.float64)
    probs.scatter_(1, torch.from_numpy(cls)[:, None], torch.from_numpy(centres[idx])[:, None])
    a, b = px.ThresholdAccumulator(c, bins, cap=1.0), px.ThresholdAccumulator(c, bins, cap=1.0)
    a.update(probs[:1])
    b.update(probs[1:])
    a.merge(b)
    conf, pred = centres[idx].ravel(), cls.ravel()
    want = [np.median(conf[pred == k]) if (pred == k).any() else 0.0 for k in range(c)]
    assert a.thresholds().tolist() == want  # exact equality
    with pytest.raises(ValueError, match="bins"):
        a.merge(px.ThresholdAccumulator(c, bins + 1))


def test_streaming_confidence_one_lands_in_last_bin():
    acc = px.ThresholdAccumulator(num_classes=2, bins=10, cap=1.0)
    acc.update(_pix([[1.0, 0.0]], 1, 1))
    assert acc.thresholds().tolist() == [0.95, 0.0]  # bin [0.9, 1.0], centre 0.95


# ------------------------------------------------------------------------------------------ split, Prop., Z
# t = [0.875, 0.75, 0.625], α = 0.5 → α·t = [0.4375, 0.375, 0.3125] (all dyadic: exact in float32/64).
T = [0.875, 0.75, 0.625]
ROWS = [
    [0.4375, 0.25, 0.3125],    # (0,0): p0 = α·t0 and p2 = α·t2 exactly, p1 below → hard (≤ is hard) → 255
    [0.46875, 0.0, 0.53125],   # (0,1): classes 0 and 2 pass; argmax over them → 2
    [0.4375, 0.1875, 0.375],   # (1,0): argmax 0 sits exactly at its bound (fails); 2 passes → 2
    [0.125, 0.75, 0.125],      # (1,1): only class 1 passes → 1
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_split_hand_made_2x2(dtype):
    hard, pseudo = px.split_easy_hard(_pix(ROWS, 2, 2, dtype), torch.tensor(T), 0.5)
    assert hard.dtype == torch.bool and pseudo.dtype == torch.int64 and hard.shape == pseudo.shape == (1, 2, 2)
    assert hard.tolist() == [[[True, False], [False, False]]]
    assert pseudo.tolist() == [[[255, 2], [2, 1]]]


def test_split_bound_rounded_to_probs_dtype():
    # t from float32 0.9, α = 1: a float32 probability 0.9 equals the bound → hard
    probs = _pix([[0.9, 0.1]], 1, 1)
    hard, _ = px.split_easy_hard(probs, torch.tensor([0.9, 0.9]), 1.0)
    assert hard.item()
    # float64 probs are compared in float64: 0.4 + 1e-12 passes α·t = 0.5 · 0.8 = 0.4 (float32 0.4 would not)
    # (bounds [0.4, 0.45, 0.45]; classes 1, 2 stay below theirs)
    probs64 = _pix([[0.4 + 1e-12, 0.3, 0.3 - 1e-12]], 1, 1, torch.float64)
    hard, pseudo = px.split_easy_hard(probs64, torch.tensor([0.8, 0.9, 0.9], dtype=torch.float64), 0.5)
    assert not hard.item() and pseudo.item() == 0


def test_split_unpredicted_class_and_alpha_endpoints():
    # t = [0.5, 0.5, 0] (class 2 never predicted), α = 0.5 → bounds [0.25, 0.25, 0]
    probs = _pix([[0.25, 0.25, 0.5], [0.125, 0.625, 0.25]], 1, 2)
    t = torch.tensor([0.5, 0.5, 0.0])
    hard, pseudo = px.split_easy_hard(probs, t, 0.5)
    assert hard.tolist() == [[[True, False]]] and pseudo.tolist() == [[[255, 1]]]  # class 2 left out
    hard, pseudo = px.split_easy_hard(probs, t, 0.5, skip_unpredicted=False)  # literal: 0.5 > 0 passes
    assert hard.tolist() == [[[False, False]]] and pseudo.tolist() == [[[2, 1]]]
    hard, pseudo = px.split_easy_hard(_pix(ROWS, 2, 2), torch.tensor(T), 0.0)  # α = 0: plain argmax, Prop. 1
    assert not hard.any() and pseudo.tolist() == [[[0, 2], [0, 1]]]


def test_split_matches_explicit_loop_on_random_data():
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(2 * torch.randn(2, 4, 5, 6, generator=g), 1)
    t, alpha = torch.tensor([0.8, 0.6, 0.0, 0.9]), 0.7
    hard, pseudo = px.split_easy_hard(probs, t, alpha)
    p = probs.numpy()
    for n in range(2):
        for i in range(5):
            for j in range(6):
                passing = [k for k in range(4) if t[k] > 0 and p[n, k, i, j] > np.float32(alpha * t[k].item())]
                assert hard[n, i, j].item() == (not passing)
                want = max(passing, key=lambda k: (p[n, k, i, j], -k)) if passing else 255
                assert pseudo[n, i, j].item() == want


def test_easy_proportion():
    mask = torch.tensor([[[True, False], [False, False]], [[True, True], [False, True]]])
    assert px.easy_proportion(mask).item() == 0.5  # easy: 3 + 1 of 8
    assert px.easy_proportion(torch.zeros(1, 3, 3, dtype=torch.bool)).item() == 1.0
    with pytest.raises(ValueError, match="empty"):
        px.easy_proportion(torch.zeros(0, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        px.easy_proportion(torch.zeros(1, 2, 2))


def test_continuous_index():
    probs = _pix(ROWS, 2, 2)
    hard, _ = px.split_easy_hard(probs, torch.tensor(T), 0.5)
    z = px.continuous_index(probs, hard)
    assert z.tolist() == [[[1 - 0.4375, 0.0], [0.0, 0.0]]]  # only the hard pixel: 1 − max p = 0.5625
    z_all = px.continuous_index(probs, torch.ones(1, 2, 2, dtype=torch.bool))
    assert z_all.tolist() == [[[0.5625, 0.46875], [0.5625, 0.25]]]


# ------------------------------------------------------------------------------------------ losses
def test_partial_ce_on_easy_pixels_only():
    # pixels: logits [0, 0] label 0 → ln 2; [ln 3, 0] label 0 → p0 = 3/4 → ln(4/3); [5, −5] hard (255) → ignored
    logits = torch.tensor([[0.0, LN3, 5.0], [0.0, 0.0, -5.0]]).reshape(1, 2, 1, 3)
    pseudo = torch.tensor([[[0, 0, 255]]])
    loss = px.partial_ce_loss(logits, pseudo)
    assert loss.item() == pytest.approx((LN2 + math.log(4 / 3)) / 2, abs=1e-6)
    none = px.partial_ce_loss(logits.requires_grad_(), torch.full((1, 1, 3), 255))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="pseudo"):
        px.partial_ce_loss(logits, torch.tensor([[[0, 7, 255]]]))
    with pytest.raises(ValueError, match="pseudo"):
        px.partial_ce_loss(logits, pseudo.float())


def test_pla_losses_pixel_bce_hand_computed():
    d = torch.tensor([0.0, LN3]).reshape(1, 1, 1, 2)  # D = σ = [1/2, 3/4]
    hard_easy = torch.tensor([[[True, False]]])
    # D: hard pixel −ln σ(0) = ln 2; easy pixel −ln(1 − 3/4) = ln 4 → mean 1.5 ln 2, sum (÷N=1) 3 ln 2
    assert px.pla_d_loss(d, hard_easy).item() == pytest.approx(1.5 * LN2, abs=1e-6)
    assert px.pla_d_loss(d, hard_easy, reduction="sum").item() == pytest.approx(3 * LN2, abs=1e-6)
    # G: only the hard pixel (1,1 → second): −ln(1 − 3/4) = ln 4, ÷ (N·H·W = 2) → ln 2
    easy_hard = torch.tensor([[[False, True]]])
    assert px.pla_g_loss(d, easy_hard).item() == pytest.approx(LN2, abs=1e-6)
    assert px.pla_g_loss(d, torch.zeros(1, 1, 2, dtype=torch.bool)).item() == 0.0


def test_pla_losses_log_sum_hand_computed():
    # image 1: D = σ([0, ln3, ln3]) = [1/2, 3/4, 3/4]; hard {0, 1}, easy {2}:
    #   −ln(1/2 + 3/4) − ln(1 − 3/4) = ln(4 / 1.25) = ln 3.2
    # image 2: D = [1/2, 1/2, 1/2], all easy: hard term 0 (empty), easy −ln(3 · 1/2) = −ln 1.5
    d = torch.tensor([[0.0, LN3, LN3], [0.0, 0.0, 0.0]]).reshape(2, 1, 1, 3).requires_grad_()
    m = torch.tensor([[[True, True, False]], [[False, False, False]]])
    loss = px.pla_d_loss(d, m, form="log_sum")
    assert loss.item() == pytest.approx((math.log(3.2) - math.log(1.5)) / 2, abs=1e-6)
    loss.backward()
    assert torch.isfinite(d.grad).all()
    # G, image 1: −ln((1 − 1/2) + (1 − 3/4)) = ln(4/3); image 2 has no hard pixel → 0; mean over 2 images
    g = px.pla_g_loss(d.detach(), m, form="log_sum")
    assert g.item() == pytest.approx(math.log(4 / 3) / 2, abs=1e-6)


def test_cts_losses_hand_computed():
    d = torch.tensor([0.0, LN3]).reshape(1, 1, 1, 2)  # sigmoid → [0.5, 0.75]
    z = torch.tensor([[[0.5, 0.25]]])
    # (0.5 − 0.5)² + (0.75 − 0.25)² = 0.25 → mean ÷2 = 0.125, sum 0.25
    assert px.cts_d_loss(d, z).item() == pytest.approx(0.125, abs=1e-7)
    assert px.cts_d_loss(d, z, reduction="sum").item() == pytest.approx(0.25, abs=1e-7)
    # no activation: D = d = [0.5, 0.25] vs Z = [0.25, 0] → 0.0625 + 0.0625 = 0.125 → mean 0.0625
    raw = torch.tensor([0.5, 0.25]).reshape(1, 1, 1, 2)
    assert px.cts_d_loss(raw, torch.tensor([[[0.25, 0.0]]]), activation="none").item() == pytest.approx(0.0625)
    # G: ‖D ∘ M‖² with M = [1, 0]: 0.5² = 0.25 → mean 0.125
    assert px.cts_g_loss(d, torch.tensor([[[True, False]]])).item() == pytest.approx(0.125, abs=1e-7)


def test_discriminator_output_upsampled_to_mask_size():
    # a constant 1×1 D logit 0 upsampled to 2×2 stays 0 → every pixel costs ln 2 in either class
    d = torch.zeros(1, 1, 1, 1)
    m = torch.tensor([[[True, False], [False, True]]])
    assert px.pla_d_loss(d, m).item() == pytest.approx(LN2, abs=1e-6)
    assert px.cts_g_loss(d, m).item() == pytest.approx(2 * 0.25 / 4, abs=1e-7)  # two hard pixels at D = 0.5
    up = px.upsample(torch.tensor([[[[0.0, 1.0]]]]), (1, 3))
    assert up.flatten().tolist() == [0.0, 0.5, 1.0]  # align_corners=True


@pytest.mark.parametrize("loss", ["pla", "cts"])
def test_generator_gets_no_adversarial_gradient_from_easy_pixels(loss):
    probs = torch.softmax(torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(4)), 1)
    probs.requires_grad_()
    disc = torch.nn.Conv2d(3, 1, 1)  # a per-pixel D (1×1 conv), frozen
    with torch.no_grad():
        disc.weight.copy_(torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1))
        disc.bias.fill_(0.1)
    m = torch.tensor([[[True, False], [False, True]]])
    d = disc(probs)
    out = px.pla_g_loss(d, m) if loss == "pla" else px.cts_g_loss(d, m)
    out.backward()
    g = probs.grad.abs().sum(1)[0]
    assert g[0, 1] == 0 and g[1, 0] == 0 and g[0, 0] > 0 and g[1, 1] > 0
    # direction: a gradient step on D's logit at a hard pixel lowers D (towards 0 = easy)
    dl = d.detach().requires_grad_()
    (px.pla_g_loss(dl, m) if loss == "pla" else px.cts_g_loss(dl, m)).backward()
    assert dl.grad[0, 0][m[0]].gt(0).all() and dl.grad[0, 0][~m[0]].eq(0).all()


def test_kld_regulariser_hand_computed():
    logits = torch.zeros(1, 4, 1, 2)  # uniform over 4 → −¼ Σ ln ¼ = ln 4
    assert px.kld_regulariser(logits).item() == pytest.approx(math.log(4), abs=1e-6)
    # C = 2, logits [0, ln 3] → p = [1/4, 3/4] → −½(ln ¼ + ln ¾) = (ln 4 + ln 4/3)/2; mask picks that pixel only
    two = torch.tensor([[0.0, 0.0], [LN3, 0.0]]).reshape(1, 2, 1, 2)
    picked = px.kld_regulariser(two, torch.tensor([[[True, False]]]))
    assert picked.item() == pytest.approx((math.log(4) + math.log(4 / 3)) / 2, abs=1e-6)
    empty = px.kld_regulariser(two.requires_grad_(), torch.zeros(1, 1, 2, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_one_clear_error():
    good = _pix(ROWS, 2, 2)
    cases = [
        (lambda: px.class_thresholds(torch.rand(3, 4, 4)), r"probs.*\[N, C, H, W\]"),
        (lambda: px.class_thresholds(good * 3), "outside"),
        (lambda: px.class_thresholds(good.masked_fill(good > 0.7, float("nan"))), "NaN"),
        (lambda: px.class_thresholds(good, cap=0.0), "cap"),
        (lambda: px.split_easy_hard(good, torch.tensor([0.5, 0.5]), 0.5), r"thresholds.*\[C=3\]"),
        (lambda: px.split_easy_hard(good, torch.tensor([0.5, 0.5, 1.5]), 0.5), "thresholds"),
        (lambda: px.split_easy_hard(good, torch.tensor(T), 1.5), "alpha"),
        (lambda: px.split_easy_hard(good, torch.tensor(T), float("nan")), "alpha"),
        (lambda: px.continuous_index(good, torch.zeros(1, 3, 2, dtype=torch.bool)), "hard_mask"),
        (lambda: px.pla_d_loss(torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 2, dtype=torch.bool)), "d_logits"),
        (lambda: px.pla_d_loss(torch.zeros(2, 1, 1, 1), torch.zeros(1, 2, 2, dtype=torch.bool)), "d_logits"),
        (lambda: px.pla_d_loss(torch.zeros(1, 1, 1, 1), torch.zeros(1, 2, 2, dtype=torch.bool), form="x"), "form"),
        (lambda: px.cts_d_loss(torch.zeros(1, 1, 1, 1), torch.full((1, 2, 2), 2.0)), "z"),
        (lambda: px.cts_g_loss(torch.zeros(1, 1, 1, 1), torch.ones(1, 2, 2, dtype=torch.bool), "tanh"),
         "activation"),
        (lambda: px.cts_d_loss(torch.zeros(1, 1, 1, 1), torch.zeros(1, 2, 2), reduction="max"), "reduction"),
        (lambda: px.kld_regulariser(torch.zeros(2, 3, 1, 1), torch.ones(1, 1, 1, dtype=torch.bool)), "mask"),
        (lambda: px.ThresholdAccumulator(num_classes=4).update(good), "classes"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()
