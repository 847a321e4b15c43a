"""SSF-DAN: each equation against hand-worked values or a slow independent loop; SS-D fast path == the per-class
modules run one by one; gradient isolation of the generator and discriminator steps."""

from __future__ import annotations

import csv
import dataclasses
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.data.labels import IGNORE
from methods.base import SOURCES, make_config
from methods.ssf_dan.config import TABLES
from methods.ssf_dan.equations import (
    SWITCHES,
    Config,
    SeparableDiscriminator,
    adversarial_loss_d,
    adversarial_loss_g,
    class_weights,
    discriminator_loss,
    generator_adversarial_loss,
    kept_fraction,
    kept_labels,
    mode_downsample,
    progressive_confidence_mask,
    reweight_map,
    separate_features,
    soft_class_maps,
)

REPO = Path(__file__).resolve().parent.parent


def probs_from(classes, confs, num_classes):
    """[1, C, 1, P] probabilities: pixel i puts confs[i] on classes[i], the rest spread evenly (conf stays max)."""
    p = len(classes)
    out = torch.empty(1, num_classes, 1, p, dtype=torch.float64)
    for i, (c, a) in enumerate(zip(classes, confs)):
        out[0, :, 0, i] = (1 - a) / (num_classes - 1)
        out[0, c, 0, i] = a
    return out


# ----------------------------------------------------------------------------------------------- Eq. 7
def test_kept_fraction_schedule_and_cap():
    assert kept_fraction(0, 1000, 0.8) == 0.0  # ρ starts at 0
    assert kept_fraction(250, 1000, 0.8) == pytest.approx(0.25)  # 250/1000, below the cap
    assert kept_fraction(799, 1000, 0.8) == pytest.approx(0.799)
    assert kept_fraction(800, 1000, 0.8) == 0.8  # 800/1000 is not < 0.8 → the cap
    assert kept_fraction(900, 1000, 0.8) == 0.8
    assert kept_fraction(5000, 1000, 0.8) == 0.8  # past the end
    assert kept_fraction(10, 10, 1.0) == 1.0
    for bad in [(1, 0, 0.8), (-1, 10, 0.8), (1, 10, 1.5), (1, 10, -0.1)]:
        with pytest.raises(ValueError):
            kept_fraction(*bad)


# ----------------------------------------------------------------------------------------------- Eq. 8
def test_pcs_hand_worked():
    # pixels 0..5: class 0 at conf .9 .6 .7 (p0 p1 p2), class 1 at .5 (p3), class 0 at .8 (p4), class 2 at .95 (p5)
    probs = probs_from([0, 0, 0, 1, 0, 2], [0.9, 0.6, 0.7, 0.5, 0.8, 0.95], 3)
    kept = lambda rho: progressive_confidence_mask(probs, rho)[0, 0].tolist()  # noqa: E731
    # ρ=0.5: class 0 has n=4 → floor(2)=2: p0 (.9), p4 (.8); classes 1, 2 have n=1 → floor(.5)=0
    assert kept(0.5) == [True, False, False, False, True, False]
    # ρ=0.8: class 0 floor(3.2)=3: p0, p4, p2; single-pixel classes floor(.8)=0
    assert kept(0.8) == [True, False, True, False, True, False]
    assert kept(0.0) == [False] * 6  # ρ = 0 keeps nothing
    assert kept(1.0) == [True] * 6  # ρ = 1 keeps all, the single-pixel classes included


def test_pcs_ties_and_per_image():
    # image 0: four class-0 pixels all at conf .7 → ρ=.5 keeps 2: the first two in row-major order
    # image 1: [.7 (c0), .9 (c0), .7 (c0), .6 (c1)] → class 0: .9 first, then the earlier .7 (p0)
    p0 = probs_from([0, 0, 0, 0], [0.7] * 4, 2)
    p1 = probs_from([0, 0, 0, 1], [0.7, 0.9, 0.7, 0.6], 2)
    probs = torch.cat([p0, p1]).view(2, 2, 2, 2)  # 1×4 rows → 2×2 images: row-major order unchanged
    kept = progressive_confidence_mask(probs, 0.5).view(2, 4).tolist()
    assert kept[0] == [True, True, False, False]
    # image 1: class 0 n=3 → floor(1.5)=1: p1; class 1 n=1 → 0
    assert kept[1] == [False, True, False, False]
    # argmax tie (.5/.5) → class 0 (the lowest); with ρ=1 it is kept and labelled 0
    tie = torch.tensor([0.5, 0.5], dtype=torch.float64).view(1, 2, 1, 1)
    assert kept_labels(tie, progressive_confidence_mask(tie, 1.0)).item() == 0


def test_pcs_floor_is_exact_for_decimal_rho():
    # 100 distinct class-0 pixels, ρ = 29/100: 29 kept (0.29·100 = 28.999… in binary)
    confs = [0.5 + i / 1000 for i in range(100)]
    probs = probs_from([0] * 100, confs, 2)
    kept = progressive_confidence_mask(probs, kept_fraction(29, 100, 0.8))[0, 0]
    assert int(kept.sum()) == 29 and kept[-29:].all()  # the 29 highest confidences are the last 29


def slow_pcs(probs, step, total):
    """Reference: loops; quota = floor(step·n_c / total) in integers; ties → earlier row-major index."""
    n, c, h, w = probs.shape
    out = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        flat = probs[i].reshape(c, -1).t().tolist()
        pred = [row.index(max(row)) for row in flat]  # first maximum
        for k in range(c):
            pix = [j for j in range(h * w) if pred[j] == k]
            pix.sort(key=lambda j: (-flat[j][k], j))
            for j in pix[: (step * len(pix)) // total]:
                out[i, j // w, j % w] = True
    return out


@pytest.mark.parametrize("step", [0, 13, 29, 50, 77, 100])
def test_pcs_matches_slow_loop_with_many_ties(step):
    g = torch.Generator().manual_seed(step)
    logits = torch.randint(0, 3, (2, 4, 5, 7), generator=g).double()  # integer logits: ties everywhere
    logits[1, 3] = -5  # class 3 never predicted in image 1: a class with 0 pixels
    probs = logits.softmax(1)
    got = progressive_confidence_mask(probs, step / 100)
    assert torch.equal(got, slow_pcs(probs, step, 100))


def test_pcs_bad_input():
    with pytest.raises(ValueError, match="probs"):
        progressive_confidence_mask(torch.rand(3, 4, 5), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        progressive_confidence_mask(torch.full((1, 2, 2, 2), math.nan), 0.5)
    with pytest.raises(ValueError, match="rho"):
        progressive_confidence_mask(torch.rand(1, 2, 2, 2), 1.5)


# ----------------------------------------------------------------------------------------------- Eq. 9
def test_class_weights_known_map():
    probs = probs_from([0, 0, 0, 1, 0, 2], [0.9, 0.6, 0.7, 0.5, 0.8, 0.95], 4)
    kept = torch.tensor([True, True, True, False, False, True]).view(1, 1, 6)
    tau = class_weights(probs, kept)
    # class 0 kept: .9 .6 .7 → sqrt(3 / 2.2); class 1: p3 not kept → NaN; class 2: .95 → sqrt(1/.95);
    # class 3 never predicted → NaN
    assert tau[0].item() == pytest.approx(math.sqrt(3 / 2.2), rel=1e-6)
    assert math.isnan(tau[1].item()) and math.isnan(tau[3].item())
    assert tau[2].item() == pytest.approx(math.sqrt(1 / 0.95), rel=1e-6)
    # over a batch the sums pool: a second image with class 0 at .3 → sqrt(4 / 2.5)
    p2 = probs_from([0, 1, 1, 1, 1, 1], [0.3, 0.5, 0.5, 0.5, 0.5, 0.5], 4)
    k2 = torch.tensor([True, False, False, False, False, False]).view(1, 1, 6)
    tau2 = class_weights(torch.cat([probs, p2]), torch.cat([kept, k2]))
    assert tau2[0].item() == pytest.approx(math.sqrt(4 / 2.5), rel=1e-6)
    with pytest.raises(ValueError, match="kept"):
        class_weights(probs, kept.view(1, 6, 1))
    assert torch.isnan(class_weights(probs, torch.zeros_like(kept))).all()  # all filtered: every τ NaN


# ----------------------------------------------------------------------------------------------- grids
def test_mode_downsample_hand_worked_ties():
    labels = torch.tensor([[0, 0, 1, 1],
                           [1, 2, 2, 2],
                           [IGNORE, IGNORE, IGNORE, IGNORE],
                           [3, 3, IGNORE, 4]]).unsqueeze(0)
    # 2×2 cells: (0,0) 0,0,1,2 → 0; (0,1) 1,1,2,2 → tie → 1 (lowest);
    # (1,0) ign,ign,3,3 → class/ignore tie → 3; (1,1) ign,ign,ign,4 → ignore (3 votes) or 4 (ignore not voting)
    assert mode_downsample(labels, (2, 2), num_classes=5).tolist() == [[[0, 1], [3, IGNORE]]]
    assert mode_downsample(labels, (2, 2), 5, ignore_votes=False).tolist() == [[[0, 1], [3, 4]]]
    all_ign = torch.full((1, 2, 2), IGNORE)
    assert mode_downsample(all_ign, (1, 1), 5, ignore_votes=False).item() == IGNORE


def slow_mode(labels, size, c, ignore_votes):
    n, hh, ww = labels.shape
    h, w = size
    out = torch.empty(n, h, w, dtype=torch.long)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                r0, r1 = (i * hh) // h, -((-(i + 1) * hh) // h)  # floor / ceil
                c0, c1 = (j * ww) // w, -((-(j + 1) * ww) // w)
                votes = Counter(labels[b, r0:r1, c0:c1].flatten().tolist())
                if not ignore_votes and len(votes) > 1:
                    votes.pop(IGNORE, None)
                top = max(votes.values())
                out[b, i, j] = min(votes, key=lambda k: (votes[k] != top, k))  # IGNORE = 255 sorts last
    return out


@pytest.mark.parametrize("size", [(3, 4), (2, 5), (9, 12)])
@pytest.mark.parametrize("ignore_votes", [True, False])
def test_mode_downsample_matches_slow_loop(size, ignore_votes):
    g = torch.Generator().manual_seed(sum(size))
    labels = torch.randint(0, 4, (2, 7, 10), generator=g)
    labels[torch.rand(2, 7, 10, generator=g) < 0.3] = IGNORE
    got = mode_downsample(labels, size, num_classes=4, ignore_votes=ignore_votes)
    assert torch.equal(got, slow_mode(labels, size, 4, ignore_votes))


def test_mode_downsample_bad_input():
    with pytest.raises(ValueError, match="labels"):
        mode_downsample(torch.tensor([[[0, 7]]]), (1, 1), num_classes=5)
    with pytest.raises(ValueError, match="size"):
        mode_downsample(torch.zeros(1, 2, 2, dtype=torch.long), (0, 1))
    with pytest.raises(ValueError, match="size"):
        mode_downsample(torch.zeros(1, 2, 2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="labels"):
        mode_downsample(torch.zeros(2, 2), (1, 1))


def test_soft_maps_and_reweight_map():
    labels = torch.tensor([[[0, 0], [1, IGNORE]]])
    soft = soft_class_maps(labels, (1, 1), num_classes=3)
    assert soft.view(-1).tolist() == [0.5, 0.25, 0.0]  # 2/4, 1/4, 0/4; the ignored pixel only in the denominator
    lab = torch.tensor([[[0, IGNORE], [2, 1]]])
    r = reweight_map(lab, torch.tensor([1.5, math.nan, 2.0]), missing=1.0)
    assert r.tolist() == [[[1.5, 0.0], [2.0, 1.0]]]  # τ_0, ignore → 0, τ_2, NaN τ_1 → missing
    with pytest.raises(ValueError, match="labels"):
        reweight_map(torch.tensor([[[3]]]), torch.ones(3))


def test_separate_features_by_hand():
    feats = torch.arange(8.0).view(1, 2, 2, 2)  # channel 0: [[0,1],[2,3]], channel 1: [[4,5],[6,7]]
    labels = torch.tensor([[[1, 0], [IGNORE, 1]]])
    out = separate_features(feats, labels, num_classes=3)
    assert out.shape == (1, 3, 2, 2, 2)
    assert out[0, 0].tolist() == [[[0, 1], [0, 0]], [[0, 5], [0, 0]]]
    assert out[0, 1].tolist() == [[[0, 0], [0, 3]], [[4, 0], [0, 7]]]
    assert out[0, 2].abs().sum() == 0  # class without a cell; the ignored cell is zero everywhere
    with pytest.raises(ValueError, match="labels"):
        separate_features(feats, labels[:, :1], num_classes=3)


# ----------------------------------------------------------------------------------------------- Eq. 4-5
def test_adversarial_losses_by_hand():
    z = torch.tensor([0.0, math.log(3)]).view(1, 1, 1, 2)
    wt = torch.tensor([1.0, 2.0]).view(1, 1, 2)
    # -log(1-σ(0)) = ln 2, -log(1-σ(ln 3)) = -log(1/4) = 2 ln 2; weighted sum = ln2 + 2·2ln2 = 5 ln 2
    assert generator_adversarial_loss(z, wt, "sum").item() == pytest.approx(5 * math.log(2))
    assert generator_adversarial_loss(z, wt).item() == pytest.approx(5 * math.log(2) / 2)  # mean over 2 cells
    # target term: -log σ(0) = ln 2, -log σ(ln 3) = log(4/3); source as above with weights (1, 0)
    ws = torch.tensor([1.0, 0.0]).view(1, 1, 2)
    want = 0.5 * ((math.log(2)) + (math.log(2) + 2 * math.log(4 / 3))) / 2
    assert discriminator_loss(z, z, ws, wt).item() == pytest.approx(want)
    # per-channel weights [N, K, h, w] (the soft maps) sum over channels
    zk = torch.zeros(1, 2, 1, 1)
    wk = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1)
    assert generator_adversarial_loss(zk, wk, "sum").item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="weight"):
        generator_adversarial_loss(z, torch.ones(1, 2, 1))
    with pytest.raises(ValueError, match="reduction"):
        generator_adversarial_loss(z, wt, "avg")


# ----------------------------------------------------------------------------------------------- SS-D
def reference_modules(disc):
    """Independent definition: C nn.Sequential modules (kernels 1,3,3,...; LeakyReLU except last) with copied
    weights."""
    mods = []
    for c in range(disc.num_classes):
        layers = []
        for i, k in enumerate(disc.kernels):
            w, b = disc.layer(i)
            conv = nn.Conv2d(w.shape[2], w.shape[1], k, padding=k // 2).double()
            with torch.no_grad():
                conv.weight.copy_(w[c])
                conv.bias.copy_(b[c])
            layers.append(conv)
            if i < len(disc.kernels) - 1:
                layers.append(nn.LeakyReLU(0.2))
        mods.append(nn.Sequential(*layers))
    return mods


def make_case(h, w, seed, classes=5, in_ch=6):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    disc = SeparableDiscriminator(classes, in_ch, widths=(4, 3, 3, 2)).double()
    feats = torch.randn(2, in_ch, h, w, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 2, 3, IGNORE])[torch.randint(0, 4, (2, h, w), generator=g)]  # 1 and 4 absent
    return disc, feats, labels


@pytest.mark.parametrize("hw", [(11, 13), (6, 7), (9, 10)])
def test_ssd_fast_path_equals_per_class_modules(hw):
    disc, feats, labels = make_case(*hw, seed=hw[0])
    mods = reference_modules(disc)
    blocks = separate_features(feats, labels, disc.num_classes)
    ref = torch.cat([m(blocks[:, c]) for c, m in enumerate(mods)], 1)  # [N, C, h, w], 19 modules one by one
    fast_pc = disc(feats, labels, per_class=True)
    torch.testing.assert_close(fast_pc, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(disc(feats, labels), ref.sum(1, keepdim=True), rtol=0, atol=1e-12)
    torch.testing.assert_close(disc.forward_loop(feats, labels, per_class=True), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["masked", "all_present", "unmasked", "all_ignore"])
def test_ssd_fast_path_gradients_equal_loop(mode):
    disc, feats, labels = make_case(11, 12, seed=3)
    every = torch.arange(11 * 12).view(1, 11, 12).expand(2, -1, -1) % 6  # classes 0..4 and 5 → IGNORE below
    labels = {"masked": labels, "all_present": torch.where(every == 5, IGNORE, every), "unmasked": None,
              "all_ignore": torch.full_like(labels, IGNORE)}[mode]
    weight = torch.rand(2, 1, 11, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    params = list(disc.parameters())
    grads = []
    for fn in (disc.forward, disc.forward_loop):
        x = feats.clone().requires_grad_(True)
        out = fn(x, labels)
        g = torch.autograd.grad((out * weight).sum(), [x, *params], allow_unused=True)
        # all cells ignored: the fast path never reads the features or layer 1's weights (None); the loop
        # multiplies the features by 0 (zero gradients)
        grads.append([torch.zeros_like(t) if gi is None else gi for gi, t in zip(g, [x, *params])])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    assert mode == "all_ignore" or grads[0][1].abs().sum() > 0  # the class modules' first layer learns
    if mode == "masked":  # absent classes (1, 4) get gradient only in their biases-reached layers (F^c = 0)
        assert grads[0][1][1].abs().sum() == 0 and grads[0][2][1].abs().sum() > 0


def test_ssd_paper_size_and_bad_input():
    with torch.device("meta"):
        disc = SeparableDiscriminator()  # 19 classes, 2048 → 1024 → 512 → 256 → 128 → 1
    # per class: 2048·1024+1024 + 1024·512·9+512 + 512·256·9+256 + 256·128·9+128 + 128·9+1 = 8,293,377; ×19
    assert sum(p.numel() for p in disc.parameters()) == 8_293_377 * 19
    small = SeparableDiscriminator(3, 4, widths=(2, 2))
    with pytest.raises(ValueError, match="channels"):
        small(torch.zeros(1, 5, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        small(torch.zeros(1, 4, 3, 3), torch.full((1, 3, 3), 3))


# ----------------------------------------------------------------------------------------------- gradients
def test_gradient_isolation_generator_and_discriminator_steps():
    torch.manual_seed(0)
    c, d = 3, 4
    feats = torch.randn(1, d, 6, 6, requires_grad=True)  # the segmenter's layer4 features
    head = nn.Conv2d(d, c, 1)  # the segmenter's classifier
    disc = SeparableDiscriminator(c, d, widths=(3, 2))
    probs = head(feats).softmax(1)
    kept = progressive_confidence_mask(probs, 0.6)
    labels = mode_downsample(kept_labels(probs, kept), (6, 6), num_classes=c)
    # a weight map that *would* carry gradient from the classifier if the losses did not detach it
    r_t = reweight_map(labels, class_weights(probs, kept)) * probs.sum(1)
    l_adv = adversarial_loss_g(disc, feats, labels, r_t)
    g_feat, g_head = torch.autograd.grad(l_adv, [feats, head.weight], allow_unused=True, retain_graph=True)
    assert g_head is None  # masks, τ and R carry no gradient: nothing reaches the classifier from L_adv
    assert g_feat is not None and g_feat.abs().sum() > 0  # the features are pushed through D only
    # the same gradient as D's input being a fresh leaf: no other path from L_adv to the features
    leaf = feats.detach().clone().requires_grad_(True)
    (g_leaf,) = torch.autograd.grad(adversarial_loss_g(disc, leaf, labels, r_t.detach()), [leaf])
    torch.testing.assert_close(g_feat, g_leaf)
    # discriminator step: nothing reaches the features (or the classifier); D's parameters do learn
    l_d = adversarial_loss_d(disc, feats * 2, labels, r_t, feats, labels, r_t)
    g = torch.autograd.grad(l_d, [feats, head.weight, *disc.parameters()], allow_unused=True)
    assert g[0] is None and g[1] is None
    assert all(x is not None for x in g[2:]) and sum(x.abs().sum() for x in g[2:]) > 0


# ----------------------------------------------------------------------------------------------- config
def test_config_sources_ablations_and_errors():
    cfg = Config()
    for f in dataclasses.fields(Config):
        assert f.metadata.get("source") in SOURCES, f.name
    assert (cfg.delta, cfg.rho_upper, cfg.nesterov, cfg.weight_decay, cfg.d_lr) == (0.001, 0.8, True, 1e-4, 1e-4)
    assert set(SWITCHES) == {"global", "soft", "soft_global", "ssd_dagger", "ssd_dagger_global", "ssd", "ssd_car",
                              "fixed_rho"}
    assert make_config(Config, {"ablation": "fixed_rho", "delta": 0.0005}).delta == 0.0005
    with pytest.raises(ValueError, match="ablation"):
        Config(ablation="ssd_plus")
    with pytest.raises(ValueError, match="pcs_on_source"):
        Config(source_masks="gt", pcs_on_source=True)


def test_table4_transcription():
    with open(REPO / "results" / "paper" / "ssf_dan_t4_ablation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    t4 = TABLES["t4"]
    # printed order, every row mapped to a variant; "without adaptation" twice: the source_only row, and δ = 0 at
    # SSF-DAN's own schedule
    labels = [t4.baseline[1]] + [label for label, _ in t4.rows.values()]
    assert [r["row"] for r in rows] == list(dict.fromkeys(labels))
    assert t4.rows["delta0"] == (t4.baseline[1], {"delta": 0})
    assert {o.get("ablation", "ssd_car") for o in t4.variants().values()} <= set(SWITCHES)
    for r in rows:
        assert (r["paper"], r["table"], r["Oracle"]) == ("ssf_dan", "4", "65.1")
        # the printed gap is Adapt − Oracle
        assert float(r["mIoU Gap"]) == pytest.approx(float(r["mIoU"]) - 65.1, abs=0.051)
