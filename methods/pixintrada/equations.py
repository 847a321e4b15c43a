"""PixIntraDA — Yan et al., "Pixel-level Intra-domain Adaptation for Semantic Segmentation", ACM MM 2021
(``shared/papers/004_…``). No code was ever released: every setting is the paper's or our reading of it.

Stage I trains an inter-domain model G_inter (AdaptSegNet multi-level output-space adversarial training on a
style-translated source; for SYNTHIA the paper used BDL's released model). Stage II splits the target pixels into
easy and hard by class thresholds on G_inter's probabilities (Eq. 2–3), self-trains a fresh G on the easy pixels
(Eq. 5) and adapts it to the hard ones with per-pixel adversarial learning, binary (``pla``, Eq. 6) or
continuously indexed (``cts``, Eq. 7–8). A second round (T=1) re-splits with the round-1 model and adds CRST's
KLD regulariser. This module holds the equations; the settings are in ``methods.pixintrada.config`` (re-exported
here), the stages in ``methods.pixintrada.stages``.

Conventions: probabilities ``[N, C, H, W]`` (softmax, at the input resolution: the paper upsamples G's logits
and D's outputs to the input size, §5.1); masks and labels ``[N, H, W]``; ignore = 255.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.data.labels import IGNORE, NUM_CLASSES
from bench.metrics import class_argmax
from methods.pixintrada.config import ALPHA_BY_SOURCE, Config, InterConfig, resolve_alpha  # noqa: F401 - re-exported
from methods.source_only import segmentation_ce


# ------------------------------------------------------------------------------------------ validation
def _desc(x) -> str:
    return f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__


def _check_probs(probs, name: str = "probs") -> None:
    if not isinstance(probs, torch.Tensor) or probs.dim() != 4 or not probs.is_floating_point() \
            or probs.shape[1] == 0:
        raise ValueError(f"{name}: expected a float tensor [N, C, H, W] with C ≥ 1, got {_desc(probs)}")
    if probs.numel() == 0:
        return
    if torch.isnan(probs).any():
        raise ValueError(f"{name}: contains NaN")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(f"{name}: values outside [0, 1]; pass softmax probabilities, not logits")


def _check_mask(mask, n: int | None, hw: tuple | None, name: str = "hard_mask") -> None:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 3 or mask.dtype != torch.bool:
        raise ValueError(f"{name}: expected a bool tensor [N, H, W], got {_desc(mask)}")
    if (n is not None and mask.shape[0] != n) or (hw is not None and tuple(mask.shape[1:]) != tuple(hw)):
        raise ValueError(f"{name}: shape {tuple(mask.shape)} does not match [N, H, W] = [{n}, {hw}]")


def _check_d(d_logits, n: int, name: str = "d_logits") -> None:
    if not isinstance(d_logits, torch.Tensor) or d_logits.dim() != 4 or d_logits.shape[1] != 1 \
            or not d_logits.is_floating_point() or d_logits.shape[0] != n:
        raise ValueError(f"{name}: expected discriminator logits [N={n}, 1, h, w], got {_desc(d_logits)}")


def _check_unit(x: float, name: str, low_open: bool = False) -> float:
    x = float(x)
    if not (0 < x <= 1 if low_open else 0 <= x <= 1):  # also rejects NaN
        raise ValueError(f"{name}: {x} outside {'(0, 1]' if low_open else '[0, 1]'}")
    return x


def _reduce(per_pixel: torch.Tensor, reduction: str) -> torch.Tensor:
    """``per_pixel`` [N, H, W] → Σ / (N·H·W) ('mean') or Σ / N ('sum': per-image sums averaged over the batch)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction {reduction!r}; valid: 'mean', 'sum'")
    if per_pixel.numel() == 0:
        raise ValueError(f"empty input {tuple(per_pixel.shape)}: no pixel to average over")
    return per_pixel.sum() / (per_pixel.numel() if reduction == "mean" else per_pixel.shape[0])


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling of a ``[N, K, h, w]`` map to ``size`` = (H, W) (align_corners=True, as AdaptSegNet's
    ``interp``): PixIntraDA §5.1 upsamples both G's logits and D's outputs to the input size. No-op at that size."""
    if x.dim() != 4:
        raise ValueError(f"x: expected [N, K, h, w], got {_desc(x)}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


# ------------------------------------------------------------------------------------------ t_k (§4.1)
def class_thresholds(probs: torch.Tensor, cap: float = 0.9) -> torch.Tensor:
    """Class thresholds t_k of PixIntraDA §4.1 (below Eq. 2; BDL's rule [19]).

    For class k, the confidences are ``max_c probs[:, c]`` at the pixels whose argmax is k (ties: the lowest
    class index), over the whole set; t_k = min(median, ``cap``). The median of n values is the middle value for
    odd n and the mean of the two middle values for even n (``numpy.median``; BDL's code takes the sorted value
    at ``round(n/2)`` — a difference of one rank, immaterial over millions of pixels). A class never predicted
    (n = 0, also when N·H·W = 0) gets t_k = 0.

    probs: float ``[N, C, H, W]`` in [0, 1], no NaN (else ValueError). Returns ``[C]`` in ``probs.dtype``
    (the median is formed in float64). Holds all pixels in memory; see :class:`ThresholdAccumulator`.
    """
    _check_probs(probs)
    cap = _check_unit(cap, "cap", low_open=True)
    c = probs.shape[1]
    conf, pred = probs.max(dim=1)  # the first maximal index on ties
    conf, pred = conf.reshape(-1).double(), pred.reshape(-1)
    out = torch.zeros(c, dtype=torch.float64, device=probs.device)
    if conf.numel() == 0:
        return out.to(probs.dtype)
    order = torch.argsort(conf, stable=True)
    by_class = torch.argsort(pred[order], stable=True)  # grouped by class, ascending within each class
    vals = conf[order][by_class]
    counts = torch.bincount(pred, minlength=c)
    starts = torch.cumsum(counts, 0) - counts
    last = vals.numel() - 1
    lo = (starts + (counts - 1).clamp(min=0) // 2).clamp(max=last)
    hi = (starts + counts // 2).clamp(max=last)
    median = (vals[lo] + vals[hi]) / 2
    out = torch.where(counts > 0, median.clamp(max=cap), out)
    return out.to(probs.dtype)


class ThresholdAccumulator:
    """Streaming form of :func:`class_thresholds`: per-class histograms of confidences, ``bins`` bins of width
    w = 1/``bins`` over [0, 1] (bin b = [b·w, (b+1)·w), the last one closed at 1; binned in float64).

    ``thresholds()`` takes, for each class, the bin(s) holding the middle rank(s) and returns the mean of their
    centres, capped. Exactness: each value lies within w/2 of its bin centre, so every t_k is within **w/2** of
    :func:`class_thresholds` on the same pixels (the cap is 1-Lipschitz), and equal to it when every confidence
    lies on a bin centre. Memory: C × bins int64 counts (19 × 10 000 = 1.5 MB), whatever the number of images.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, bins: int = 10_000, cap: float = 0.9):
        if int(num_classes) < 1 or int(bins) < 1:
            raise ValueError(f"num_classes ({num_classes}) and bins ({bins}) must be ≥ 1")
        self.num_classes, self.bins = int(num_classes), int(bins)
        self.cap = _check_unit(cap, "cap", low_open=True)
        self.counts = torch.zeros(self.num_classes, self.bins, dtype=torch.int64)

    def update(self, probs: torch.Tensor) -> None:
        """Add a batch of probabilities ``[N, C, H, W]`` (C = ``num_classes``)."""
        _check_probs(probs)
        if probs.shape[1] != self.num_classes:
            raise ValueError(f"probs: {probs.shape[1]} classes, accumulator has {self.num_classes}")
        conf, pred = probs.max(dim=1)
        b = (conf.double() * self.bins).floor().long().clamp_(0, self.bins - 1)
        flat = (pred * self.bins + b).reshape(-1).cpu()
        self.counts += torch.bincount(flat, minlength=self.num_classes * self.bins).view(self.num_classes, -1)

    def merge(self, other: ThresholdAccumulator) -> None:
        """Add another accumulator's counts (e.g. from a parallel labelling worker)."""
        if (other.num_classes, other.bins) != (self.num_classes, self.bins):
            raise ValueError(f"other: (classes, bins) = {(other.num_classes, other.bins)}, "
                             f"expected {(self.num_classes, self.bins)}")
        self.counts += other.counts

    def thresholds(self) -> torch.Tensor:
        """t_k as ``[C]`` float64 (0 for a class never predicted)."""
        n = self.counts.sum(1)
        cum = self.counts.cumsum(1)
        ranks = torch.stack([(n - 1).clamp(min=0) // 2, n // 2], 1)  # 0-based middle ranks
        b = torch.searchsorted(cum, ranks, right=True).clamp(max=self.bins - 1)  # first bin with cum > rank
        centres = (torch.arange(self.bins, dtype=torch.float64) + 0.5) / self.bins
        median = (centres[b[:, 0]] + centres[b[:, 1]]) / 2
        return torch.where(n > 0, median.clamp(max=self.cap), torch.zeros((), dtype=torch.float64))


# ------------------------------------------------------------------------------------------ split (Eq. 2–4, 7)
def split_easy_hard(probs: torch.Tensor, thresholds: torch.Tensor, alpha: float, *,
                    skip_unpredicted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """PixIntraDA Eq. 2 (hard mask M) and Eq. 3 (pseudo-labels).

    A pixel is **hard** (M = 1) when p_k ≤ α·t_k for every class k — a probability exactly at α·t_k does not
    pass (≤ is hard); otherwise it is easy and its label is the argmax of p_k over the classes with p_k > α·t_k
    (ties: lowest class index). Hard pixels get 255 (IGNORE). α·t_k is formed in float64 and rounded to
    ``probs.dtype``; the comparison is in ``probs.dtype``.

    ``skip_unpredicted``: a class with t_k = 0 (never predicted) would pass for any p_k > 0, making every pixel
    easy; by default such classes take no part in Eq. 2–3 (False = the literal equations). α = 0 makes every
    pixel with a positive probability easy with its plain argmax label (the Prop. = 1 endpoint of Table 5).

    probs ``[N, C, H, W]`` float in [0, 1]; thresholds ``[C]`` in [0, 1]; α ∈ [0, 1]. Returns
    ``(hard_mask [N, H, W] bool, pseudo [N, H, W] int64)``. Bad shapes, NaN or out-of-range values: ValueError.
    """
    _check_probs(probs)
    c = probs.shape[1]
    if not isinstance(thresholds, torch.Tensor) or thresholds.shape != (c,):
        raise ValueError(f"thresholds: expected [C={c}], got {_desc(thresholds)}")
    t = thresholds.detach().double().to(probs.device)
    if torch.isnan(t).any() or t.min() < 0 or t.max() > 1:
        raise ValueError(f"thresholds: values must lie in [0, 1] (no NaN), got {thresholds.tolist()}")
    alpha = _check_unit(alpha, "alpha")
    bound = (alpha * t).to(probs.dtype).view(1, c, 1, 1)
    passes = probs > bound
    if skip_unpredicted:
        passes &= (t > 0).view(1, c, 1, 1)
    hard = ~passes.any(dim=1)
    pseudo = class_argmax(torch.where(passes, probs, torch.full((), -1.0, dtype=probs.dtype, device=probs.device)))
    return hard, pseudo.masked_fill(hard, IGNORE)


def easy_proportion(hard_mask: torch.Tensor) -> torch.Tensor:
    """PixIntraDA Eq. 4: Prop. = (1/HWN) Σ_i 1ᵀ(J − M_i)1, the fraction of easy pixels.

    hard_mask: bool ``[N, H, W]`` (True = hard). Returns a float64 scalar in [0, 1]. An empty mask
    (N·H·W = 0) has no proportion: ValueError. Over a whole set, sum easy and total counts across batches.
    """
    _check_mask(hard_mask, None, None)
    if hard_mask.numel() == 0:
        raise ValueError(f"hard_mask: empty {tuple(hard_mask.shape)}; Prop. is undefined")
    return (~hard_mask).sum().double() / hard_mask.numel()


def continuous_index(probs: torch.Tensor, hard_mask: torch.Tensor) -> torch.Tensor:
    """PixIntraDA Eq. 7: Z = 0 on easy pixels, 1 − max_k p_k on hard pixels.

    probs ``[N, C, H, W]`` (G_inter's probabilities, as for Eq. 2); hard_mask bool ``[N, H, W]``. Returns
    ``[N, H, W]`` in ``probs.dtype``, values in [0, 1].
    """
    _check_probs(probs)
    _check_mask(hard_mask, probs.shape[0], probs.shape[2:])
    z = 1 - probs.max(dim=1).values
    return torch.where(hard_mask.to(probs.device), z, torch.zeros((), dtype=probs.dtype, device=probs.device))


# ------------------------------------------------------------------------------------------ losses (Eq. 5, 6, 8)
def partial_ce_loss(logits: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
    """PixIntraDA Eq. 5: cross-entropy on the easy pixels E_i only (pseudo ≠ 255).

    The paper writes a sum over E_i; we average over the easy pixels of the batch (AdaptSegNet's CE, so that
    β keeps AdaptSegNet's scale). logits ``[N, C, h, w]`` are upsampled bilinearly to the label size first
    (§5.1). pseudo: integer ``[N, H, W]`` with values in 0..C−1 or 255. No easy pixel: 0 (with a graph).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or not logits.is_floating_point():
        raise ValueError(f"logits: expected a float tensor [N, C, h, w], got {_desc(logits)}")
    if not isinstance(pseudo, torch.Tensor) or pseudo.dim() != 3 or pseudo.shape[0] != logits.shape[0] \
            or pseudo.is_floating_point() or pseudo.dtype == torch.bool:
        raise ValueError(f"pseudo: expected integer labels [N={logits.shape[0]}, H, W], got {_desc(pseudo)}")
    bad = (pseudo != IGNORE) & ((pseudo < 0) | (pseudo >= logits.shape[1]))
    if bad.any():
        raise ValueError(f"pseudo: labels outside 0..{logits.shape[1] - 1} and {IGNORE}: "
                         f"{sorted(set(pseudo[bad].tolist()))[:5]}")
    return segmentation_ce(logits, pseudo.long())


def _d_map(d_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    _check_d(d_logits, mask.shape[0])
    return upsample(d_logits, mask.shape[1:])[:, 0]


def _log_sum(log_terms: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """Per image log Σ_{selected} exp(log_terms), 0 for an image with nothing selected (no NaN gradient)."""
    has = select.flatten(1).any(1)
    x = log_terms.masked_fill(~select, float("-inf")).flatten(1)
    x = torch.where(has[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    return torch.logsumexp(x, 1) * has


def _valid(valid, like: torch.Tensor, device) -> torch.Tensor | None:
    if valid is None:
        return None
    _check_mask(valid, like.shape[0], like.shape[1:], "valid")
    return valid.to(device)


def pla_d_loss(d_logits: torch.Tensor, hard_mask: torch.Tensor, form: str = "pixel_bce",
               reduction: str = "mean", valid: torch.Tensor | None = None) -> torch.Tensor:
    """PixIntraDA Eq. 6, discriminator side: D(·) = σ(d_logits upsampled to [H, W]) should be 1 on hard and
    0 on easy pixels.

    ``form="pixel_bce"`` (default, our reading): Σ_pixels −[M log D + (1−M) log(1−D)], reduced by
    ``reduction`` ('mean' ÷ N·H·W, 'sum' ÷ N). ``form="log_sum"`` (the printed formula): per image
    −log Σ_hard D − log Σ_easy (1−D), averaged over the batch; a term whose pixel set is empty is 0
    (``reduction`` is ignored). d_logits ``[N, 1, h, w]`` (D has no output activation, as AdaptSegNet's);
    hard_mask bool ``[N, H, W]``. ``valid`` (bool ``[N, H, W]``, optional): pixels outside it (crop padding) are
    neither hard nor easy and cost 0; the 'mean' denominator stays N·H·W.
    """
    _check_mask(hard_mask, None, None)
    d = _d_map(d_logits, hard_mask)
    m = hard_mask.to(d.device)
    v = _valid(valid, hard_mask, d.device)
    if form == "pixel_bce":
        per_pixel = torch.where(m, F.softplus(-d), F.softplus(d))  # −log σ(l), −log(1−σ(l))
        return _reduce(per_pixel if v is None else per_pixel * v, reduction)
    if form == "log_sum":
        easy = ~m if v is None else ~m & v
        return -(_log_sum(F.logsigmoid(d), m if v is None else m & v) + _log_sum(F.logsigmoid(-d), easy)).mean()
    raise ValueError(f"form {form!r}; valid: 'pixel_bce', 'log_sum'")


def pla_g_loss(d_logits: torch.Tensor, hard_mask: torch.Tensor, form: str = "pixel_bce",
               reduction: str = "mean") -> torch.Tensor:
    """PixIntraDA Eq. 6, generator side: on **hard pixels only**, make D output 0 (easy).

    ``pixel_bce``: Σ_hard −log(1 − D), reduced as :func:`pla_d_loss` (÷ N·H·W or ÷ N, not ÷ #hard, so the
    weight of each pixel does not depend on Prop.). ``log_sum``: per image −log Σ_hard (1 − D), batch mean.
    Easy pixels get no gradient. No hard pixel: 0 (with a graph).
    """
    _check_mask(hard_mask, None, None)
    d = _d_map(d_logits, hard_mask)
    m = hard_mask.to(d.device)
    if form == "pixel_bce":
        return _reduce(F.softplus(d) * m, reduction)
    if form == "log_sum":
        return -_log_sum(F.logsigmoid(-d), m).mean()
    raise ValueError(f"form {form!r}; valid: 'pixel_bce', 'log_sum'")


def _activate(d: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "sigmoid":
        return torch.sigmoid(d)
    if activation == "none":
        return d
    raise ValueError(f"activation {activation!r}; valid: 'sigmoid', 'none'")


def cts_d_loss(d_logits: torch.Tensor, z: torch.Tensor, activation: str = "sigmoid",
               reduction: str = "mean", valid: torch.Tensor | None = None) -> torch.Tensor:
    """PixIntraDA Eq. 8, discriminator side: ‖D(G(x)) − Z‖_F², D regresses the continuous index Z (Eq. 7).

    D = ``activation`` (sigmoid | none) of d_logits ``[N, 1, h, w]`` upsampled to Z's size (upsampled before
    the activation). z: float ``[N, H, W]`` in [0, 1]. 'mean' ÷ N·H·W, 'sum' ÷ N (per-image ‖·‖², batch mean).
    ``valid``: as :func:`pla_d_loss` (padding costs 0).
    """
    if not isinstance(z, torch.Tensor) or z.dim() != 3 or not z.is_floating_point():
        raise ValueError(f"z: expected a float tensor [N, H, W], got {_desc(z)}")
    if z.numel() and (torch.isnan(z).any() or z.min() < 0 or z.max() > 1):
        raise ValueError("z: values must lie in [0, 1] (no NaN)")
    _check_d(d_logits, z.shape[0])
    d = _activate(upsample(d_logits, z.shape[1:])[:, 0], activation)
    v = _valid(valid, z, d.device)
    sq = (d - z.to(d)) ** 2
    return _reduce(sq if v is None else sq * v, reduction)


def cts_g_loss(d_logits: torch.Tensor, hard_mask: torch.Tensor, activation: str = "sigmoid",
               reduction: str = "mean") -> torch.Tensor:
    """PixIntraDA Eq. 8, generator side: ‖D(G(x)) ∘ M‖_F², pushing hard pixels towards index 0 (easy).

    Same D, activation and reduction as :func:`cts_d_loss`; easy pixels get no gradient.
    """
    _check_mask(hard_mask, None, None)
    d = _activate(_d_map(d_logits, hard_mask), activation)
    return _reduce((d * hard_mask.to(d.device)) ** 2, reduction)


def kld_regulariser(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """CRST's model regulariser MRKLD (Zou et al., ICCV 2019 [52]), used by PixIntraDA in round T=1 (§5.3).

    Per pixel R = −(1/C) Σ_k log p_k = KL(u ‖ p) + log C, with u uniform and p = softmax(logits): it keeps
    predictions from collapsing onto the pseudo-labels. Averaged over the pixels of ``mask`` (CRST's code: the
    pseudo-labelled pixels, i.e. the easy ones here), or all pixels when ``mask`` is None; weighted by
    ``Config.kld_weight`` outside. logits ``[N, C, h, w]`` upsampled to the mask size (§5.1); mask bool
    ``[N, H, W]``. Empty mask: 0 (with a graph). Minimum log C, at p = u.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or not logits.is_floating_point():
        raise ValueError(f"logits: expected a float tensor [N, C, h, w], got {_desc(logits)}")
    if mask is None:
        return -F.log_softmax(logits.float(), dim=1).mean(dim=1).mean()
    _check_mask(mask, logits.shape[0], None, "mask")
    per_pixel = -F.log_softmax(upsample(logits, mask.shape[1:]).float(), dim=1).mean(dim=1)
    m = mask.to(per_pixel.device)
    if not m.any():
        return logits.sum() * 0.0
    return per_pixel[m].mean()
