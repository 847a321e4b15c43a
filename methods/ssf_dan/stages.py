"""SSF-DAN's one training stage: the segmenter and the semantic-wise separable discriminator trained end to end
with L_seg + δ·L_adv (Eq. 1), progressive confidence on the target masks (Eq. 7–8) and CA-R (Eq. 9). The
Table 4 variants (``ablation``) switch the class-wise part (separated / "soft" / none), the global feature
discriminator, the ρ schedule and CA-R. Equations live in ``methods.ssf_dan.equations``; this module wires them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.data.labels import NUM_CLASSES
from bench.metrics import class_argmax
from methods.base import Method, Paper, Stage, reads
from methods.source_only import segmentation_ce
from methods.ssf_dan import equations as ssf
from methods.ssf_dan.config import STUDIES, TABLES, Config
from methods.ssf_dan.discriminator import SeparableDiscriminator
from methods.training import DOMAINS, Parts, discriminator_spec, stage_result, train_segmenter

VERSION = "1"


def _probs(logits: torch.Tensor, size) -> torch.Tensor:
    return torch.softmax(F.interpolate(logits.detach().float(), size=tuple(size), mode="bilinear",
                                       align_corners=True), 1)


def rho_at(p: dict, step: int) -> float:
    """ρ for this iteration: Eq. 7's schedule, the fixed ρ_upper (Fig. 4), or 1 (no filtering: SS-D†)."""
    v = ssf.SWITCHES[p["ablation"]]
    if v.rho == "progressive":
        return ssf.kept_fraction(step, p["rho_horizon"] or p["iters"], p["rho_upper"])
    return p["rho_upper"] if v.rho == "fixed" else 1.0


def masks(p: dict, out_s, out_t, src, tgt, grid, step: int, grid_s=None) -> dict:
    """The per-iteration labels and CA-R weights at the feature grid (all without gradient). ``grid`` is the
    target's feature grid, ``grid_s`` the source's (default ``grid``): the real suites feed source and target at
    different sizes (GTA5 1280×720, Cityscapes 1024×512)."""
    v = ssf.SWITCHES[p["ablation"]]
    pt = _probs(out_t.logits, tgt["image"].shape[-2:])
    kept_t = ssf.progressive_confidence_mask(pt, rho_at(p, step))
    full_t = ssf.kept_labels(pt, kept_t)
    if p["source_masks"] == "gt":
        full_s = src["label"]
    else:
        ps = _probs(out_s.logits, src["image"].shape[-2:])
        kept_s = ssf.progressive_confidence_mask(ps, rho_at(p, step)) if p["pcs_on_source"] else None
        full_s = ssf.kept_labels(ps, kept_s) if kept_s is not None else class_argmax(ps)
    lab_t = ssf.mode_downsample(full_t, grid, ignore_votes=p["mode_ignore_votes"])
    lab_s = ssf.mode_downsample(full_s, grid_s or grid, ignore_votes=p["mode_ignore_votes"])
    tau = ssf.class_weights(pt, kept_t) if v.car else torch.ones(NUM_CLASSES, device=pt.device)
    return {"lab_t": lab_t, "lab_s": lab_s, "full_t": full_t, "full_s": full_s,
            "r_t": ssf.reweight_map(lab_t, tau), "r_s": ssf.reweight_map(lab_s, tau, p["car_missing_weight"]),
            "kept_ratio": float(kept_t.float().mean())}


def ssf_losses(model, disc, global_disc, p: dict):
    v = ssf.SWITCHES[p["ablation"]]
    per_class = p["adv_output"] == "per_class"
    red, feat = p["adv_reduction"], p["feature_name"]

    def losses(batch, it):
        src, tgt = batch["source"], batch["target_train"]
        out_s, out_t = model(src["image"]), model(tgt["image"])
        seg = {"ce": segmentation_ce(out_s.logits, src["label"])}
        if out_s.aux is not None and p["aux_weight"] > 0:
            seg["ce_aux"] = p["aux_weight"] * segmentation_ce(out_s.aux, src["label"])
        f_s, f_t = out_s.features[feat], out_t.features[feat]
        grid = tuple(f_t.shape[-2:])
        m = masks(p, out_s, out_t, src, tgt, grid, it, tuple(f_s.shape[-2:]))
        disc_terms = {}
        if v.classwise == "ssd":
            seg["adv"] = p["delta"] * ssf.adversarial_loss_g(disc, f_t, m["lab_t"], m["r_t"], per_class, red)
            disc_terms["d"] = ssf.adversarial_loss_d(disc, f_s, m["lab_s"], m["r_s"], f_t, m["lab_t"], m["r_t"],
                                                     per_class, red, p["d_loss_scale"])
        elif v.classwise == "soft":  # Chen et al.: per-class D on the whole features, weighted by class shares
            w_t = ssf.soft_class_maps(m["full_t"], grid)
            w_s = ssf.soft_class_maps(m["full_s"], tuple(f_s.shape[-2:]))
            seg["adv"] = p["delta"] * ssf.generator_adversarial_loss(disc(f_t, None, per_class=True), w_t, red)
            disc_terms["d"] = ssf.discriminator_loss(disc(f_s.detach(), None, per_class=True),
                                                     disc(f_t.detach(), None, per_class=True), w_s, w_t, red,
                                                     p["d_loss_scale"])
        if v.global_align:
            ones_t = torch.ones(f_t.shape[0], *grid, device=f_t.device)
            ones_s = torch.ones(f_s.shape[0], *f_s.shape[-2:], device=f_s.device)
            seg["adv_global"] = p["global_delta"] * ssf.generator_adversarial_loss(global_disc(f_t, None), ones_t, red)
            disc_terms["d_global"] = ssf.discriminator_loss(global_disc(f_s.detach(), None),
                                                            global_disc(f_t.detach(), None), ones_s, ones_t, red,
                                                            p["d_loss_scale"])
        out = {"segmenter": seg}
        if disc_terms:
            out["discriminator"] = disc_terms
        return out

    return losses


def train_ssf_dan(p: dict, ctx) -> dict:
    """Stage ``ssf_dan.train`` from the initial weights."""
    v = ssf.SWITCHES[p["ablation"]]

    def discriminator(classes: int) -> SeparableDiscriminator:
        return SeparableDiscriminator(classes, p["feature_channels"], tuple(p["d_widths"]), p["d_negative_slope"])

    def parts(model):
        modules = {}
        if v.classwise:
            modules["ss_d"] = discriminator(NUM_CLASSES)
        if v.global_align:
            modules["global_d"] = discriminator(1)
        optimizers = {"discriminator": discriminator_spec(list(modules), p)} if modules else {}
        aug = {"crop": p["crop"]} if p["crop"] else None
        datasets = {"source": ctx.dataset("source", options=aug),
                    "target_train": ctx.dataset("target_train", labels=False, options=aug)}
        losses = ssf_losses(model, modules.get("ss_d"), modules.get("global_d"), p)
        return Parts(losses, datasets, modules, optimizers)

    fit = train_segmenter(p, ctx, parts, dict.fromkeys(DOMAINS, p["batch_size"]))
    return {**stage_result(fit), "final_rho": rho_at(p, p["iters"] - 1)}


def stages(cfg: ssf.Config) -> list[Stage]:
    fields = [f for f in ssf.Config.__dataclass_fields__ if f != "d_fast"]  # d_fast: same numbers either way
    return [Stage("ssf_dan.train", "train", train_ssf_dan, reads(cfg, *fields), datasets=("source", "target_train"),
                  version=VERSION)]


METHOD = Method("ssf_dan", Config, stages, paper=Paper("ssf_dan", "SSF-DAN"), tables=TABLES, studies=STUDIES)
