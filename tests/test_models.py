"""Segmenters, discriminators and weight import (bench.models).

The full ResNet-101 models are built a few times only and run at tiny inputs; behaviour that does not depend
on depth (BN modes, parameter groups, the ASPP switch) is tested on the same classes with one block per stage.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.models import (
    DeepLabV2,
    DeepLabV3Plus,
    SmallSeg,
    build_discriminator,
    build_model,
    load_init,
)
from bench.models.deeplab_v2 import ClassifierModule
from bench.models.resnet import batchnorms

TINY = (1, 1, 1, 1)  # one block per stage: same code paths, a fraction of the cost
TINY3 = (1, 1, 1, 3)  # v3+ keeps three layer4 blocks for its multi-grid
R101_BLOCKS = {"layer1": 3, "layer2": 4, "layer3": 23, "layer4": 3}


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


@pytest.fixture(scope="module")
def v2_full():
    torch.manual_seed(0)
    return DeepLabV2(num_classes=4, aux=True).eval()


@pytest.fixture(scope="module")
def v3_full():
    torch.manual_seed(0)
    return DeepLabV3Plus(num_classes=4).eval()


# --------------------------------------------------------------------------- shapes and strides


def test_deeplabv2_r101_layout_and_shapes(v2_full):
    assert {n: len(getattr(v2_full, n)) for n in R101_BLOCKS} == R101_BLOCKS
    # Caffe layout: the stride is on the first 1×1 conv, the max-pool rounds up.
    assert v2_full.layer2[0].conv1.stride == (2, 2) and v2_full.layer2[0].conv2.stride == (1, 1)
    assert v2_full.maxpool.ceil_mode
    assert v2_full.layer3[5].conv2.dilation == (2, 2) and v2_full.layer4[2].conv2.dilation == (4, 4)
    assert [c.dilation[0] for c in v2_full.layer6.conv2d_list] == [6, 12, 18, 24]
    assert v2_full.output_stride == 8 and v2_full.feature_strides == {"layer3": 8, "layer4": 8}
    with torch.no_grad():
        out = v2_full(torch.randn(1, 3, 65, 64))  # width 64 gives 9, not 8, only with ceil-mode pooling
    assert out.logits.shape == (1, 4, 9, 9) and out.aux.shape == (1, 4, 9, 9)
    assert out.features["layer4"].shape == (1, 2048, 9, 9)
    assert out.features["layer3"].shape == (1, 1024, 9, 9)


def test_deeplabv3plus_r101_os16_shapes(v3_full):
    assert {n: len(getattr(v3_full.backbone, n)) for n in R101_BLOCKS} == R101_BLOCKS
    bb = v3_full.backbone
    # torchvision layout: stride on the 3×3 conv; multi-grid (1,2,4) × 2 in layer4.
    assert bb.layer2[0].conv2.stride == (2, 2) and bb.layer2[0].conv1.stride == (1, 1)
    assert bb.layer3[0].conv2.stride == (2, 2)
    assert [b.conv2.dilation[0] for b in bb.layer4] == [2, 4, 8]
    assert [b[0].dilation[0] for b in v3_full.aspp.branches[1:]] == [6, 12, 18]
    assert v3_full.output_stride == 16 and v3_full.feature_strides == {"decoder": 4, "layer4": 16}
    with torch.no_grad():
        out = v3_full(torch.randn(1, 3, 64, 96))
    assert out.logits.shape == (1, 4, 16, 24) and out.aux is None
    assert out.features["decoder"].shape == (1, 256, 16, 24)
    assert out.features["layer4"].shape == (1, 2048, 4, 6)


def test_deeplabv3plus_r101_os8_shapes():
    torch.manual_seed(0)
    model = DeepLabV3Plus(num_classes=3, output_stride=8).eval()
    assert [b.conv2.dilation[0] for b in model.backbone.layer4] == [4, 8, 16]
    assert model.backbone.layer3[0].conv2.stride == (1, 1)
    assert [b[0].dilation[0] for b in model.aspp.branches[1:]] == [12, 24, 36]
    assert model.output_stride == 8 and model.feature_strides["layer4"] == 8
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.logits.shape == (1, 3, 16, 24)
    assert out.features["layer4"].shape == (1, 2048, 8, 12)
    with pytest.raises(ValueError, match="output_stride"):
        DeepLabV3Plus(output_stride=32, layers=TINY3)


def test_small_shapes_aux_and_strides():
    model = SmallSeg(num_classes=19, aux=True)
    out = model(torch.randn(2, 3, 128, 256))
    assert model.output_stride == 8
    assert out.logits.shape == (2, 19, 32, 64)  # logits at stride 4
    assert out.aux.shape == (2, 19, 16, 32)
    for name, stride in model.feature_strides.items():
        assert out.features[name].shape[-2:] == (128 // stride, 256 // stride), name
    assert out.logits.is_contiguous() and all(f.is_contiguous() for f in out.features.values())
    assert SmallSeg(num_classes=19)(torch.randn(2, 3, 64, 96)).aux is None


def test_v3plus_batch1_train_mode_error_is_clear():
    model = DeepLabV3Plus(num_classes=2, layers=TINY3).train()
    with pytest.raises(ValueError, match="batch >= 2"):
        model(torch.randn(1, 3, 64, 64))
    frozen = DeepLabV3Plus(num_classes=2, layers=TINY3, bn_mode="frozen").train()
    assert frozen(torch.randn(1, 3, 64, 64)).logits.shape == (1, 2, 16, 16)


# --------------------------------------------------------------------------- ASPP-v2 two-branch bug


def test_classifier_two_branch_equals_zeroed_branches_18_24():
    torch.manual_seed(0)
    full = ClassifierModule(16, 5)
    bug = ClassifierModule(16, 5, two_branch=True)
    bug.load_state_dict(full.state_dict())
    x = torch.randn(2, 16, 40, 40)  # large enough that every dilation reads off-centre taps
    assert not torch.allclose(bug(x), full(x), atol=1e-5)
    with torch.no_grad():
        for conv in full.conv2d_list[2:]:
            conv.weight.zero_()
            conv.bias.zero_()
    torch.testing.assert_close(bug(x), full(x))


def test_deeplabv2_switch_reaches_both_heads():
    torch.manual_seed(0)
    full = DeepLabV2(num_classes=3, aux=True, layers=TINY).eval()
    bug = DeepLabV2(num_classes=3, aux=True, aspp_two_branch=True, layers=TINY).eval()
    bug.load_state_dict(full.state_dict())
    with torch.no_grad():
        for head in (full.layer5, full.layer6):
            for conv in head.conv2d_list[2:]:
                conv.weight.zero_()
                conv.bias.zero_()
        x = torch.randn(1, 3, 129, 129)
        a, b = full(x), bug(x)
    torch.testing.assert_close(b.logits, a.logits)
    torch.testing.assert_close(b.aux, a.aux)


# --------------------------------------------------------------------------- BN modes


def _tiny(cls):
    return {DeepLabV2: {"layers": TINY}, DeepLabV3Plus: {"layers": TINY3}}.get(cls, {})


def _stats(model):
    return [bn.running_mean.clone() for bn in batchnorms(model)]


def _changed(before, model):
    return [not torch.equal(a, bn.running_mean) for a, bn in zip(before, batchnorms(model))]


@pytest.mark.parametrize("cls", [DeepLabV2, DeepLabV3Plus, SmallSeg])
def test_bn_mode_frozen_affine(cls):
    kw = _tiny(cls)
    model = cls(num_classes=3, bn_mode="frozen_affine", **kw).train()
    bns = batchnorms(model)
    assert bns and all(not p.requires_grad for bn in bns for p in bn.parameters())
    assert all(bn.training for bn in bns)  # batch statistics are still used
    before = _stats(model)
    model(torch.randn(2, 3, 64, 64))
    assert all(_changed(before, model))


@pytest.mark.parametrize("cls", [DeepLabV2, DeepLabV3Plus, SmallSeg])
def test_bn_mode_frozen_stays_eval_after_train(cls):
    kw = _tiny(cls)
    model = cls(num_classes=3, bn_mode="frozen", **kw)
    model.eval().train()  # .train() must not switch BN back
    assert model.training
    assert all(not bn.training for bn in batchnorms(model))
    assert all(not p.requires_grad for bn in batchnorms(model) for p in bn.parameters())
    before = _stats(model)
    x = torch.randn(2, 3, 64, 64)
    out = model(x).logits
    assert not any(_changed(before, model))
    with torch.no_grad():  # train-mode output equals eval-mode output (dropout aside: v3+ has it)
        if cls is not DeepLabV3Plus:
            torch.testing.assert_close(model.eval()(x).logits, out.detach())


@pytest.mark.parametrize("cls", [DeepLabV2, DeepLabV3Plus, SmallSeg])
def test_bn_mode_train(cls):
    kw = _tiny(cls)
    model = cls(num_classes=3, bn_mode="train", **kw).train()
    assert all(p.requires_grad for bn in batchnorms(model) for p in bn.parameters())
    before = _stats(model)
    model(torch.randn(2, 3, 64, 64))
    assert all(_changed(before, model))



def test_small_bn_scope_backbone_freezes_only_the_backbone():
    """MiniCity's setting: backbone BN frozen (statistics of the pretraining), head BN ordinary."""
    model = SmallSeg(num_classes=3, bn_mode="frozen", bn_scope="backbone").train()
    back = [bn for m in model.backbone_modules() for bn in batchnorms(m)]
    head = [bn for bn in batchnorms(model) if all(bn is not b for b in back)]
    assert back and head
    assert all(not bn.training and not bn.weight.requires_grad for bn in back)
    assert all(bn.training and bn.weight.requires_grad for bn in head)
    before = _stats(model)
    model(torch.randn(2, 3, 64, 64))
    changed = dict(zip(map(id, batchnorms(model)), _changed(before, model), strict=True))
    assert not any(changed[id(bn)] for bn in back) and all(changed[id(bn)] for bn in head)
    with pytest.raises(ValueError, match="bn_scope"):
        SmallSeg(num_classes=3, bn_scope="head")


def test_small_head_norm_gn_leaves_no_batch_statistics_to_adapt():
    """MiniCity's net: frozen backbone BN + GroupNorm head. A train-mode forward of any batch changes no
    statistic, and a sample's output does not depend on the other images of its batch."""
    torch.manual_seed(0)
    model = SmallSeg(num_classes=3, bn_mode="frozen", bn_scope="backbone", head_norm="gn").train()
    head_bn = [m for part in (model.context, model.low, model.fuse) for m in part.modules()
               if isinstance(m, torch.nn.BatchNorm2d)]
    assert not head_bn and any(isinstance(m, torch.nn.GroupNorm) for m in model.fuse.modules())
    before = _stats(model)
    x = torch.randn(3, 3, 64, 64)
    out = model(x).logits
    assert not any(_changed(before, model))
    alone = model(x[:1]).logits  # the first image without the other two
    torch.testing.assert_close(alone, out[:1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="head_norm"):
        SmallSeg(num_classes=3, head_norm="ln")

def test_bn_mode_defaults_and_invalid():
    assert DeepLabV2(layers=TINY).bn_mode == "frozen_affine"
    assert DeepLabV3Plus(layers=TINY3).bn_mode == "train"
    with pytest.raises(ValueError, match="bn_mode"):
        DeepLabV2(layers=TINY, bn_mode="sync")


# --------------------------------------------------------------------------- parameter groups


@pytest.mark.parametrize(
    "factory",
    [
        lambda: DeepLabV2(3, aux=True, layers=TINY),
        lambda: DeepLabV2(3, bn_mode="train", layers=TINY),
        lambda: DeepLabV3Plus(3, layers=TINY3),
        lambda: DeepLabV3Plus(3, bn_mode="frozen", output_stride=8, layers=TINY3),
        lambda: SmallSeg(3, aux=True),
        lambda: SmallSeg(3, bn_mode="frozen_affine"),
    ],
)
def test_parameter_groups_cover_trainable_once(factory):
    model = factory()
    groups = model.parameter_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    assert {g["name"]: g["lr_mult"] for g in groups} == {"backbone": 1.0, "head": 10.0}
    head = {id(p) for g in groups if g["name"] == "head" for p in g["params"]}
    classifier = model.layer6 if isinstance(model, DeepLabV2) else model.classifier
    assert all(id(p) in head for p in classifier.parameters())
    torch.optim.SGD(groups, lr=0.1)  # the groups are valid optimiser input


# --------------------------------------------------------------------------- discriminators


def test_output_space_discriminator():
    d = build_discriminator("output_space", 19)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.LeakyReLU) for m in d.modules()) == 4
    assert d(torch.rand(2, 19, 64, 128)).shape == (2, 1, 2, 4)


def test_feature_discriminator():
    d = build_discriminator("feature", 256)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert all(c.kernel_size == (3, 3) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    acts = [type(m) for m in d.net if not isinstance(m, nn.Conv2d)]
    assert acts == [nn.ReLU, nn.ReLU, nn.ReLU, nn.LeakyReLU]  # CAG-UDA paper §4.2
    assert d(torch.randn(2, 256, 64, 64)).shape == (2, 1, 2, 2)
    leaky = build_discriminator("feature", 8, all_leaky=True)
    assert sum(isinstance(m, nn.LeakyReLU) for m in leaky.modules()) == 4
    with pytest.raises(ValueError, match="valid"):
        build_discriminator("patchgan", 3)


# --------------------------------------------------------------------------- factory


def test_build_model_names_options_and_warning():
    with pytest.raises(ValueError, match="deeplabv2_r101"):
        build_model("deeplabv4")
    with pytest.raises(ValueError, match="aspp_two_branch"):
        build_model("deeplabv2_r101", aspp_too_branch=True)
    with pytest.warns(UserWarning, match="will not match the papers"):
        model = build_model("deeplabv2_r101", num_classes=7, layers=TINY, aspp_two_branch=True)
    assert isinstance(model, DeepLabV2) and model.layer6.two_branch and model.init_report is None
    with pytest.warns(UserWarning, match="will not match"):
        build_model("deeplabv3plus_r101", layers=TINY3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(build_model("small", 19), SmallSeg)


# --------------------------------------------------------------------------- weight import


def _assert_same(model, reference: dict, prefix: str = "", skip=("layer5.", "layer6.", "fc.")):
    own = model.state_dict()
    checked = 0
    for k, v in reference.items():
        if k.startswith(skip) or k.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(own[prefix + k], v, rtol=0, atol=0)
        checked += 1
    return checked


def test_caffe_deeplab_round_trip(tmp_path, v2_full):
    src = {k: v for k, v in v2_full.state_dict().items() if not k.startswith(("layer5.", "layer6."))}
    src = {k: v for k, v in src.items() if not k.endswith("num_batches_tracked")}  # old Caffe conversion
    caffe = {"Scale." + k: v for k, v in src.items()}
    for i in range(4):  # the init's 21-class COCO head (2048-d, dilations 6/12/18/24)
        caffe[f"Scale.layer5.conv2d_list.{i}.weight"] = torch.randn(21, 2048, 3, 3)
        caffe[f"Scale.layer5.conv2d_list.{i}.bias"] = torch.randn(21)
    path = tmp_path / "DeepLab_resnet_pretrained_init.pth"
    torch.save(caffe, path)
    torch.manual_seed(1)
    fresh = DeepLabV2(num_classes=4, aux=True)
    head_before = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith(("layer5", "layer6"))}
    report = load_init(fresh, path, "caffe_deeplab")
    assert _assert_same(fresh, src) == len(src) > 500
    for k, v in head_before.items():  # heads keep their fresh init
        assert torch.equal(fresh.state_dict()[k], v)
    assert len(report.skipped) == 8 and all(".layer5." in k for k in report.skipped)
    assert len(report.loaded) == len(src) and report.normalization == "caffe"


def test_torchvision_round_trip(tmp_path):
    import torchvision

    torch.manual_seed(2)
    tv = torchvision.models.resnet101(weights=None).state_dict()
    path = tmp_path / "resnet101.pth"
    torch.save(tv, path)
    model = quiet(build_model, "deeplabv3plus_r101", num_classes=3, init_weights=path)
    assert _assert_same(model, tv, prefix="backbone.") > 500
    assert model.init_report.skipped == ["fc.bias", "fc.weight"]
    assert model.init_report.normalization == "imagenet"
    # The same file refused as a Caffe init: same names and shapes, different layout.
    with pytest.raises(ValueError, match="torchvision"):
        load_init(DeepLabV2(layers=TINY), path, "caffe_deeplab")


def test_wrong_layout_rejected_with_keys(tmp_path):
    model = DeepLabV2(num_classes=3, layers=TINY)
    state = {"Scale." + k: v for k, v in model.state_dict().items()}
    del state["Scale.layer3.0.conv2.weight"]
    state["Scale.layer2.0.conv1.weight"] = torch.zeros(128, 256, 3, 3)
    state["Scale.layer9.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_init(model, path, "caffe_deeplab")
    msg = str(err.value)
    assert "1 missing keys" in msg and "layer3.0.conv2.weight" in msg
    assert "1 unexpected keys" in msg and "layer9.weight" in msg
    assert "1 shape mismatches" in msg and "layer2.0.conv1.weight" in msg and str(path) in msg
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    # A Caffe file offered as torchvision, and a non-state-dict file.
    caffe_ok = tmp_path / "caffe.pth"
    torch.save({"Scale." + k: v for k, v in model.state_dict().items()}, caffe_ok)
    with pytest.raises(ValueError, match="Scale"):
        load_init(DeepLabV3Plus(layers=TINY3), caffe_ok, "torchvision")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_init(model, tmp_path / "junk.pth", "caffe_deeplab")
    with pytest.raises(ValueError, match="init for DeepLabV2"):
        load_init(SmallSeg(), caffe_ok, "caffe_deeplab")
    with pytest.raises(ValueError, match="valid"):
        load_init(model, caffe_ok, "caffe")


def test_native_round_trip_and_missing_file(tmp_path):
    torch.manual_seed(3)
    a = SmallSeg(num_classes=5, aux=True)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in a.state_dict().items()}}, path)
    b = build_model("small", num_classes=5, aux=True, init_weights=path)
    assert _assert_same(b, a.state_dict(), skip=()) == len(a.state_dict()) - len(batchnorms(a))
    with pytest.raises(ValueError, match="unexpected keys"):
        build_model("small", num_classes=5, init_weights=path)  # no aux head to take aux_classifier.*
    missing = tmp_path / "nowhere" / "DeepLab_resnet_pretrained_init-f81d91e8.pth"
    with pytest.raises(FileNotFoundError) as err:
        build_model("deeplabv2_r101", layers=TINY, init_weights=missing)
    assert str(missing) in str(err.value) and "nothing is downloaded" in str(err.value)


# --------------------------------------------------------------------------- the small model learns


def _scenes(n, h, w, classes, gen):
    """Street-like toy scenes: horizontal bands plus random boxes, one colour per class plus noise."""
    palette = torch.rand(classes, 3, generator=gen)
    labels = torch.zeros(n, h, w, dtype=torch.long)
    for i in range(n):
        cuts = sorted(torch.randint(1, h, (3,), generator=gen).tolist())
        for c, (y0, y1) in zip(torch.randint(0, classes, (4,), generator=gen).tolist(),
                               zip([0] + cuts, cuts + [h])):
            labels[i, y0:y1] = c
        for _ in range(6):  # "objects": boxes of random class, size and place
            y, x = (int(torch.randint(0, s - 8, (1,), generator=gen)) for s in (h, w))
            labels[i, y:y + 8 + y % 8, x:x + 4 + x % 12] = torch.randint(0, classes, (1,), generator=gen)
    images = palette[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(n, 3, h, w, generator=gen)
    return images, labels


def test_small_model_learns_19_classes():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x, y = _scenes(4, 64, 128, 19, gen)
    model = SmallSeg(num_classes=19)
    opt = torch.optim.SGD([{**g, "lr": 0.02 * g["lr_mult"]} for g in model.parameter_groups()], momentum=0.9)
    for _ in range(60):
        logits = F.interpolate(model(x).logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = F.interpolate(model.eval()(x).logits, size=y.shape[-2:], mode="bilinear").argmax(1)
    assert (pred == y).float().mean() > 0.9
