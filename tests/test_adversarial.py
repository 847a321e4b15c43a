"""AdaptSegNet's adversarial losses: values by hand, level weights, and the generator/discriminator split."""

import math

import torch

from bench.models import build_discriminator
from bench.models.output import SegOutput
from methods.adversarial import SOURCE_LABEL, TARGET_LABEL, adversarial_loss, output_space_losses


def test_bce_and_ls_by_hand():
    d = torch.tensor([[[[0.0, 2.0]]]])  # logits 0 and 2
    # BCE vs label 1: mean(log(1+e^0), log(1+e^-2)) = mean(0.693147, 0.126928)
    assert math.isclose(adversarial_loss(d, TARGET_LABEL).item(), (math.log(2) + math.log(1 + math.exp(-2))) / 2,
                        rel_tol=1e-6)
    # vs label 0: mean(log 2, log(1+e^2)) = mean(0.693147, 2.126928)
    assert math.isclose(adversarial_loss(d, SOURCE_LABEL).item(), (math.log(2) + math.log(1 + math.exp(2))) / 2,
                        rel_tol=1e-6)
    assert math.isclose(adversarial_loss(d, 1.0, "ls").item(), (1 + 1) / 2)  # (0-1)^2, (2-1)^2


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 19, 1)

    def forward(self, x):
        y = self.conv(x)
        return SegOutput(y[..., ::2, ::2], aux=y[..., ::2, ::2] * 0.5)


def test_generator_and_discriminator_terms():
    torch.manual_seed(0)
    model = Tiny()
    d_main, d_aux = build_discriminator("output_space", 19), build_discriminator("output_space", 19)
    losses = output_space_losses(model, {"main": d_main, "aux": d_aux}, {"main": 0.001, "aux": 0.0002}, 0.1)
    batch = {"source": {"image": torch.randn(2, 3, 64, 64), "label": torch.randint(0, 19, (2, 64, 64))},
             "target_train": {"image": torch.randn(2, 3, 64, 64), "label": torch.full((2, 64, 64), 255)}}
    out = losses(batch, 0)
    assert set(out["segmenter"]) == {"ce", "ce_aux", "adv_main", "adv_aux"}
    assert set(out["discriminator"]) == {"d_main", "d_aux"}
    # The generator term is λ·BCE(D(softmax(target)), source label) — recomputed independently here.
    with torch.no_grad():
        pt = torch.softmax(torch.nn.functional.interpolate(model(batch["target_train"]["image"]).logits, size=(64, 64),
                                                           mode="bilinear", align_corners=True), 1)
        want = 0.001 * torch.nn.functional.binary_cross_entropy_with_logits(d_main(pt), torch.zeros_like(d_main(pt)))
    assert torch.allclose(out["segmenter"]["adv_main"], want, rtol=1e-5)
    # The discriminator terms see detached predictions: no gradient reaches the segmenter.
    d_total = sum(out["discriminator"].values())
    grads = torch.autograd.grad(d_total, list(model.parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    # The generator's adversarial term does reach the segmenter.
    g = torch.autograd.grad(out["segmenter"]["adv_main"], model.conv.weight)[0]
    assert g.abs().sum() > 0


def test_feature_level_losses_split_and_channels():
    from bench.models import build_model
    from methods.adversarial import feature_adversarial_losses, feature_channels

    torch.manual_seed(0)
    model = build_model("small")
    assert feature_channels(model, "decoder") == model(torch.zeros(1, 3, 32, 32)).features["decoder"].shape[1]
    disc = build_discriminator("feature", feature_channels(model, "layer4"), channels=(8, 8, 8, 8))
    losses = feature_adversarial_losses(model, disc, "layer4", 0.01)
    batch = {"source": {"image": torch.randn(2, 3, 32, 64), "label": torch.randint(0, 19, (2, 32, 64))},
             "target_train": {"image": torch.randn(2, 3, 32, 64), "label": torch.full((2, 32, 64), 255)}}
    out = losses(batch, 0)
    assert set(out["segmenter"]) == {"ce", "adv"} and set(out["discriminator"]) == {"d"}
    grads = torch.autograd.grad(out["discriminator"]["d"], list(model.parameters()), allow_unused=True)
    assert all(g is None for g in grads)  # D's loss sees detached features
    # the generator term = 0.01 · BCE(D(f_t), source label 0), recomputed
    with torch.no_grad():
        d_t = disc(model(batch["target_train"]["image"]).features["layer4"])
    want = 0.01 * torch.nn.functional.softplus(d_t).mean()  # BCE with label 0 = log(1 + e^x)
    assert torch.allclose(out["segmenter"]["adv"], want, rtol=1e-4)
