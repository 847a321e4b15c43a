"""BiSMAP's fit and label stages: the MAPs (Eq. 3–5) fitted on the warm-up model's source features, target
pseudo-labels by MAPs (Eq. 6), CAG's anchors (CAs-PLA) or IAST's selector (IAS-PLA) for Table 3, and the
distillation teacher's labels. Equations: ``methods.bismap.equations``, ``methods.cag_uda.equations``, ``methods.ias``.

Forward passes here run in full precision (no autocast): bf16 features would quantise the densities.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.labels import IGNORE, NUM_CLASSES
from bench.metrics import class_argmax
from methods import ias
from methods.bismap import equations as bm
from methods.cag_uda import equations as cag

RATIO_SAMPLES = 2048  # pixel scores drawn per image for the pl_ratio_target quantile (harness)


def source_tree(ctx):
    """The GPA mirror of the source tree when the stage reads one, else None (the suite's source)."""
    return ctx.inputs["source_tree"] / "tree" if "source_tree" in ctx.inputs else None


def native(ctx, domain: str, native_resolution: bool, synthia_resize) -> dict:
    """Transform overrides that read ``domain`` at BiSMAP's resolution: native (SYNTHIA: ``synthia_resize``)."""
    return native_for(ctx.dataset_specs[domain]["name"], native_resolution, synthia_resize)


def native_for(dataset: str, native_resolution: bool, synthia_resize) -> dict:
    """:func:`native` for a dataset name (gta5, synthia, cityscapes, crosscity)."""
    if not native_resolution:
        return {}
    if dataset == "synthia" and synthia_resize:
        return {"resize": list(synthia_resize)}
    return {"resize": None}


def _feature_and_logits(model, x: torch.Tensor, feature: str, flip: bool):
    out = model(x)
    f = out.features[feature].float()
    if flip:  # the code's --flip: features of the mirrored image, mirrored back, averaged
        f = 0.5 * (f + model(x.flip(-1)).features[feature].float().flip(-1))
    return f, out.logits.float()


# ----------------------------------------------------------------------------------------------- fit
@torch.no_grad()
def fit_maps(p: dict, ctx) -> dict:
    """Stage ``bismap.maps`` (Eq. 3–5): decoder features of source pixels the warm-up model classifies
    correctly (labels and argmax nearest-resized to the feature grid), kept per class at the code's rates into
    pools capped at ``pool_cap``; one diagonal GMM of K components per class (``fit_class_gmms``). Also saves
    the CAs-PLA anchors: class means of the pools ("correct") and of every GT pixel ("all")."""
    model = ctx.load_model("model").to(ctx.device).eval()
    ds = ctx.dataset("source", plain=True, root=source_tree(ctx),
                     options=native(ctx, "source", p["native_resolution"], p["synthia_resize"]))
    rates = torch.tensor(p["sample_rates"], dtype=torch.float64)
    if rates.numel() != NUM_CLASSES:
        raise ValueError(f"gmm_sample_rates: expected {NUM_CLASSES} rates, got {rates.numel()}")
    gen = torch.Generator().manual_seed(ctx.seed)
    pools: list[list[torch.Tensor]] = [[] for _ in range(NUM_CLASSES)]
    sizes = [0] * NUM_CLASSES
    sums, counts = None, torch.zeros(NUM_CLASSES, dtype=torch.float64)
    for i in range(len(ds)):
        item = ds[i]
        f, logits = _feature_and_logits(model, item["image"][None].to(ctx.device), p["feature"], False)
        grid = tuple(f.shape[-2:])
        if logits.shape[-2:] != grid:
            logits = F.interpolate(logits, size=grid, mode="bilinear", align_corners=True)
        gt = cag.labels_to_feature_grid(item["label"][None].to(ctx.device), grid)[0].reshape(-1).cpu()
        keep = bm.correct_source_labels(gt, class_argmax(logits)[0].reshape(-1).cpu())
        feats = f[0].reshape(f.shape[1], -1).T.cpu().double()
        if sums is None:
            sums = torch.zeros(NUM_CLASSES, feats.shape[1], dtype=torch.float64)
        valid = gt != IGNORE
        sums.index_add_(0, gt[valid], feats[valid])
        counts += torch.bincount(gt[valid], minlength=NUM_CLASSES).double()
        drawn = torch.rand(keep.numel(), generator=gen, dtype=torch.float64)
        for c in (keep[keep != IGNORE]).unique().tolist():
            sel = feats[(keep == c) & (drawn < rates[c])]
            room = p["pool_cap"] - sizes[c]
            if room > 0 and len(sel):
                pools[c].append(sel[:room].float())
                sizes[c] += min(room, len(sel))
    x = torch.cat([t for pool in pools for t in pool]).to(ctx.device)
    y = torch.cat([torch.full((sizes[c],), c, dtype=torch.long) for c in range(NUM_CLASSES)]).to(ctx.device)
    gmms = bm.fit_class_gmms(x, y, NUM_CLASSES, p["components"], p["max_samples"], seed=ctx.seed,
                             init=p["init"], max_iter=p["max_iter"], tol=p["tol"], reg_covar=p["reg_covar"],
                             min_samples=p["min_samples"])
    torch.save({k: v.cpu() for k, v in gmms._asdict().items()}, ctx.out_dir / "gmms.pt")
    pooled = torch.stack([torch.cat(pool).double().mean(0) if pool else torch.full((x.shape[1],), float("nan"))
                          for pool in pools])
    all_gt = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], torch.full_like(sums, float("nan")))
    torch.save({"correct": pooled.float(), "all": all_gt.float()}, ctx.out_dir / "anchors.pt")
    fitted = gmms.n_samples > 0
    return {"gmm_classes": int(fitted.sum()), "gmm_pool_sizes": sizes,
            "gmm_iters_mean": float(gmms.n_iter[fitted].double().mean()) if fitted.any() else 0.0,
            "gmm_converged": int(gmms.converged.sum()),
            "gmm_mean_loglik": float(gmms.lower_bound[fitted].mean()) if fitted.any() else float("nan"),
            "gmm_flat_share": flat_variance_share(gmms, p["reg_covar"])}


def flat_variance_share(gmms: bm.ClassGMMs, reg_covar: float, tol: float = 1e-6) -> float:
    """Share of the fitted (class, component, dimension) variances whose data part (σ² − reg_covar) is below
    ``tol``: a feature constant over the component, typically a ReLU channel that is 0 for all its pixels. There
    the density is set by the floor alone, so a tiny floor lets these dimensions decide Eq. 6's argmax."""
    fitted = gmms.n_samples > 0
    if not fitted.any():
        return float("nan")
    return float(((gmms.variances[fitted] - reg_covar) < tol).double().mean())


def load_gmms(path) -> bm.ClassGMMs:
    return bm.ClassGMMs(**torch.load(path, weights_only=True))


# --------------------------------------------------------------------------------------------- label
def _at_resolution(p: dict, f: torch.Tensor, size) -> torch.Tensor:
    """Features [1,D,h,w] bilinearly upsampled to the image (BiSMAP footnote 1), or left at the feature grid
    (pl_full_resolution false: labels are then nearest-upsampled)."""
    return F.interpolate(f, size=size, mode="bilinear", align_corners=True) if p["full_resolution"] else f


def pixel_scores(pla: str, feats: torch.Tensor, gmms, anchors) -> torch.Tensor:
    """What the threshold compares, per feature row of [N, D]: max_c log p_c(f) (MAPs, Eq. 6) or the margin
    second-nearest − nearest anchor distance (CAs, CAG Eq. 6) → [N]."""
    if pla == "maps":
        return torch.nan_to_num(bm.log_density(gmms, feats), nan=-float("inf")).max(1).values
    d = cag.anchor_distances(feats.T[None, :, :, None], anchors)[0, :, :, 0]
    d = d.masked_fill(~torch.isfinite(anchors).all(1)[:, None], float("inf"))
    top2 = d.topk(2, dim=0, largest=False).values
    return top2[1] - top2[0]


def pseudo_labels(p: dict, f: torch.Tensor, size, gmms, anchors, threshold: float,
                  scores: ScoreSample | None = None) -> torch.Tensor:
    """One image's MAPs (Eq. 6 with δ) or CAs (CAG Eq. 5-7 with Δd) pseudo-labels [H, W] from features f;
    ``scores`` (if given) also gets a sample of the per-pixel scores the threshold was compared with."""
    g = _at_resolution(p, f, size)
    h, w = g.shape[-2:]
    if p["pla"] == "maps":
        flat = g[0].reshape(g.shape[1], -1).T.contiguous()  # row-major rows: ~2.5x faster densities
        density = bm.log_density(gmms, flat)
        lab = bm.density_pseudo_labels(density, threshold).reshape(h, w)
        if scores is not None:
            scores.update(torch.nan_to_num(density, nan=-float("inf")).max(1).values)
    else:
        lab = cag.anchor_pseudo_labels(g, anchors, threshold)[0]
        if scores is not None:
            scores.update(pixel_scores("cas", g[0].reshape(g.shape[1], -1).T, None, anchors))
    if tuple(lab.shape) != tuple(size):
        lab = F.interpolate(lab[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return lab


class ScoreSample:
    """A seeded sample of the per-pixel scores a fixed threshold is compared with (``pixel_scores``;
    ``RATIO_SAMPLES`` per image), summarised as quantiles: where δ (Δd) sits in the features' own units.
    A diagnostic of the label stage (the labels do not depend on it)."""

    QUANTILES = (0, 5, 50, 95, 100)

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.samples: list[torch.Tensor] = []

    def update(self, scores: torch.Tensor) -> None:
        scores = scores.detach().reshape(-1).cpu().double()
        self.samples.append(scores[torch.randperm(scores.numel(), generator=self.gen)[:RATIO_SAMPLES]])

    def quantiles(self) -> dict[str, float]:
        """``{"q0": …, "q5": …, "q50": …, "q95": …, "q100": …}`` of the finite scores; {} when there are none."""
        s = torch.cat(self.samples) if self.samples else torch.zeros(0, dtype=torch.float64)
        s = s[torch.isfinite(s)]
        return {f"q{q}": float(ias.linear_percentile(s, q)) for q in self.QUANTILES} if s.numel() else {}


def delta_for_source(p: dict, ctx) -> float:
    """δ of Eq. 6 for the suite's source dataset (``bismap_config.delta_for``); MiniCity's source is GTA5-format,
    so its suite sets ``delta_override`` or ``pl_ratio_target``."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(delta_override=p["delta_override"], delta_gta5=p["delta_gta5"],
                          delta_synthia=p["delta_synthia"])
    return bm.delta_for(cfg, ctx.dataset_specs["source"]["name"])


@torch.no_grad()
def label_target(p: dict, ctx) -> dict:
    """Stages ``bismap.label`` / ``bismap.label_cas`` / ``bismap.label_ias``: the warm-up model's pseudo-labels of
    every target-train image at full resolution by ``p["pla"]`` (maps: Eq. 6 with δ; cas: CAG Eq. 5–7 with Δd;
    ias: IAST's selector in image order), saved as label files. Also the mean prediction entropy e_c per
    pseudo-labelled class (Eq. 8's input, for the STM) and diagnostics: pseudo-label ratio and, where
    target-train labels exist, precision (never fed back)."""
    from bench.pseudo import LABEL_DIR, LabelStats, save_label, upsample

    model = ctx.load_model("model").to(ctx.device).eval()
    ds = ctx.dataset("target_train", plain=True, labels=False,
                     options=native(ctx, "target_train", p["native_resolution"], None))
    gmms = anchors = None
    if p["pla"] == "maps":
        gmms = bm.ClassGMMs(*[t.to(ctx.device) for t in load_gmms(ctx.inputs["maps"] / "gmms.pt")])
    elif p["pla"] == "cas":
        anchors = torch.load(ctx.inputs["maps"] / "anchors.pt", weights_only=True)[p["anchor_pixels"]].to(ctx.device)
    result = {"pla": p["pla"]}

    def images():
        for i in range(len(ds)):
            x = ds[i]["image"][None].to(ctx.device)
            if p["pla"] == "ias":  # IAS reads the softmax only
                f, logits = None, model(x).logits.float()
            else:
                f, logits = _feature_and_logits(model, x, p["feature"], p["flip"])
            yield i, f, logits, tuple(x.shape[-2:])

    if p["pla"] in ("maps", "cas") and p["ratio_target"] is not None:
        result["pl_ratio_target"] = p["ratio_target"]
    threshold, selector = _rule(p, ctx, images, gmms, anchors)
    gt = ctx.ground_truth("target_train")
    gt_index = {s.name: j for j, s in enumerate(gt.samples)} if gt is not None else {}
    stats, entropy = LabelStats(), ClassEntropy()
    scores = ScoreSample(ctx.seed) if p["pla"] != "ias" else None
    for i, f, logits, size in images():
        probs = torch.softmax(upsample(logits, size), 1)
        if p["pla"] == "ias":
            lab = selector(probs[0])
        else:
            lab = pseudo_labels(p, f, size, gmms, anchors, threshold, scores)
        entropy.update(probs[0], lab)
        arr = lab.cpu().numpy().astype(np.uint8)
        save_label(ctx.out_dir / LABEL_DIR, i, arr)
        name = ds.samples[i].name
        stats.update(arr, gt.raw(gt_index[name])[1] if name in gt_index else None)
    entropy = entropy.means()
    torch.save(entropy, ctx.out_dir / "class_entropy.pt")
    if threshold is not None:
        result["threshold"] = threshold
    if scores is not None:  # what the threshold was compared with, in the features' units
        result.update({f"pl_score_{k}": v for k, v in scores.quantiles().items()})
    if p["pla"] == "ias":
        result["ias_final_thresholds"] = selector.theta.tolist()
    return {**result, **stats.summary("pl_"), "class_entropy": entropy.tolist()}


def _rule(p: dict, ctx, images, gmms, anchors):
    """(threshold, selector) of ``p["pla"]``: MAPs' δ and CAs' Δd, fixed or chosen for ``p["ratio_target"]``
    over ``images()``; or IAST's selector (no threshold)."""
    if p["pla"] in ("maps", "cas") and p["ratio_target"] is not None:
        return ratio_threshold(p, images(), gmms, anchors, ctx.seed), None
    if p["pla"] == "maps":
        return delta_for_source(p, ctx), None
    if p["pla"] == "cas":
        return float(p["delta_d"]), None
    return None, ias.IASSelector(NUM_CLASSES, p["ias_alpha"], p["ias_beta"], p["ias_gamma"], p["ias_init"],
                                 p["ias_cap"])


class ClassEntropy:
    """e_c (Eq. 8's input): the mean prediction entropy of the pixels pseudo-labelled c, over every image."""

    def __init__(self) -> None:
        self.sum = torch.zeros(NUM_CLASSES, dtype=torch.float64)
        self.n = torch.zeros(NUM_CLASSES, dtype=torch.float64)

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """probs ``[C, H, W]`` softmax, labels ``[H, W]`` (IGNORE = unlabelled) of one image."""
        flat = labels.reshape(-1)
        mean = bm.mean_class_entropy(probs.reshape(NUM_CLASSES, -1).T, flat, NUM_CLASSES).cpu()
        n = torch.bincount(flat[flat != IGNORE].cpu(), minlength=NUM_CLASSES).double()
        self.sum += torch.nan_to_num(mean) * n
        self.n += n

    def means(self) -> torch.Tensor:
        """float64 ``[C]``; NaN for a class no pixel was labelled with."""
        return torch.where(self.n > 0, self.sum / self.n.clamp_min(1), torch.full_like(self.sum, float("nan")))


def ratio_threshold(p: dict, images, gmms, anchors, seed: int) -> float:
    """The threshold that labels a ``ratio_target`` share of target-train pixels: the (1 − ratio) linear quantile
    of per-pixel scores (max log-density for MAPs, anchor margin for CAs), ``RATIO_SAMPLES`` seeded pixels per
    image. Label-free: uses the images only."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _, f, _, size in images:
        g = _at_resolution(p, f, size)
        flat = g[0].reshape(g.shape[1], -1).T
        pick = torch.randperm(flat.shape[0], generator=gen)[:RATIO_SAMPLES].to(flat.device)
        samples.append(pixel_scores(p["pla"], flat[pick], gmms, anchors).cpu().double())
    s = torch.cat(samples)
    s = s[torch.isfinite(s)] if p["pla"] == "maps" else s
    if not 0.0 < p["ratio_target"] < 1.0 or s.numel() == 0:
        raise ValueError(f"pl_ratio_target: expected a fraction in (0, 1) and finite scores, got {p['ratio_target']}")
    return float(ias.linear_percentile(s, 100.0 * (1.0 - p["ratio_target"])))


# -------------------------------------------------------------------------------------- distillation
@torch.no_grad()
def distill_labels(p: dict, ctx) -> dict:
    """Stage ``bismap.distill_label``: the teacher's hard labels for distillation (the code's ``inference.py``):
    logits at scales ``scales`` × the image, each with its mirror, upsampled to the image and averaged; argmax
    where the averaged softmax max ≥ ``threshold`` (0: every pixel)."""
    from bench.pseudo import LABEL_DIR, LabelStats, save_label, upsample

    model = ctx.load_model("model").to(ctx.device).eval()
    ds = ctx.dataset("target_train", plain=True, labels=False,
                     options=native(ctx, "target_train", p["native_resolution"], None))
    gt = ctx.ground_truth("target_train")
    gt_index = {s.name: j for j, s in enumerate(gt.samples)} if gt is not None else {}
    stats = LabelStats()
    for i in range(len(ds)):
        x = ds[i]["image"][None].to(ctx.device)
        size = tuple(x.shape[-2:])
        acc = 0.0
        for s in p["scales"]:
            xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=True)
            acc = acc + upsample(model(xs).logits.float(), size) + upsample(model(xs.flip(-1)).logits.float(),
                                                                            size).flip(-1)
        prob, lab = torch.softmax(acc / (2 * len(p["scales"])), 1)[0].max(0)
        lab = torch.where(prob >= p["threshold"], lab, torch.full_like(lab, IGNORE))
        arr = lab.cpu().numpy().astype(np.uint8)
        save_label(ctx.out_dir / LABEL_DIR, i, arr)
        name = ds.samples[i].name
        stats.update(arr, gt.raw(gt_index[name])[1] if name in gt_index else None)
    return stats.summary("pl_")
