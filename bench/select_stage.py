"""Stage ``select``: every label-free criterion of ``bench.selection`` for one trained model, so a sweep can choose
a value without target labels (``bench sweep --metric``).

Cost is kept small and equal for every trial: a fixed, seeded subset of target-train images (read *without*
labels), and of source images for IWCV/DEV (half fit the domain classifier, half give the weighted losses). The
network runs at native input size with no upsampling; rows are pixels of its output grid. The subset's image names
are written to ``select_images.txt``.

Deviation from DEV (You et al., ICML 2019), recorded here: their source validation split is held out of training;
the harness trains on every source image, so our "source validation" losses are training losses. The importance
weighting still moves them towards the target, but IWCV/DEV are optimistic for a model that fits source well.
"""

from __future__ import annotations

import numpy as np

TARGET_IMAGES, SOURCE_IMAGES, ROWS_PER_IMAGE, SUBSET_SEED = 8, 8, 256, 0


def pick_images(n_items: int, n: int, seed: int = SUBSET_SEED) -> list[int]:
    """``n`` of ``n_items`` indices (all when fewer), seeded and sorted: the same subset for every trial."""
    if n_items <= n:
        return list(range(n_items))
    return sorted(np.random.default_rng(seed).choice(n_items, n, replace=False).tolist())


def _outputs(model, ds, indices, device, rows: int, labels: bool):
    """→ (probs [P, C] of every pixel of the images' output grids, features [R, D] of ``rows`` seeded pixels per
    image — labelled ones when ``labels`` — and their per-pixel CE loss [R] or None). Features are resized to the
    logits' grid when the network's differ; sampling per image bounds memory at full resolution."""
    import torch
    import torch.nn.functional as F

    probs, feats, losses = [], [], []
    model.eval()
    with torch.no_grad():
        for i in indices:
            item = ds[i]
            out = model(item["image"][None].to(device))
            logits = out.logits.float()
            f = out.features.get("decoder", out.features.get("layer4")).float()
            if f.shape[-2:] != logits.shape[-2:]:
                f = F.interpolate(f, size=logits.shape[-2:], mode="bilinear", align_corners=False)
            logit_rows = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
            probs.append(logit_rows.softmax(1).cpu().numpy())
            pick = np.arange(len(logit_rows))
            if labels:  # nearest: label ids must not be blended
                lab = F.interpolate(item["label"][None, None].float(), size=logits.shape[-2:], mode="nearest")
                lab = lab.long().reshape(-1).to(logits.device)
                pick = np.flatnonzero((lab != 255).cpu().numpy())
            rng = np.random.default_rng([SUBSET_SEED, i])
            pick = torch.as_tensor(np.sort(rng.choice(pick, min(rows, len(pick)), replace=False)), device=f.device)
            feats.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])[pick].cpu().numpy())
            if labels:
                losses.append(F.cross_entropy(logit_rows[pick], lab[pick], reduction="none").cpu().numpy())
    return np.concatenate(probs), np.concatenate(feats), np.concatenate(losses) if labels else None


def criteria_from_outputs(target_probs, target_feats, fit_feats, val_feats, val_losses) -> dict[str, float]:
    """entropy, info_max and SND of the target probabilities; IWCV and DEV of the source-validation losses
    weighted by a source(fit)-vs-target domain classifier on the features."""
    from bench.selection import (
        dev_risk,
        domain_probability,
        fit_domain_classifier,
        importance_ess,
        importance_weights,
        iwcv_risk,
        target_criteria,
    )

    out = target_criteria(target_probs)
    mean, std = fit_feats.mean(0), fit_feats.std(0) + 1e-6  # standardised: one regularisation scale for any net
    w, b = fit_domain_classifier((fit_feats - mean) / std, (target_feats - mean) / std)
    weights = importance_weights(domain_probability((val_feats - mean) / std, w, b), len(fit_feats),
                                 len(target_feats))
    out["iwcv"] = iwcv_risk(val_losses, weights)
    out["dev"] = dev_risk(val_losses, weights)
    # how many losses IWCV/DEV rest on, and the weights' mean (1 in expectation when the density ratio is sound)
    out.update(iw_ess=importance_ess(weights), iw_rows=len(weights), iw_mean=float(weights.mean()))
    return out


def run_select(p: dict, ctx) -> dict:
    """The criteria of the upstream model on ``p["target_images"]`` target-train and ``p["source_images"]``
    source images (``p["rows_per_image"]`` seeded pixels of each for the domain classifier and the losses)."""
    model = ctx.load_model("model").to(ctx.device)
    target = ctx.dataset("target_train", plain=True, labels=False)
    source = ctx.dataset("source", plain=True)
    t_idx = pick_images(len(target), p["target_images"])
    s_idx = pick_images(len(source), p["source_images"])
    half = max(1, len(s_idx) // 2)
    fit_idx, val_idx = s_idx[:half], s_idx[half:] or s_idx
    rows = p["rows_per_image"]
    t_probs, t_feats, _ = _outputs(model, target, t_idx, ctx.device, rows, labels=False)
    _, fit_feats, _ = _outputs(model, source, fit_idx, ctx.device, rows, labels=False)
    _, val_feats, val_losses = _outputs(model, source, val_idx, ctx.device, rows, labels=True)
    out = criteria_from_outputs(t_probs, t_feats, fit_feats, val_feats, val_losses)
    (ctx.out_dir / "select_images.txt").write_text("".join(f"{target.samples[i].name}\n" for i in t_idx))
    return {**out, "select_target_images": len(t_idx), "select_source_images": len(s_idx)}


def select_stage(model_stage):
    """The ``select`` stage of a trial's final model (shared by every sweep that ends in the same model)."""
    from methods.base import Stage

    params = {"target_images": TARGET_IMAGES, "source_images": SOURCE_IMAGES, "rows_per_image": ROWS_PER_IMAGE}
    return Stage("select", "eval", run_select, params, upstream={"model": model_stage},
                 datasets=("target_train", "source"), version="2", gpu=model_stage.gpu)  # 2: iw_ess
