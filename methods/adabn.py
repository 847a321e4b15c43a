"""AdaBN (Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation", ICLR workshop 2017): the
source-only model with every BatchNorm layer's statistics re-estimated on unlabelled target images, its weights
unchanged. In uda-bench it is the baseline that says how much of a method's gain target BN statistics alone give:
a method that forwards target batches through a network in training mode (every adversarial one) gets some of it
for free. Shares the source_only row's training stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods import source_only
from methods.base import Method, Stage, param, reads

VERSION = "1"


@dataclass
class Config(source_only.Config):
    bn_images: int = param(200, "harness", "target-train images whose statistics replace the source's (the paper "
                           "uses the whole target set; 200 of MiniCity's keep the stage under a minute on a CPU)")
    bn_batch_size: int = param(8, "harness", "images per forward pass; the statistics average over the passes")


def target_bn_statistics(model: torch.nn.Module, batches) -> int:
    """AdaBN (Li et al. 2017, Alg. 1): every BN layer's mean and variance become those of the target ``batches``
    (an iterable of image tensors [N, 3, H, W]): running statistics reset, then a cumulative average (momentum
    None) over one forward pass per batch in training mode, without gradients; γ and β are untouched. Returns the
    number of BN layers; the model is left in eval mode."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for m in layers:  # a model whose BN is frozen (bn_mode="frozen") keeps its BN in eval mode under .train()
        m.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return len(layers)


def recalibrate(p: dict, ctx) -> dict:
    """Stage ``adabn.recalibrate``: the upstream ``model`` with target-train BN statistics (plain images, the
    first ``bn_images`` in the dataset's fixed order: no randomness)."""
    from bench.fsio import unique_tmp
    from bench.train import MODEL_FILE

    model = ctx.load_model("model").to(ctx.device)
    ds = ctx.dataset("target_train", plain=True, labels=False)
    n = min(p["bn_images"], len(ds))
    starts = range(0, n, p["bn_batch_size"])
    batches = (torch.stack([ds[i]["image"] for i in range(s, min(s + p["bn_batch_size"], n))]).to(ctx.device)
               for s in starts)
    layers = target_bn_statistics(model, batches)
    tmp = unique_tmp(ctx.out_dir / MODEL_FILE)
    torch.save({"segmenter": model.state_dict()}, tmp)
    tmp.replace(ctx.out_dir / MODEL_FILE)
    ctx.copy_model_spec("model")
    return {"bn_images": n, "bn_layers": layers}


def stages(cfg: Config) -> list[Stage]:
    trained = source_only.train_stage(cfg)  # the source_only row's stage: the same key, computed once
    return [trained, Stage("adabn.recalibrate", "fit", recalibrate, reads(cfg, "bn_images", "bn_batch_size"),
                           upstream={"model": trained}, datasets=("target_train",), version=VERSION)]


METHOD = Method("adabn", Config, stages)
