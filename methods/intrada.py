"""IntraDA — Pan et al., "Unsupervised Intra-domain Adaptation for Semantic Segmentation through
Self-Supervision", CVPR 2020 — as PixIntraDA's Table 4/5 baseline: the same Stage I model G_inter (shared stage,
``methods.pixintrada.inter``), then

1. entropy ranking: each target image scored by the mean of G_inter's weighted self-information map, the lowest
   fraction λ = "easy", the rest "hard"; the easy images are pseudo-labelled with G_inter's argmax on every
   pixel (no threshold), as the released ``entropy_rank/entropy.py``;
2. intra-domain adaptation: ADVENT's AdvEnt with the easy split as the "source" (CE on its pseudo-labels) and the
   hard split as the "target" (a discriminator per output level on the entropy maps), a fresh G from the init
   weights (``intrada/intrada.yml``). PixIntraDA's Table 4 upsamples the discriminators' outputs to the input size
   (``d_upsample``).

Code: feipanir/IntraDA (snapshot 8df0267; the settings marked "code" are read there and in ADVENT's defaults).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from operator import attrgetter

import torch

from bench.data.labels import IGNORE
from bench.metrics import class_argmax
from methods.adversarial import level_weights, output_space_discriminators, output_space_losses, upsampled_softmax
from methods.base import Method, Stage, param
from methods.pixintrada.config import InterConfig, intra_init_fields
from methods.pixintrada.inter import (
    ground_truth_lookup,
    inter_stages,
    start_from,
    subset,
    target_probabilities,
    to_native,
)
from methods.training import ADAPTSEGNET, Parts, schedule, schedule_params, stage_result, train_segmenter

VERSION = "1"
# entropy.py's rare trainIds: wall, fence, pole, light, sign, terrain, rider, truck, bus, train, motorcycle
RARE_CLASSES = (3, 4, 5, 6, 7, 9, 12, 14, 15, 16, 17)


# ADVENT's schedule (intrada.yml and ADVENT's defaults): AdaptSegNet's, stopped at 120k
IntraDASchedule = schedule(**{**ADAPTSEGNET, "iters": 120_000}, source="code", note="ADVENT",
                           notes={"iters": "ADVENT's EARLY_STOP", "horizon": "ADVENT's MAX_ITERS: the poly horizon "
                                                                            "(None = iters)",
                                  "batch_size": "1 easy + 1 hard image (ADVENT's batch sizes)"})


@dataclass
class Config(InterConfig, IntraDASchedule, intra_init_fields("code", "intrada.yml RESTORE_FROM")):
    easy_fraction: float = param(0.67, "paper", "λ, the fraction of target images ranked easy (IntraDA; PixIntraDA "
                                                "Table 5 sets λ = Prop.); 0 = no intra stage (INTER)")
    normalize: bool = param(False, "code", "entropy.py --normalize (rare-class normaliser), default off; its argparse "
                                           "type=bool turns the README's '--normalize False' on")
    split_size: tuple | None = param(None, "code", "W×H of G_inter's maps for the ranking and pseudo-labels (1024×512 "
                                                   "in entropy.py); None = G_inter's input, the suite's target resize")
    aux_weight: float = param(0.1, "code", "LAMBDA_SEG_AUX (ADVENT)")
    lambda_adv_main: float = param(0.001, "code", "intrada.yml LAMBDA_ADV_MAIN")
    lambda_adv_aux: float = param(0.0002, "code", "intrada.yml LAMBDA_ADV_AUX")
    d_upsample: bool = param(True, "paper", "PixIntraDA Table 4: IntraDA's D outputs upsampled to the input "
                                            "size (False = IntraDA's own code)")
    train_size: tuple | None = param(None, "code", "W×H crop; None = the suite's resize (IntraDA: 1024×512)")
    train_scale_range: tuple | None = param(None, "code", "random scale; None = off (IntraDA)")
    eval_protocol: str | None = param(None, "harness", "None = the suite's (IntraDA: single-scale, protocol A)")


# ------------------------------------------------------------------------------------------ equations
def weighted_self_information(probs: torch.Tensor) -> torch.Tensor:
    """ADVENT's weighted self-information map (Vu et al. CVPR 2019 §3.2, I_x = −P·log P), as IntraDA's and
    ADVENT's code normalise it (``prob_2_entropy``): −p·log2(p + 1e-30) / log2(C) per class channel, so that the
    channel sum is the entropy normalised to [0, 1]. probs ``[N, C, H, W]`` (C ≥ 2) → same shape."""
    if not isinstance(probs, torch.Tensor) or probs.dim() != 4 or probs.shape[1] < 2:
        raise ValueError(f"probs: expected [N, C, H, W] with C ≥ 2, got {getattr(probs, 'shape', type(probs))}")
    return -probs * torch.log2(probs + 1e-30) / math.log2(probs.shape[1])


def image_entropy(probs: torch.Tensor) -> torch.Tensor:
    """IntraDA's ranking score (§3.2; PixIntraDA §3.2 and footnote 1): the mean of the weighted self-information
    map over C, H and W (``prob_2_entropy(softmax).mean()``), i.e. the mean normalised pixel entropy ÷ C.
    probs ``[N, C, H, W]`` → ``[N]``."""
    return weighted_self_information(probs).flatten(1).mean(1)


def rare_class_normaliser(pred: torch.Tensor) -> float:
    """entropy.py's optional normaliser: (11 − number of rare classes present in the argmax map) / 11 + 0.5, which
    lowers the score of images showing many rare classes. pred: integer ``[H, W]``."""
    present = set(torch.unique(pred).tolist()) & set(RARE_CLASSES)
    return (len(RARE_CLASSES) - len(present)) / len(RARE_CLASSES) + 0.5


def entropy_ranking(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """IntraDA's split (entropy.py ``cluster_subdomain``): sort the images by ascending score (stable: equal scores
    keep their order) and call the first ``int(N·λ)`` easy. scores ``[N]``; λ ∈ [0, 1]. → bool ``[N]``, True = easy."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or torch.isnan(scores).any():
        raise ValueError(f"scores: expected a 1-D tensor without NaN, got {getattr(scores, 'shape', type(scores))}")
    if not 0 <= float(fraction) <= 1:
        raise ValueError(f"easy_fraction: {fraction} outside [0, 1]")
    order = torch.argsort(scores, stable=True)
    easy = torch.zeros(scores.numel(), dtype=torch.bool)
    easy[order[: int(scores.numel() * float(fraction))]] = True
    return easy


def entropy_input(logits: torch.Tensor, size) -> torch.Tensor:
    """AdvEnt's discriminator input: the weighted self-information of the softmax upsampled to the input size."""
    return weighted_self_information(upsampled_softmax(logits, size))


# -------------------------------------------------------------------------------------------- stages
def rank_target(p: dict, ctx) -> dict:
    """Stage ``intrada.rank``: with G_inter, every target-train image's score (``image_entropy``, times
    ``rare_class_normaliser`` if ``p["normalize"]``) and argmax pseudo-label; the split by λ is the train stage's,
    so every λ shares this stage. Per-image hits against the target labels (where they exist) are kept for the
    precision diagnostic only, with the count of pixels whose ground truth is a class (``scored``: void is never
    scored, as in ``bench.pseudo.LabelStats``)."""
    from bench.pseudo import save_label

    model = ctx.load_model("model").to(ctx.device)
    ds = ctx.dataset("target_train", plain=True, labels=False)
    gt = ground_truth_lookup(ctx, ds)
    scores, hits, pixels, scored = [], [], [], []
    for i, probs, native in target_probabilities(model, ds, ctx.device, p["split_size"]):
        pred = class_argmax(probs)[0]
        score = float(image_entropy(probs)[0])
        scores.append(score * rare_class_normaliser(pred) if p["normalize"] else score)
        label = to_native(pred.to(torch.uint8).cpu().numpy(), native)
        save_label(ctx.out_dir / "labels", i, label)
        g = gt(i)
        hits.append(int((g == label).sum()) if g is not None and g.shape == label.shape else None)
        pixels.append(int(label.size))
        scored.append(int((g != IGNORE).sum()) if hits[-1] is not None else None)
    ranking = {"scores": scores, "hits": hits, "pixels": pixels, "scored": scored}
    (ctx.out_dir / "ranking.json").write_text(json.dumps(ranking))
    return {"images": len(scores), "score_mean": sum(scores) / max(len(scores), 1)}


def train_intrada(p: dict, ctx) -> dict:
    """Stage ``intrada.train``: the easy split (pseudo-labelled) against the hard split with AdvEnt; with no hard
    image (λ = 1, the Prop. = 1 end) plain self-training on every image."""
    from bench.pseudo import with_pseudo_labels
    from methods.source_only import supervised_losses

    ranking = json.loads((ctx.inputs["ranking"] / "ranking.json").read_text())
    easy = entropy_ranking(torch.tensor(ranking["scores"], dtype=torch.float64), p["easy_fraction"])
    easy_idx, hard_idx = easy.nonzero()[:, 0].tolist(), (~easy).nonzero()[:, 0].tolist()
    if not easy_idx:
        raise ValueError(f"easy_fraction={p['easy_fraction']} ranks none of {len(easy)} target images easy")

    def parts(model):
        aug = {k: v for k, v in (("scale", p["train_scale_range"]), ("crop", p["train_size"])) if v}
        target = ctx.dataset("target_train", labels=False, options=aug)
        datasets = {"easy": subset(with_pseudo_labels(target, ctx.inputs["ranking"] / "labels"), easy_idx)}
        if not hard_idx:
            return Parts(supervised_losses(model, "easy", p["aux_weight"]), datasets)
        datasets["hard"] = subset(target, hard_idx)
        weights = level_weights(p, "lambda_adv_main", "lambda_adv_aux")
        discs, modules, optimizers = output_space_discriminators(p, weights)
        losses = output_space_losses(model, discs, weights, p["aux_weight"], source="easy", target="hard",
                                     d_input=entropy_input, d_upsample=p["d_upsample"])
        return Parts(losses, datasets, modules, optimizers)

    splits = ["easy"] + (["hard"] if hard_idx else [])
    fit = train_segmenter(p, ctx, parts, dict.fromkeys(splits, p["batch_size"]))
    out = {**stage_result(fit), "easy_images": len(easy_idx), "hard_images": len(hard_idx)}
    hits = [ranking["hits"][i] for i in easy_idx]
    # diagnostics only: the easy split's pseudo-label precision; none from a ranking cached before "scored"
    # existed (its pixel counts include void, which would understate it)
    scored = sum(ranking["scored"][i] for i in easy_idx) if "scored" in ranking else 0
    if scored and all(h is not None for h in hits):  # no scored pixel: precision undefined, not 0
        out["pl_precision"] = sum(hits) / scored
    return out


def stages(cfg: Config) -> list[Stage]:
    """Stage I (shared with PixIntraDA) → entropy ranking → intra-domain AdvEnt; G_inter alone when λ = 0."""
    if not 0 <= cfg.easy_fraction <= 1:
        raise ValueError(f"intrada: easy_fraction={cfg.easy_fraction!r} outside [0, 1]")
    if cfg.intra_init not in ("imagenet", "inter"):
        raise ValueError(f"intrada: intra_init={cfg.intra_init!r}; valid: ('imagenet', 'inter')")
    out = inter_stages(cfg)
    inter = out[-1]
    if cfg.easy_fraction == 0:  # Table 5's Prop. = 0 column: no intra-domain adaptation
        return out
    split = list(cfg.split_size) if cfg.split_size else None
    rank = Stage("intrada.rank", "label", rank_target, {"split_size": split, "normalize": cfg.normalize},
                 upstream={"model": inter}, datasets=("target_train",), version=VERSION, seeded=False)
    params = {"easy_fraction": cfg.easy_fraction, **schedule_params(cfg), "aux_weight": cfg.aux_weight,
              "lambda_adv_main": cfg.lambda_adv_main, "lambda_adv_aux": cfg.lambda_adv_aux, "d_lr": cfg.d_lr,
              "d_channels": list(cfg.d_channels),
              "d_upsample": cfg.d_upsample, "model_options": dict(cfg.model_options),
              "train_size": list(cfg.train_size) if cfg.train_size else None,
              "train_scale_range": list(cfg.train_scale_range) if cfg.train_scale_range else None}
    start, init = start_from(cfg, cfg.intra_init, {"inter": inter})
    params.update(start)
    upstream = {"ranking": rank, **init}
    return out + [rank, Stage("intrada.train", "train", train_intrada, params, upstream=upstream,
                              datasets=("target_train",), version=VERSION)]


METHOD = Method("intrada", Config, stages, eval_protocol=attrgetter("eval_protocol"))
