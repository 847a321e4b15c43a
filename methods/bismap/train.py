"""BiSMAP's train stages: self-training (Eq. 13 = STM-weighted source CE, Eq. 10 + SCE on the target
pseudo-labels, Eq. 11 + λ·ramp·EMA-teacher consistency, Eq. 12) and the distillation rounds (the same source and
target terms + the KD term against the previous model; no consistency). The trainer steps the one optimiser; the
EMA teacher is a module no optimiser owns (so it is checkpointed), updated after each step (``after_step``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.bismap import augment as aug
from methods.bismap import equations as bm
from methods.bismap.labels import native_for, source_tree
from methods.source_only import segmentation_ce
from methods.training import Parts, stage_result, train_segmenter


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """The mean teacher of Eq. 12 (BiSMAP §3.5, Tarvainen & Valpola): θ' ← m·θ' + (1 − m)·θ for every parameter,
    buffers (BN statistics) copied from the student, as the code's ``ema_update``. Called once per iteration
    (the code updates before the forward of iteration t, here after step t−1: the same sequence)."""
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(momentum).add_(ps.detach(), alpha=1.0 - momentum)
    for bt, bs in zip(teacher.buffers(), student.buffers(), strict=True):
        bt.copy_(bs)


def make_teacher(student: nn.Module) -> nn.Module:
    """The EMA teacher: a frozen copy, forwarded in train mode (batch-statistics BN) with its dropouts in eval,
    as the code runs ``BaseNet_ema``."""
    teacher = copy.deepcopy(student).requires_grad_(False).train()
    for m in teacher.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    return teacher


def _up(logits: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=True)


def step_generator(seed: int, it: int) -> torch.Generator:
    """The augmentation draws of iteration ``it``: reproducible, and the same after a resume."""
    state = np.random.SeedSequence([int(seed), int(it), 0xB15]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def bismap_losses(model, p: dict, seed: int, norm: str, teacher=None, kd_teacher=None):
    """The trainer's ``losses`` for one BiSMAP train stage. Terms (all for the "segmenter" optimiser):
    ce_s (Eq. 10 with the STM when the source batch has "weight", else Eq. 2), sce_t (Eq. 11, when the target
    batch has pseudo-labels), consist (λ·ramp(t)·Eq. 12, with ``teacher``), kd (``kd_weight``·KD, with
    ``kd_teacher``). Views: source and target crops colour-jittered (weak); for the consistency term the strong
    view φ = RandAugment + CutOut goes to the teacher with the student on the weak view (paper) or to the
    student with the teacher on the weak view and the KL outside the cut-out only (code)."""

    def losses(batch, it):
        gen = step_generator(seed, it)
        src = batch["source"]
        out_s = model(aug.color_jitter(src["image"], p["jitter_source"], norm, gen))
        terms = {"ce_s": bm.stm_weighted_ce(out_s.logits, src["label"], src["weight"]) if "weight" in src
                 else segmentation_ce(out_s.logits, src["label"])}
        tgt = batch.get("target_train")
        if tgt is None:
            return {"segmenter": terms}
        size = tgt["image"].shape[-2:]
        weak = aug.color_jitter(tgt["image"], p["jitter_target"], norm, gen)
        out_t = model(weak)
        if p["pseudo_labels"]:
            terms["sce_t"] = bm.symmetric_cross_entropy(out_t.logits, tgt["label"], p["sce_alpha"], p["sce_beta"],
                                                        p["sce_clamp"])
        if teacher is not None:
            n, m = p["randaugment"]
            code = p["consistency_views"] == "code"
            strong, cut = aug.strong_view(tgt["image"] if code else weak, norm, n, m, p["cutout_fraction"], gen)
            with torch.no_grad():
                t_logits = teacher(weak if code else strong).logits
            s_logits = model(strong).logits if code else out_t.logits
            lam = p["consistency_weight"] * bm.consistency_rampup(it, p["rampup_iters"])
            terms["consist"] = lam * bm.consistency_kl(_up(s_logits, size), _up(t_logits, size),
                                                       ~cut if code else None, p["consistency_reduction"])
        if kd_teacher is not None:
            with torch.no_grad():
                q = kd_teacher(weak).logits
            terms["kd"] = p["kd_weight"] * bm.distillation_kd(_up(out_t.logits, size), _up(q, size), p["kd"])
        return {"segmenter": terms}

    return losses


def train_options(p: dict, dataset: str, domain: str) -> dict:
    """The transform overrides of a BiSMAP train stage for ``domain`` (a ``dataset`` name): native resolution
    (SYNTHIA source: ``synthia_resize``), the random scale, the crop and the flip."""
    res = native_for(dataset, p["native_resolution"], p["synthia_resize"] if domain == "source" else None)
    return {**res, "scale": p["scale_range"], "crop": p["crop"], "flip": p["hflip"]}


def train_bismap(p: dict, ctx) -> dict:
    """Stages ``bismap.self_train`` and ``bismap.distill`` (``p["mode"]``): the model from ``p["init"]``
    (ImageNet weights, or the warm-up model), the GPA source (with STM weights when the stage reads an STM), the
    target with the upstream label stage's pseudo-labels, and the terms of :func:`bismap_losses`."""
    if p["eta_min"] != 0:
        raise ValueError(f"eta_min: {p['eta_min']}; the harness's poly schedule decays to 0 (bench.schedule has no "
                         "floor), so only 0 is accepted")
    sizes = {"source": p["batch_source"]}
    if "labels" in ctx.inputs or p["consistency"]:
        sizes["target_train"] = p["batch_target"]
    weights = p["student_weights"] or p["init_weights"]
    fit = train_segmenter(p, ctx, lambda model: _parts(p, ctx, model, "target_train" in sizes), sizes,
                          init_weights=weights)
    return {**stage_result(fit), "init": "warmup" if p["init"] == "warmup" else str(weights or "random"),
            "stm": "stm" in ctx.inputs,
            "terms": sorted(k.split("/")[-1] for k in fit["metrics"] if k.startswith("loss/segmenter/"))}


def _parts(p: dict, ctx, model, target: bool) -> Parts:
    """Around the segmenter: the (STM-weighted) GPA source, the (pseudo-labelled) target when ``target``, the EMA
    teacher (consistency) and the frozen KD teacher (distillation)."""
    from bench.pseudo import LABEL_DIR, with_pseudo_labels
    from methods.bismap.stm import WEIGHT_DIR, Weighted

    src = ctx.dataset("source", root=source_tree(ctx),
                      options=train_options(p, ctx.dataset_specs["source"]["name"], "source"))
    datasets = {"source": Weighted(src, ctx.inputs["stm"] / WEIGHT_DIR) if "stm" in ctx.inputs else src}
    if target:
        tgt = ctx.dataset("target_train", labels=False,
                          options=train_options(p, ctx.dataset_specs["target_train"]["name"], "target_train"))
        datasets["target_train"] = with_pseudo_labels(tgt, ctx.inputs["labels"] / LABEL_DIR) \
            if "labels" in ctx.inputs else tgt
    modules, teacher, kd_teacher = {}, None, None
    if p["consistency"]:
        teacher = modules["ema_teacher"] = make_teacher(model)
    if p["mode"] == "distill":  # frozen, outside the trainer's modules: it is rebuilt from its stage, not checkpointed
        kd_teacher = ctx.load_model("teacher").to(ctx.device).eval().requires_grad_(False)
    p_loss = {**p, "pseudo_labels": "labels" in ctx.inputs}
    losses = bismap_losses(model, p_loss, ctx.seed, src.transform.normalize, teacher, kd_teacher)
    after = (lambda it: ema_update(teacher, model, p["ema_momentum"])) if teacher else None
    return Parts(losses, datasets, modules, after_step=after)
