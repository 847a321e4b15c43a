"""Source-only: a segmenter trained with pixel-wise cross-entropy on labelled source images (Eq. 1 of
AdaptSegNet / Eq. 2 of BiSMAP), evaluated on the target. The target oracle (``methods.oracle``) is the same
training on the target's own labels. Every method that starts from a source-only model uses this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.data.labels import IGNORE
from methods.base import Method, Stage, param, reads
from methods.training import ADAPTSEGNET, ADAPTSEGNET_NOTES, SCHEDULE, Parts, schedule, stage_result, train_segmenter

# AdaptSegNet's schedule as AdaptSegNet states it (its paper, else its code); adversarial.Config has it too
AdaptSegNetSchedule = schedule(**ADAPTSEGNET, source="code", notes=ADAPTSEGNET_NOTES,
                               sources=dict.fromkeys(("lr", "momentum", "power"), "paper"))


@dataclass
class Config(AdaptSegNetSchedule):
    train_domain: str = param("source", "harness", "which labelled dataset to train on: source | target_train")
    model: str = param("deeplabv2_r101", "paper", "DeepLab-v2 R101 as AdaptSegNet/ADVENT")
    model_options: dict = param({"bn_mode": "frozen_affine", "aux": True}, "code",
                                "AdaptSegNet: affine-frozen BN with batch statistics; layer3 aux head")
    init_weights: str | None = param(None, "harness", "local path to the DeepLab init (ImageNet/COCO)")
    aux_weight: float = param(0.1, "code", "λ_seg of the layer3 head (AdaptSegNet multi-level)")


def segmentation_ce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross-entropy (AdaptSegNet Eq. 1): logits upsampled bilinearly to the label size,
    mean over non-ignore pixels. Returns 0 (with a graph) when a batch has no labelled pixel."""
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=True)
    if not (label != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), label, ignore_index=IGNORE)


def supervised_losses(model, domain: str, aux_weight: float):
    """The trainer's ``losses`` for supervised training of ``model`` on ``batch[domain]``."""

    def losses(batch, it):
        b = batch[domain]
        out = model(b["image"])
        terms = {"ce": segmentation_ce(out.logits, b["label"])}
        if out.aux is not None and aux_weight > 0:
            terms["ce_aux"] = aux_weight * segmentation_ce(out.aux, b["label"])
        return {"segmenter": terms}

    return losses


VERSION = "1"
TRAIN_FIELDS = ("train_domain", "model", "model_options", "init_weights", *SCHEDULE, "aux_weight")


def train_supervised(p: dict, ctx) -> dict:
    """Stage ``source_only.train``: supervised training on ``ctx.dataset(p["train_domain"])`` — read from the
    upstream ``source_tree``'s ``tree/`` mirror when the stage has one (e.g. GPA-stylised source)."""
    domain = p["train_domain"]
    root = ctx.inputs["source_tree"] / "tree" if "source_tree" in ctx.inputs else None

    def parts(model):
        return Parts(supervised_losses(model, domain, p["aux_weight"]), {domain: ctx.dataset(domain, root=root)})

    fit = train_segmenter(p, ctx, parts, {domain: p["batch_size"]})
    return {**stage_result(fit), "resumed_from": fit["resumed_from"]}


def train_stage(cfg: Config, source_tree: Stage | None = None) -> Stage:
    """The shared supervised-training stage; any method whose Config has these fields can start from it.
    ``source_tree``: a data stage writing a mirror of the source tree under ``tree/`` (e.g. ``gpa.source``, for
    BiSMAP's warm-up on GPA-stylised images); it becomes the upstream ``source_tree`` and enters the key. Without
    it the stage and its key are exactly the plain one that every method shares."""
    upstream = {}
    if source_tree is not None:
        if cfg.train_domain != "source":
            raise ValueError(f"train_domain {cfg.train_domain!r}: a source_tree replaces the source only")
        upstream = {"source_tree": source_tree}
    return Stage("source_only.train", "train", train_supervised, reads(cfg, *TRAIN_FIELDS), upstream=upstream,
                 datasets=(cfg.train_domain,), version=VERSION)


def stages(cfg: Config) -> list[Stage]:
    return [train_stage(cfg)]


METHOD = Method("source_only", Config, stages)
