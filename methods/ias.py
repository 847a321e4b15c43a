"""The instance adaptive selector (IAS) of IAST (Mei et al., "Instance Adaptive Self-Training for Unsupervised
Domain Adaptation", ECCV 2020; code bupt-ai-cz/IAST-ECCV2020, ``code/sseg/workflow/sl_trainer.py``): per-class
confidence thresholds that move with every target instance, used by BiSMAP's Table 3 as "IAS-PLA".

For each instance x_t (an image) and class c, with P^c the max-softmax confidences of the pixels predicted c:

    ψ_c(x_t, θ_{t-1}) = percentile_{100·(1 − α·θ_{t-1,c}^γ)}( {θ_{t-1,c}} ∪ P^c )        (IAST Eq. 3–4)
    θ_{t,c} = β·θ_{t-1,c} + (1 − β)·ψ_c,   θ_{t,c} ≥ 1 → ``cap``                          (IAST Eq. 5)

and the instance's pseudo-label keeps the argmax class where its confidence ≥ θ_{t, argmax} (else 255). As in the
code: the previous threshold is part of the list whose percentile is taken (a class absent from the image keeps
its threshold), the percentile is numpy's linear one, and the new θ_t labels the instance that produced it.
Defaults (code): α 0.2, γ 8 (configs ``sl_*.yaml``), β 0.9 (``default.py``), θ_0 = 0.9, cap 0.999. The code
collects confidences as float16 and groups two images per "instance" (PSEUDO_BATCH_SIZE 2); here one image is
one instance and confidences stay float32.
"""

from __future__ import annotations

import torch

from bench.data.labels import IGNORE
from methods.fields import field_group

# IAST's released values (configs sl_*.yaml α, γ; default.py β; θ_0; the cap), read by every method's config
DEFAULTS = {"alpha": 0.2, "beta": 0.9, "gamma": 8.0, "init": 0.9, "cap": 0.999}
NOTES = {"alpha": "IAST configs sl_*.yaml PSEUDO_PL_ALPHA",
         "beta": "IAST default.py PSEUDO_PL_BETA (threshold momentum)", "gamma": "IAST configs PSEUDO_PL_GAMMA",
         "init": "IAST starts every class threshold at 0.9", "cap": "IAST replaces a threshold >= 1 by 0.999"}


def config_fields(source: str, note: str = "") -> type:
    """A Config mixin with the selector's settings ``ias_alpha`` … ``ias_cap`` at IAST's values, from ``source``
    (``note`` prefixes where each value is in IAST's code)."""
    return field_group(dict.fromkeys(DEFAULTS, float), "ias_", source=source,
                       notes={k: note + v for k, v in NOTES.items()}, **DEFAULTS)


def linear_percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """numpy's ``percentile(values, q)`` (method "linear"): the sorted values interpolated at rank
    (q/100)·(n−1). values: float [n ≥ 1] (any order); q in [0, 100] → 0-d tensor."""
    if values.ndim != 1 or values.numel() == 0 or not values.is_floating_point():
        raise ValueError(f"values: expected a non-empty 1-d float tensor, got {values.dtype} {tuple(values.shape)}")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q: expected a percentile in [0, 100], got {q}")
    s = values.sort().values
    rank = q / 100.0 * (s.numel() - 1)
    lo = int(rank)
    hi = min(lo + 1, s.numel() - 1)
    return s[lo] + (s[hi] - s[lo]) * (rank - lo)


def ias_threshold_update(thresholds: torch.Tensor, confidence: torch.Tensor, prediction: torch.Tensor,
                         alpha: float = 0.2, beta: float = 0.9, gamma: float = 8.0, cap: float = 0.999) -> torch.Tensor:
    """IAST Eq. 3–5: the per-class thresholds θ_t after instance x_t.

    thresholds: float [C] θ_{t-1}; confidence: float [...] max softmax probability per pixel of x_t; prediction:
    integer [...] its argmax class (same shape). For each class c, ψ_c is the 100·(1 − α·θ_c^γ) linear percentile
    of θ_c together with the confidences of the pixels predicted c; θ'_c = β·θ_c + (1 − β)·ψ_c, and θ'_c ≥ 1
    becomes ``cap``. Returns a new float [C] tensor (float64).
    """
    if thresholds.ndim != 1 or not thresholds.is_floating_point():
        raise ValueError(f"thresholds: expected a float [C] tensor, got {thresholds.dtype} {tuple(thresholds.shape)}")
    if confidence.shape != prediction.shape:
        raise ValueError(f"prediction: expected the confidence's shape {tuple(confidence.shape)}, got "
                         f"{tuple(prediction.shape)}")
    if not (0.0 < alpha <= 1.0 and 0.0 <= beta <= 1.0 and gamma >= 0.0):
        raise ValueError(f"alpha/beta/gamma: expected 0 < alpha <= 1, 0 <= beta <= 1, gamma >= 0, got "
                         f"{alpha}, {beta}, {gamma}")
    theta = thresholds.detach().double().cpu()
    conf = confidence.detach().reshape(-1).double().cpu()
    pred = prediction.detach().reshape(-1).cpu()
    out = theta.clone()
    for c in range(theta.numel()):
        values = torch.cat([theta[c:c + 1], conf[pred == c]])
        q = 100.0 * (1.0 - alpha * float(theta[c]) ** gamma)
        psi = linear_percentile(values, min(max(q, 0.0), 100.0))
        out[c] = beta * theta[c] + (1.0 - beta) * psi
    return torch.where(out >= 1.0, torch.full_like(out, cap), out)


def ias_pseudo_labels(confidence: torch.Tensor, prediction: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """IAST's pseudo-label of one instance: the argmax class where confidence ≥ θ_{argmax}, else IGNORE (255).
    confidence: float [...]; prediction: integer [...] in 0..C−1; thresholds: float [C] → int64 [...]."""
    if confidence.shape != prediction.shape:
        raise ValueError(f"prediction: expected the confidence's shape {tuple(confidence.shape)}, got "
                         f"{tuple(prediction.shape)}")
    pred = prediction.long()
    if ((pred < 0) | (pred >= thresholds.numel())).any():
        raise ValueError(f"prediction: values must be 0..{thresholds.numel() - 1}")
    theta = thresholds.to(confidence.device, torch.float64)[pred]
    return torch.where(confidence.double() >= theta, pred, torch.full_like(pred, IGNORE))


class IASSelector:
    """IAST's selector over a stream of instances (one image each, in dataset order): keeps θ, updates it with each
    instance's probabilities (:func:`ias_threshold_update`) and labels that instance with the new θ
    (:func:`ias_pseudo_labels`). Shared by BiSMAP's IAS-PLA (Table 3) and PixIntraDA's Table 6."""

    def __init__(self, num_classes: int, alpha: float = DEFAULTS["alpha"], beta: float = DEFAULTS["beta"],
                 gamma: float = DEFAULTS["gamma"], init: float = DEFAULTS["init"],
                 cap: float = DEFAULTS["cap"]) -> None:
        self.theta = torch.full((num_classes,), float(init), dtype=torch.float64)
        self.alpha, self.beta, self.gamma, self.cap = alpha, beta, gamma, cap

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        """probs: float [C, H, W] softmax of one instance → int64 [H, W] labels (255 = not selected)."""
        conf, pred = probs.max(0)
        self.theta = ias_threshold_update(self.theta, conf, pred, self.alpha, self.beta, self.gamma, self.cap)
        return ias_pseudo_labels(conf, pred, self.theta)
