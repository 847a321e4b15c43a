"""SSF-DAN's Semantic-wise Separable Discriminator (SS-D; Du et al., ICCV 2019, §3.3 and §3.5 "Discriminator").

One independent five-layer conv module D^c per class — kernels 1, 3, 3, 3, 3; channels
``in → 1024 → 512 → 256 → 128 → 1``; LeakyReLU(0.2) after every layer but the last — fed the separated
feature block F^c = F ⊙ M^c; the class outputs are summed into one channel (Fig. 2, "⊕"). Strides and padding
are not given: stride 1 with "same" padding keeps the feature grid, which the paper's "downsample the masks to
the discriminator's output size" implies (inferred). At 2048 input channels that is ≈8.3 M parameters per
class, ≈158 M for 19.

The parameters live as per-layer stacks ``weight{i}: [C, out, in, k, k]``, ``bias{i}: [C, out]``, each class
slice initialised like a default ``nn.Conv2d``, so that :meth:`SeparableDiscriminator.forward` can run every
class at once:

* layer 1 is 1×1, so D^c's first layer commutes with the mask: W(F ⊙ M^c) + b = M^c ⊙ (W F) + b. One
  convolution of the *unmasked* F with the stacked weights of the present classes replaces materialising the
  [N, K·in, h, w] masked input; layers 2–5 are grouped convolutions (``groups`` = classes);
* a class absent from the masks sees F^c = 0, so its output D^c(0) does not depend on the features. It is
  computed once on a zero input of at most (2r+1)×(2r+1) cells (r = number of 3×3 layers = the receptive
  radius) and expanded: with zero padding, a cell's value depends only on its distance to each border,
  clipped at r. Absent classes still contribute to the sum and receive gradients, exactly as in the loop.

:meth:`SeparableDiscriminator.forward_loop` runs the C modules one by one on ``separate_features`` and is the
reference the fast path is tested against. :func:`benchmark` times both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.data.labels import IGNORE, NUM_CLASSES

PAPER_WIDTHS = (1024, 512, 256, 128)
PAPER_IN_CHANNELS = 2048


def separate_features(features: torch.Tensor, labels: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """SSF-DAN §3.3 ("semantic-wise separation", Φ in Fig. 2): F^c = F ⊙ M^c for every class c.

    ``features``: float [N, D, h, w] (the last feature map); ``labels``: integer [N, h, w] at the same grid
    (the mode-downsampled pseudo-label), values 0..num_classes-1 or IGNORE. Returns [N, C, D, h, w] of the
    features' dtype: block c keeps F where the label is c and is 0 elsewhere. An IGNORE cell is zero in every
    block; a class with no cell gives an all-zero block. Gradient flows to ``features`` (the mask carries none).
    NaN in ``features`` is passed through in the kept cells and zeroed (× 0 → NaN, so it *propagates*) — the
    trainer's non-finite check reports it.
    """
    check_features_labels(features, labels, num_classes)
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
    masks = (labels.unsqueeze(1) == classes).to(features.dtype)  # [N, C, h, w]
    return features.unsqueeze(1) * masks.unsqueeze(2)


def check_features_labels(features: torch.Tensor, labels: torch.Tensor | None, num_classes: int) -> None:
    """One clear ValueError for a feature map / label grid that cannot be separated."""
    if features.dim() != 4 or not features.is_floating_point():
        raise ValueError(f"features: expected a float tensor [N, D, h, w], got {features.dtype} "
                         f"{tuple(features.shape)}")
    if labels is None:
        return
    if labels.dim() != 3 or labels.shape != (features.shape[0], *features.shape[2:]) or labels.is_floating_point():
        raise ValueError(f"labels: expected an integer tensor [N, h, w] = {(features.shape[0], *features.shape[2:])} "
                         f"(the features' grid), got {labels.dtype} {tuple(labels.shape)}")
    bad = (labels != IGNORE) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"labels: values must be 0..{num_classes - 1} or {IGNORE} (ignore), "
                         f"found {sorted(set(labels[bad].unique().tolist()))[:5]}")


def _border_index(n: int, r: int, device) -> torch.Tensor:
    """Row (or column) of a (2r+1)-long zero-input response that position 0..n-1 of an n-long map equals."""
    i = torch.arange(n, device=device)
    if n <= 2 * r + 1:
        return i
    far = n - 1 - i  # distance to the far border
    return torch.where(i < r, i, torch.where(far < r, 2 * r - far, torch.full_like(i, r)))


class SeparableDiscriminator(nn.Module):
    """SS-D: ``num_classes`` independent conv modules with summed outputs (see the module docstring).

    ``in_channels`` and ``widths`` are constructor arguments (the paper: 2048 and (1024, 512, 256, 128);
    MiniCity's small backbone has far fewer feature channels). ``forward(features, labels)`` returns the
    summed logits [N, 1, h, w] (``per_class=True``: [N, C, h, w], one channel per class module). With
    ``labels=None`` every module sees the whole, unmasked F (the "soft" class-wise baseline of Chen et al.
    and, with ``num_classes=1``, a global feature discriminator with the same layers).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, in_channels: int = PAPER_IN_CHANNELS,
                 widths: Sequence[int] = PAPER_WIDTHS, negative_slope: float = 0.2):
        super().__init__()
        if num_classes < 1 or in_channels < 1 or not widths or min(widths) < 1:
            raise ValueError(f"SeparableDiscriminator: num_classes, in_channels and widths must be positive, got "
                             f"{num_classes}, {in_channels}, {tuple(widths)}")
        self.num_classes, self.in_channels, self.widths = num_classes, in_channels, tuple(widths)
        self.negative_slope = negative_slope
        chans = (in_channels, *self.widths, 1)
        self.kernels = (1,) + (3,) * len(self.widths)
        self.radius = len(self.widths)  # receptive radius of the 3×3 layers (stride 1, padding 1)
        for i, k in enumerate(self.kernels):
            w = torch.empty(num_classes, chans[i + 1], chans[i], k, k)
            b = torch.empty(num_classes, chans[i + 1])
            bound = 1.0 / math.sqrt(chans[i] * k * k)
            for c in range(num_classes):  # nn.Conv2d's default init, one class module at a time
                nn.init.kaiming_uniform_(w[c], a=math.sqrt(5))
                nn.init.uniform_(b[c], -bound, bound)
            self.register_parameter(f"weight{i}", nn.Parameter(w))
            self.register_parameter(f"bias{i}", nn.Parameter(b))

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"weight{i}"), getattr(self, f"bias{i}")

    # ------------------------------------------------------------------ fast path
    def _grouped_tail(self, x: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        """Layers 2..L for K class modules at once: x [N, K·w1, h, w] (after layer 1's activation) → [N, K, h, w]."""
        k_groups = self.num_classes if classes is None else len(classes)
        for i in range(1, len(self.kernels)):
            w, b = self.layer(i)
            if classes is not None:
                w, b = w[classes], b[classes]
            x = F.conv2d(x, w.reshape(-1, *w.shape[2:]), b.reshape(-1), padding=1, groups=k_groups)
            if i < len(self.kernels) - 1:
                x = F.leaky_relu(x, self.negative_slope)
        return x

    def _present(self, features: torch.Tensor, labels: torch.Tensor | None, classes: torch.Tensor | None):
        """Outputs [N, K, h, w] of the K modules in ``classes`` (None = all) on their separated features."""
        n, _, h, wd = features.shape
        w0, b0 = self.layer(0)
        if classes is not None:
            w0, b0 = w0[classes], b0[classes]
        k = w0.shape[0]
        y = F.conv2d(features, w0.reshape(-1, self.in_channels, 1, 1)).view(n, k, -1, h, wd)
        if labels is not None:  # D^c's 1×1 layer commutes with the mask: W(F ⊙ M^c) = M^c ⊙ (W F)
            ids = classes if classes is not None else torch.arange(k, device=labels.device)
            mask = (labels.unsqueeze(1) == ids.view(1, -1, 1, 1)).to(y.dtype)
            y = y * mask.unsqueeze(2)
        y = F.leaky_relu(y + b0.view(1, k, -1, 1, 1), self.negative_slope)
        return self._grouped_tail(y.reshape(n, -1, h, wd), classes)

    def _absent(self, classes: torch.Tensor, h: int, w: int, dtype) -> torch.Tensor:
        """D^c(0) for the absent ``classes``: [1, A, h, w], from a zero input of at most (2r+1)² cells."""
        r = self.radius
        sh, sw = min(h, 2 * r + 1), min(w, 2 * r + 1)
        b0 = self.layer(0)[1][classes]  # a zero input makes layer 1 its bias, everywhere
        x = F.leaky_relu(b0.to(dtype).view(1, -1, 1, 1).expand(1, -1, sh, sw), self.negative_slope)
        small = self._grouped_tail(x.contiguous(), classes)  # [1, A, sh, sw]
        rows, cols = _border_index(h, r, small.device), _border_index(w, r, small.device)
        return small[:, :, rows][:, :, :, cols]

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None,
                per_class: bool = False) -> torch.Tensor:
        """Summed SS-D logits [N, 1, h, w] of D^c(F ⊙ M^c) over all classes (``per_class``: [N, C, h, w]).

        ``features`` float [N, in_channels, h, w]; ``labels`` integer [N, h, w] (0..C-1 or IGNORE) on the same
        grid, or None for unmasked input. Equals :meth:`forward_loop` (outputs and gradients) up to float
        rounding; with every cell IGNORE the output does not read ``features`` (their gradient is None, the
        loop's is zero).
        """
        check_features_labels(features, labels, self.num_classes)
        if features.shape[1] != self.in_channels:
            raise ValueError(f"features: expected {self.in_channels} channels, got {features.shape[1]}")
        n, _, h, w = features.shape
        if labels is None:
            out = self._present(features, None, None)
            return out if per_class else out.sum(1, keepdim=True)
        seen = torch.zeros(self.num_classes, dtype=torch.bool, device=labels.device)
        valid = labels[labels != IGNORE]
        seen[valid.long()] = True
        present, absent = seen.nonzero().flatten(), (~seen).nonzero().flatten()
        parts, order = [], []
        if len(present):
            # all present: no index copy of the weight stacks
            parts.append(self._present(features, labels, present if len(absent) else None))
            order.append(present)
        if len(absent):
            parts.append(self._absent(absent, h, w, features.dtype).expand(n, -1, -1, -1))
            order.append(absent)
        if not per_class:
            return sum(p.sum(1, keepdim=True) for p in parts)
        out = torch.cat(parts, 1)
        return out[:, torch.argsort(torch.cat(order))]  # back to class order

    # ------------------------------------------------------------------ reference
    def forward_loop(self, features: torch.Tensor, labels: torch.Tensor | None = None,
                     per_class: bool = False) -> torch.Tensor:
        """The C class modules run one by one on ``separate_features`` (the definition; slow, memory-hungry)."""
        check_features_labels(features, labels, self.num_classes)
        blocks = None if labels is None else separate_features(features, labels, self.num_classes)
        outs = []
        for c in range(self.num_classes):
            x = features if blocks is None else blocks[:, c]
            for i, k in enumerate(self.kernels):
                w, b = self.layer(i)
                x = F.conv2d(x, w[c], b[c], padding=k // 2)
                if i < len(self.kernels) - 1:
                    x = F.leaky_relu(x, self.negative_slope)
            outs.append(x)
        out = torch.cat(outs, 1)
        return out if per_class else out.sum(1, keepdim=True)


def _saved_bytes(fn) -> tuple[torch.Tensor, int]:
    """Run ``fn()`` counting the bytes autograd saves for backward (distinct storages): activation memory."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        except RuntimeError:  # tensors without storage (e.g. some views under functorch) are skipped
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def benchmark(num_classes: int = NUM_CLASSES, in_channels: int = 256, widths: Sequence[int] = (128, 64, 32, 16),
              size: tuple[int, int] = (33, 65), batch: int = 1, present: int = 12, repeats: int = 3,
              device: str = "cpu", seed: int = 0) -> dict:
    """Step time (forward + backward) and memory of the fast path vs the per-class loop at one size.

    ``present`` classes appear in the random label grid (the rest are absent; Cityscapes crops typically
    hold 10–15 of 19). Returns ``{"fast"|"loop": {"seconds", "saved_mb", "peak_mb"}, "params_m", "max_abs_diff"}``:
    ``seconds`` = median over ``repeats`` after one warm-up step; ``saved_mb`` = tensors autograd keeps for
    backward (any device); ``peak_mb`` = CUDA peak allocated during the step (None on CPU). Not a test.
    """
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    disc = SeparableDiscriminator(num_classes, in_channels, widths).to(dev)
    feats = torch.randn(batch, in_channels, *size, generator=gen).to(dev).requires_grad_(True)
    pool = torch.randperm(num_classes, generator=gen)[:present]
    labels = pool[torch.randint(0, present, (batch, *size), generator=gen)].to(dev)
    labels[:, 0, :] = IGNORE  # a row of ignored cells, as PCS leaves
    result: dict = {"params_m": sum(p.numel() for p in disc.parameters()) / 1e6,
                    "size": [batch, in_channels, *size], "present": present, "device": str(dev)}
    outs = {}
    for name, fn in (("fast", disc.forward), ("loop", disc.forward_loop)):
        times, saved, peak = [], 0, None
        for rep in range(repeats + 1):
            disc.zero_grad(set_to_none=True)
            feats.grad = None
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
            t0 = time.perf_counter()
            out, saved = _saved_bytes(lambda fn=fn: fn(feats, labels))
            out.sum().backward()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
            if rep:  # the first step warms up allocators and kernels
                times.append(time.perf_counter() - t0)
        outs[name] = out.detach()
        result[name] = {"seconds": sorted(times)[len(times) // 2], "saved_mb": saved / 2**20, "peak_mb": peak}
    result["max_abs_diff"] = float((outs["fast"] - outs["loop"]).abs().max())
    return result
