"""AdaptSegNet (Tsai et al., CVPR 2018): multi-level output-space adversarial adaptation — a baseline in the
tables and the inter-domain model of PixIntraDA. Also the shared adversarial losses other methods reuse.

Per iteration (AdaptSegNet's ``train_gta2cityscapes_multi.py``): the segmenter minimises the source
cross-entropy (main + λ_seg_aux·aux) plus λ_adv·BCE(D(softmax(target)), source label) per level; each
discriminator minimises ½·BCE(D(softmax(source)), 0) + ½·BCE(D(softmax(target)), 1) on detached predictions.
Predictions are upsampled to the input size before the discriminator. The trainer keeps the two updates
apart (the generator term never reaches the discriminator's gradients and vice versa).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.data.labels import NUM_CLASSES
from methods.base import Method, Stage, param, reads
from methods.source_only import AdaptSegNetSchedule, segmentation_ce
from methods.training import DOMAINS, Parts, discriminator_spec, stage_result, train_segmenter

VERSION = "1"
SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0  # AdaptSegNet's domain labels


@dataclass
class Config(AdaptSegNetSchedule):
    model: str = param("deeplabv2_r101", "paper", "DeepLab-v2 R101 with the layer3 aux head (DeeplabMulti)")
    model_options: dict = param({"bn_mode": "frozen_affine", "aux": True}, "code")
    init_weights: str | None = param(None, "harness", "local DeepLab init (ImageNet/COCO); training starts from it")
    aux_weight: float = param(0.1, "paper", "λ_seg for the layer3 head")
    lambda_adv_main: float = param(0.001, "paper", "λ_adv for the main output")
    lambda_adv_aux: float = param(0.0002, "paper", "λ_adv for the aux output")
    d_lr: float = param(1e-4, "paper", "discriminator Adam, betas (0.9, 0.99), same poly")
    d_channels: tuple = param((64, 128, 256, 512), "code", "discriminator widths (4×4 convs, stride 2); MiniCity "
                              "uses narrower ones to fit a CPU")
    gan: str = param("vanilla", "paper", "vanilla = BCE with logits; ls = least squares (the README's single-level "
                     "option)")


def adversarial_loss(d_out: torch.Tensor, domain_label: float, gan: str = "vanilla") -> torch.Tensor:
    """AdaptSegNet Eq. 2 / Eq. 4: mean BCE-with-logits (or least squares for ``gan="ls"``) of discriminator
    logits ``d_out [N,1,h,w]`` against a constant domain label (source 0, target 1)."""
    if gan not in ("vanilla", "ls"):
        raise ValueError(f"gan={gan!r}; valid: vanilla, ls")
    target = torch.full_like(d_out, domain_label)
    if gan == "ls":
        return F.mse_loss(d_out.float(), target.float())
    return F.binary_cross_entropy_with_logits(d_out.float(), target.float())


def upsampled_softmax(logits: torch.Tensor, size) -> torch.Tensor:
    """The discriminator's input: softmax of the logits bilinearly upsampled to the input size."""
    if logits.shape[-2:] != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)
    return F.softmax(logits.float(), dim=1)


def output_space_losses(model, discriminators: dict, weights: dict, aux_weight: float, gan: str = "vanilla",
                        source: str = "source", target: str = "target_train", d_input=upsampled_softmax,
                        d_upsample: bool = False):
    """The trainer's ``losses`` for multi-level output-space adversarial training.

    ``discriminators`` maps a level ("main", "aux") to its module name in the trainer; ``weights`` the level to
    its λ_adv. ``d_input(logits, size)`` makes D's input (default the upsampled softmax; ADVENT/IntraDA feed the
    weighted self-information map); ``d_upsample`` upsamples D's logits to the input size before the BCE (as
    PixIntraDA's Table 4 runs IntraDA). Returns ``{"segmenter": {...}, "discriminator": {...}}``.
    """

    def judge(d, x):
        out = d(x)
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=True) if d_upsample else out

    def losses(batch, it):
        src, tgt = batch[source], batch[target]
        out_s, out_t = model(src["image"]), model(tgt["image"])
        seg = {"ce": segmentation_ce(out_s.logits, src["label"])}
        if out_s.aux is not None and aux_weight > 0:
            seg["ce_aux"] = aux_weight * segmentation_ce(out_s.aux, src["label"])
        disc = {}
        size_s, size_t = src["image"].shape[-2:], tgt["image"].shape[-2:]
        for level, d in discriminators.items():
            ps = d_input(out_s.logits if level == "main" else out_s.aux, size_s)
            pt = d_input(out_t.logits if level == "main" else out_t.aux, size_t)
            seg[f"adv_{level}"] = weights[level] * adversarial_loss(judge(d, pt), SOURCE_LABEL, gan)
            disc[f"d_{level}"] = 0.5 * (adversarial_loss(judge(d, ps.detach()), SOURCE_LABEL, gan)
                                        + adversarial_loss(judge(d, pt.detach()), TARGET_LABEL, gan))
        return {"segmenter": seg, "discriminator": disc}

    return losses


def level_weights(p: dict, main: str, aux: str) -> dict:
    """λ per output level: ``p[main]`` for the main output, and ``p[aux]`` for the layer3 head when the model has
    one (multi-level adaptation)."""
    return {"main": p[main], **({"aux": p[aux]} if p["model_options"].get("aux") else {})}


def output_space_discriminators(p: dict, levels) -> tuple[dict, dict, dict]:
    """One AdaptSegNet discriminator per output level (widths ``p["d_channels"]``): ``{level: module}``, and the
    trainer's modules ``{"d_<level>": module}`` and optimisers ``{"discriminator": Adam over them}``."""
    from bench.models import build_discriminator

    by_level = {lv: build_discriminator("output_space", NUM_CLASSES, channels=tuple(p["d_channels"])) for lv in levels}
    modules = {f"d_{lv}": d for lv, d in by_level.items()}
    return by_level, modules, {"discriminator": discriminator_spec(list(modules), p)}


def train_adaptsegnet(p: dict, ctx) -> dict:
    """Stage ``adaptsegnet.train``: segmenter and discriminators trained jointly from the initial weights."""
    levels = level_weights(p, "lambda_adv_main", "lambda_adv_aux")

    def parts(model):
        discs, modules, optimizers = output_space_discriminators(p, levels)
        datasets = {"source": ctx.dataset("source", root=source_images_root(p, ctx)),
                    "target_train": ctx.dataset("target_train", labels=False)}
        return Parts(output_space_losses(model, discs, levels, p["aux_weight"], p["gan"]), datasets, modules,
                     optimizers)

    return stage_result(train_segmenter(p, ctx, parts, dict.fromkeys(DOMAINS, p["batch_size"])))


def source_images_root(p: dict, ctx):
    """Where the source images come from: an upstream ``source_tree`` stage's ``tree/`` (e.g. the GPA-stylised
    source), a user-provided tree (``p["source_root"]``), or None = the suite's source."""
    from bench.paths import resolve_root

    if "source_tree" in ctx.inputs:
        return ctx.inputs["source_tree"] / "tree"
    if p.get("source_root"):
        root = resolve_root(p["source_root"])
        if not root.is_dir():
            raise FileNotFoundError(f"source_root {p['source_root']!r}: {root} is not a directory")
        return root
    return None


def train_stage(cfg: Config, source_tree: Stage | None = None, source_root: str | None = None) -> Stage:
    """The ``adaptsegnet.train`` stage. By default it reads the suite's source; ``source_tree`` (a data stage writing
    a mirror of the source tree at ``<out>/tree``, e.g. ``methods.gpa.gpa_stage()``) or ``source_root`` (a tree with
    the source's layout) replace the source images. The option enters the key only when used, so the plain stage
    keeps its key."""
    if source_tree is not None and source_root is not None:
        raise ValueError("adaptsegnet.train: give source_tree or source_root, not both")
    params = reads(cfg, *Config.__dataclass_fields__)
    upstream = {}
    if source_tree is not None:
        upstream["source_tree"] = source_tree
    if source_root is not None:
        params["source_root"] = str(source_root)
    return Stage("adaptsegnet.train", "train", train_adaptsegnet, params, upstream=upstream,
                 datasets=("source", "target_train"), version=VERSION)


def stages(cfg: Config) -> list[Stage]:
    return [train_stage(cfg)]


# ------------------------------------------------------------------------ feature-level (FCNs in the wild)
def feature_adversarial_losses(model, discriminator, feature: str, weight: float, gan: str = "vanilla",
                               source: str = "source", target: str = "target_train"):
    """Global feature-level alignment (Hoffman et al., "FCNs in the wild", as CAG-UDA's warm-up uses it):
    source CE + ``weight``·BCE(D(f_t), source label) for the segmenter; ½·(BCE(D(f_s), 0) + BCE(D(f_t), 1)) on
    detached features for the discriminator."""

    def losses(batch, it):
        src, tgt = batch[source], batch[target]
        out_s, out_t = model(src["image"]), model(tgt["image"])
        fs, ft = out_s.features[feature], out_t.features[feature]
        seg = {"ce": segmentation_ce(out_s.logits, src["label"]),
               "adv": weight * adversarial_loss(discriminator(ft), SOURCE_LABEL, gan)}
        disc = {"d": 0.5 * (adversarial_loss(discriminator(fs.detach()), SOURCE_LABEL, gan)
                            + adversarial_loss(discriminator(ft.detach()), TARGET_LABEL, gan))}
        return {"segmenter": seg, "discriminator": disc}

    return losses


def feature_channels(model, feature: str) -> int:
    """Channels of ``model``'s named feature map (one tiny forward in eval mode)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    model.train(was)
    if feature not in out.features:
        raise KeyError(f"the model has no feature {feature!r}; it has {sorted(out.features)}")
    return out.features[feature].shape[1]


def train_feature_warmup(p: dict, ctx) -> dict:
    """Stage ``adversarial.feature_warmup``: from the upstream ``init`` model, source CE + global feature-level
    adversarial alignment on source and target images (``p``: feature, adv_weight, d_channels, d_all_leaky,
    iters, horizon, batch_size, lr, momentum, weight_decay, power, d_lr; optional gan (default vanilla) and
    head_lr_mult (default: the model's own head multiplier), absent when default so older keys stay valid)."""
    from bench.models import build_discriminator

    def parts(model):
        disc = build_discriminator("feature", feature_channels(model, p["feature"]), channels=tuple(p["d_channels"]),
                                   all_leaky=p["d_all_leaky"])
        losses = feature_adversarial_losses(model, disc, p["feature"], p["adv_weight"], p.get("gan", "vanilla"))
        datasets = {"source": ctx.dataset("source"), "target_train": ctx.dataset("target_train", labels=False)}
        return Parts(losses, datasets, {"discriminator": disc},
                     {"discriminator": discriminator_spec("discriminator", p)})

    return stage_result(train_segmenter(p, ctx, parts, dict.fromkeys(DOMAINS, p["batch_size"])))


METHOD = Method("adaptsegnet", Config, stages)
