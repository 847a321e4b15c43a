"""CAG-UDA's stages (paper Alg. 1): source-only → warm-up → K × (anchors on source → target pseudo-labels →
training with Eq. 12). The equations live in ``methods.cag_uda.equations``; this module only wires them.

``variant="paper"`` (default): anchors from every GT source pixel with M_{k-1}, recomputed each stage; both
pseudo-label sets computed once per stage on the full target images and kept fixed (stored by a label
stage); pixel-level squared-L2 distance loss.

``variant="code"`` (the official implementation, reference/methods.md §1.8): anchors from correctly predicted
source pixels, image-averaged, computed once from the warm-up model and used by every stage; both pseudo-label
sets recomputed every iteration by the frozen M_{k-1} (eval mode) on the augmented target crop at the feature
grid; target CE at that grid; SmoothL1 class-mean distance loss. Its label stage is kept for the diagnostics
(ratio, precision on full images) and feeds nothing into training.
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.labels import IGNORE, NUM_CLASSES
from bench.metrics import class_argmax
from methods import source_only
from methods.adversarial import train_feature_warmup
from methods.base import Method, Paper, Stage, make_config
from methods.cag_uda import equations as cag
from methods.cag_uda.config import STUDIES, TABLES, Config, input_normalize
from methods.training import DOMAINS, SCHEDULE, Parts, schedule_params, stage_result, train_segmenter

VERSION = "1"


# ----------------------------------------------------------------------------------------------- fit
def _save_anchors(anchors: torch.Tensor, ctx) -> dict:
    torch.save(anchors.cpu(), ctx.out_dir / "anchors.pt")
    present = torch.isfinite(anchors).all(1)
    finite = anchors[present]
    d = torch.cdist(finite.double(), finite.double())
    d.fill_diagonal_(float("inf"))
    return {"anchor_classes": int(present.sum()), "anchor_norm_mean": float(finite.norm(dim=1).mean()),
            "anchor_nearest_other_mean": float(d.min(1).values.mean()) if len(finite) > 1 else float("nan")}


def native(ctx, domain: str, p: dict) -> dict:
    """Transform override reading ``domain`` at its native size when ``p["native_resolution"]`` (the paper's and
    the code's random resize starts from the file, not from the suite's resize)."""
    return {"resize": None} if p.get("native_resolution") else {}


def train_options(p: dict) -> dict:
    """The transform overrides of a ``cag_uda.train`` stage (both domains): the random resize from the native image
    (paper ×1–1.5, then a 1280×640 crop; code: width U(0.5, 1.5)·2200, then 896×512) and the flip."""
    aug = {"scale": p["resize_scale"], "crop": p["crop"], "flip": p["hflip"] > 0}
    if p.get("scale_base"):
        aug["scale_base"] = p["scale_base"]
    return {**({"resize": None} if p.get("native_resolution") else {}), **aug}


def _source_passes(p: dict, ctx):
    """(model output, features, GT on the feature grid) for every source image, M_{k-1} in eval mode."""
    model = ctx.load_model("model").to(ctx.device).eval()
    ds = ctx.dataset("source", plain=True, options=native(ctx, "source", p))
    for i in range(len(ds)):
        item = ds[i]
        out = model(item["image"][None].to(ctx.device))
        feats = out.features[p["feature"]].float()
        yield out, feats, cag.labels_to_feature_grid(item["label"][None].to(ctx.device), tuple(feats.shape[-2:]))


@torch.no_grad()
def fit_anchors(p: dict, ctx) -> dict:
    """Stage ``cag_uda.anchors`` (Eq. 4): class means of f_D over all GT source pixels, M_{k-1} in eval mode."""
    acc = cag.AnchorAccumulator(NUM_CLASSES)
    for _, feats, labels in _source_passes(p, ctx):
        acc.update(feats, labels)
    return _save_anchors(acc.anchors(), ctx)


@torch.no_grad()
def fit_anchors_code(p: dict, ctx) -> dict:
    """Stage ``cag_uda.anchors_code``: the official code's anchors (``cag.CodeAnchorAccumulator``: pixels with
    GT = prediction = c, per-image means, a running mean capped at ``cap`` images)."""
    acc = cag.CodeAnchorAccumulator(NUM_CLASSES, p["min_pixels"], p["cap"])
    for out, feats, labels in _source_passes(p, ctx):
        acc.update(feats.cpu(), labels.cpu(), _grid_argmax(out.logits, feats).cpu())
    return _save_anchors(acc.anchors(), ctx)


def _grid_argmax(logits: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """The prediction on the feature grid (logits resized bilinearly when their grid differs)."""
    if logits.shape[-2:] != feats.shape[-2:]:
        logits = F.interpolate(logits.float(), size=tuple(feats.shape[-2:]), mode="bilinear", align_corners=True)
    return class_argmax(logits.detach())


# --------------------------------------------------------------------------------------------- label
@torch.no_grad()
def label_target(p: dict, ctx) -> dict:
    """Stage ``cag_uda.label``: with M_{k-1} and the stage's anchors, the anchor pseudo-labels (Eq. 5–7, at the
    feature grid, nearest-upsampled) and the probability pseudo-labels (P0, at full resolution) of every target
    train image, saved as label files; pseudo-label ratio and (where target labels exist, for diagnostics only)
    precision of both sets."""
    from bench.pseudo import LabelStats, predictions, save_label, upsample

    model = ctx.load_model("model").to(ctx.device)
    anchors = torch.load(ctx.inputs["anchors"] / "anchors.pt", weights_only=True).to(ctx.device)
    ds = ctx.dataset("target_train", plain=True, labels=False, options=native(ctx, "target_train", p))
    gt = ctx.ground_truth("target_train")
    gt_index = {s.name: i for i, s in enumerate(gt.samples)} if gt is not None else {}
    stats = {"anchor": LabelStats(), "prob": LabelStats()}
    for i, out, size in predictions(model, ds, ctx.device):
        feats = out.features[p["feature"]].float()
        pa = cag.anchor_pseudo_labels(feats, anchors, p["delta_d"], inclusive=p["tie_inclusive"])
        pa = F.interpolate(pa[:, None].float(), size=size, mode="nearest")[:, 0].to(torch.uint8)
        probs = torch.softmax(upsample(out.logits, size), 1)
        pp = cag.probability_pseudo_labels(probs, p["p0"]).to(torch.uint8)
        g = gt.raw(gt_index[ds.samples[i].name])[1] if ds.samples[i].name in gt_index else None
        for kind, lab in (("anchor", pa), ("prob", pp)):
            arr = lab[0].cpu().numpy().astype(np.uint8)
            save_label(ctx.out_dir / f"labels_{kind}", i, arr)
            stats[kind].update(arr, g)
    return {**stats["anchor"].summary("pl_"), **stats["prob"].summary("pl_prob_")}


# --------------------------------------------------------------------------------------------- train
class TwoLabels(torch.utils.data.Dataset):
    """The same target images with the anchor and the probability pseudo-labels, under one random transform."""

    def __init__(self, anchor_ds, prob_ds) -> None:
        self.a, self.b = anchor_ds, prob_ds

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, key):
        x, y = self.a[key], self.b[key]  # same key → same crop/flip (the transform is seeded per item)
        return {"image": x["image"], "label": x["label"], "label_prob": y["label"], "name": x["name"]}


def cag_losses(model, p: dict, anchors: torch.Tensor):
    """Eq. 12 (``cag.cag_objective``) with the terms in ``p["terms"]``: L^s_CE + λ1·(L^s_dis + L^t_dis) +
    λ2·(L^t_CE + L^tP_CE), the target CEs on the stored pseudo-labels (Eq. 9, 11: ``cag.pseudo_label_ce``)."""
    anchors = anchors.float()

    def losses(batch, it):
        src, tgt = batch["source"], batch["target_train"]
        terms = p["terms"]
        out_s = model(src["image"])
        parts = {"ce_s": source_only.segmentation_ce(out_s.logits, src["label"])}
        need_t = any(t in terms for t in ("dis_t", "ce_t", "ce_tp"))
        out_t = model(tgt["image"]) if need_t else None
        if "dis_s" in terms:
            f = out_s.features[p["feature"]]
            lab = src["label"]
            if p["dis_labels"] == "prob":  # L^sP_dis: GT pixels predicted with max probability > P0
                conf = torch.softmax(F.interpolate(out_s.logits.detach(), size=lab.shape[-2:], mode="bilinear",
                                                   align_corners=True), 1).amax(1)
                lab = torch.where(conf > p["p0"], lab, torch.full_like(lab, IGNORE))
            parts["dis_s"] = cag.anchor_distance_loss(f, cag.labels_to_feature_grid(lab, tuple(f.shape[-2:])),
                                                      anchors.to(f.device))
        if "dis_t" in terms:
            f = out_t.features[p["feature"]]
            lab = tgt["label"] if p["dis_labels"] == "anchor" else tgt["label_prob"]
            parts["dis_t"] = cag.anchor_distance_loss(f, cag.labels_to_feature_grid(lab, tuple(f.shape[-2:])),
                                                      anchors.to(f.device))
        if "ce_t" in terms:
            parts["ce_t"] = cag.pseudo_label_ce(out_t.logits, tgt["label"])
        if "ce_tp" in terms:
            parts["ce_tp"] = cag.pseudo_label_ce(out_t.logits, tgt["label_prob"])
        return {"segmenter": cag.cag_objective(parts, p["lambda1"], p["lambda2"])}

    return losses


@torch.no_grad()
def online_pseudo_labels(labeller, images: torch.Tensor, p: dict, anchors: torch.Tensor):
    """The code variant's labels for one target batch: the frozen M_{k-1} (eval mode) on the augmented crop,
    anchor labels (Eq. 5–7, a margin of exactly Δd kept as in the code) and probability labels (P0), both on the
    feature grid (1/4 of the crop for DeepLab-v3+). → (anchor labels, probability labels), int64 ``[N,h,w]``."""
    out = labeller(images)
    feats = out.features[p["feature"]].float()
    pa = cag.anchor_pseudo_labels(feats, anchors.to(feats.device), p["delta_d"], inclusive=p["tie_inclusive"])
    logits = out.logits.float()
    if logits.shape[-2:] != feats.shape[-2:]:
        logits = F.interpolate(logits, size=tuple(feats.shape[-2:]), mode="bilinear", align_corners=True)
    return pa, cag.probability_pseudo_labels(torch.softmax(logits, 1), p["p0"])


def code_losses(model, labeller, p: dict, anchors: torch.Tensor):
    """The official code's objective with the terms in ``p["terms"]``: Eq. 12's sum (``cag.cag_objective``) of
    CE_s + λ2·(CE_t + CE_tP) at the feature grid + λ1·(SmoothL1 class-mean distance on source and target);
    λ1 = 0.7, λ2 = 0.5 in the code."""
    anchors = anchors.float()
    dist = {"min_pixels": p["dis_min_pixels"], "clamp": p["dis_clamp"], "scale": p["dis_scale"],
            "grad_rescale": p["dis_grad_rescale"]}

    def losses(batch, it):
        src, tgt = batch["source"], batch["target_train"]
        terms = p["terms"]
        out_s = model(src["image"])
        parts = {"ce_s": source_only.segmentation_ce(out_s.logits, src["label"])}
        if any(t in terms for t in ("dis_t", "ce_t", "ce_tp")):
            out_t = model(tgt["image"])
            pa, pp = online_pseudo_labels(labeller, tgt["image"], p, anchors)
            f_t = out_t.features[p["feature"]]
        if "dis_s" in terms:
            f_s = out_s.features[p["feature"]]
            lab = cag.labels_to_feature_grid(src["label"], tuple(f_s.shape[-2:]))
            parts["dis_s"] = cag.code_distance_loss(f_s, lab, _grid_argmax(out_s.logits, f_s), anchors.to(f_s.device),
                                                    **dist)
        if "dis_t" in terms:
            lab = pa if p["dis_labels"] == "anchor" else pp
            parts["dis_t"] = cag.code_distance_loss(f_t, lab, _grid_argmax(out_t.logits, f_t), anchors.to(f_t.device),
                                                    **dist)
        if "ce_t" in terms:
            parts["ce_t"] = cag.pseudo_label_ce(out_t.logits, pa)
        if "ce_tp" in terms:
            parts["ce_tp"] = cag.pseudo_label_ce(out_t.logits, pp)
        return {"segmenter": cag.cag_objective(parts, p["lambda1"], p["lambda2"])}

    return losses


def train_adaptation(p: dict, ctx) -> dict:
    """Stage ``cag_uda.train``: M_k from M_{k-1} — with the stored target pseudo-labels and Eq. 12 (paper), or
    with labels recomputed online by a frozen copy of M_{k-1} and the code's objective (``p["online"]``)."""
    from bench.pseudo import with_pseudo_labels

    def parts(model):
        anchors = torch.load(ctx.inputs["anchors"] / "anchors.pt", weights_only=True)
        aug = train_options(p)
        target = ctx.dataset("target_train", labels=False, options=aug)
        datasets = {"source": ctx.dataset("source", options=aug)}
        if p["online"]:
            labeller = ctx.load_model("init").to(ctx.device).eval().requires_grad_(False)
            datasets["target_train"] = target
            return Parts(code_losses(model, labeller, p, anchors), datasets)
        labels = ctx.inputs["labels"]
        datasets["target_train"] = TwoLabels(with_pseudo_labels(target, labels / "labels_anchor"),
                                             with_pseudo_labels(target, labels / "labels_prob"))
        return Parts(cag_losses(model, p, anchors), datasets)

    return stage_result(train_segmenter(p, ctx, parts, dict.fromkeys(DOMAINS, p["batch_size"])))


# -------------------------------------------------------------------------------------------- stages
def pretrain_config(cfg: cag.Config, eff: dict) -> source_only.Config:
    values = {"model": eff["model"], "model_options": {"bn_mode": eff["bn_mode"]}, "init_weights": cfg.init_weights}
    return make_config(source_only.Config, {**values, **cfg.pretrain})


def _anchor_stage(cfg: cag.Config, eff: dict, model: Stage) -> Stage:
    feature = eff["feature_layer"]
    res = {"native_resolution": True} if cfg.native_resolution else {}  # absent = the suite's size (older keys)
    if eff["anchor_rule"] == "gt_pixel_mean":
        return Stage("cag_uda.anchors", "fit", fit_anchors, {"feature": feature, **res}, upstream={"model": model},
                     datasets=("source",), version=VERSION)
    params = {"feature": feature, "min_pixels": cfg.anchor_min_pixels_code, "cap": cfg.anchor_count_cap_code, **res}
    return Stage("cag_uda.anchors_code", "fit", fit_anchors_code, params, upstream={"model": model},
                 datasets=("source",), version=VERSION)


def stages(cfg: cag.Config) -> list[Stage]:
    """Source-only → warm-up → K adaptation stages; the last stage's model is evaluated."""
    eff = cag.effective(cfg)
    model = source_only.train_stage(pretrain_config(cfg, eff))
    out = [model]
    feature = eff["feature_layer"]
    if cfg.warmup:
        warm = {"feature": feature, "adv_weight": cfg.warmup_adv_weight, "d_channels": list(cfg.warmup_d_channels),
                "d_all_leaky": False, **schedule_params(cfg, "warmup_"),  # the paper's values: no code warm-up
                "d_lr": cfg.warmup_d_lr}
        if cfg.warmup_gan != "vanilla":  # absent = vanilla, so older cache keys stay valid
            warm["gan"] = cfg.warmup_gan
        if cfg.warmup_head_lr_mult is not None:
            warm["head_lr_mult"] = cfg.warmup_head_lr_mult
        model = Stage("adversarial.feature_warmup", "train", train_feature_warmup, warm, upstream={"init": model},
                      datasets=("source", "target_train"), version=VERSION)
        out.append(model)
    online = eff["online_labels"]
    # the variant's values; no horizon (the poly decays over the stage; older keys have none)
    stage_schedule = schedule_params({**vars(cfg), **eff}, "stage_", [n for n in SCHEDULE if n != "horizon"])
    anchors = None
    for _ in range(cfg.num_stages):
        if anchors is None or eff["anchors_per_stage"]:
            anchors = _anchor_stage(cfg, eff, model)
            out.append(anchors)
        rule = {"feature": feature, "delta_d": cfg.delta_d, "p0": cfg.p0, "tie_inclusive": eff["tie_inclusive"]}
        if cfg.native_resolution:
            rule["native_resolution"] = True
        labels = Stage("cag_uda.label", "label", label_target, rule,
                       upstream={"model": model, "anchors": anchors}, datasets=("target_train",), version=VERSION)
        train = {**rule, "terms": list(cfg.terms), "dis_labels": cfg.dis_labels, "online": online,
                 "lambda1": eff["lambda1"], "lambda2": eff["lambda2"], **stage_schedule,
                 "head_lr_mult": cfg.head_lr_mult,
                 "crop": list(eff["crop"]) if eff["crop"] else None,
                 "resize_scale": list(eff["resize_scale"]) if eff["resize_scale"] else None, "hflip": cfg.hflip}
        if eff["scale_base"] and eff["resize_scale"]:
            train["scale_base"] = eff["scale_base"]
        if online:  # the code's distance-loss constants; its label stage is diagnostics only
            train.update(dis_min_pixels=cfg.dis_min_pixels_code, dis_clamp=cfg.dis_clamp_code,
                         dis_scale=cfg.dis_scale_code, dis_grad_rescale=cfg.dis_grad_rescale_code)
            upstream = {"init": model, "anchors": anchors, "diagnostics": labels}
        else:
            upstream = {"init": model, "anchors": anchors, "labels": labels}
        model = Stage("cag_uda.train", "train", train_adaptation, train, upstream=upstream,
                      datasets=("source", "target_train"), version=VERSION)
        out += [labels, model]
    return out


METHOD = Method("cag_uda", Config, stages, paper=Paper("cag_uda", "CAG-UDA"), tables=TABLES, studies=STUDIES,
                input_normalize=input_normalize, eval_protocol=attrgetter("eval_protocol"))
