"""Optimisers and the poly learning-rate schedule used by every method.

Methods declare an :class:`OptimizerSpec` per optimiser; :func:`build_optimizer` turns it into a torch
optimiser whose parameter groups carry their ``lr_mult`` (DeepLab's 10x classifier-head rate), and
:func:`apply_lr` sets every group's rate for one iteration from the pure function :func:`poly_lr`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

OPTIMIZER_KINDS = ("sgd", "adam", "adamw")


def poly_lr(
    base_lr: float,
    it: int,
    horizon: int,
    power: float = 0.9,
    warmup_iters: int = 0,
    warmup_ratio: float = 1e-6,
) -> float:
    """Poly schedule ``base_lr * (1 - it / horizon) ** power`` with an optional linear warm-up.

    ``it`` is the 0-based iteration about to be computed, so the first update uses ``base_lr``.
    ``horizon`` is the decay length, which may exceed the stop iteration (AdaptSegNet decays over 250k
    iterations and stops at 150k); past it the rate is 0. During warm-up (``it < warmup_iters``) the poly
    value is scaled linearly from ``warmup_ratio`` up to 1, as in mmcv's linear warm-up used by DAFormer.
    """
    if horizon <= 0:
        raise ValueError(f"poly_lr: horizon must be positive, got {horizon}")
    if it < 0:
        raise ValueError(f"poly_lr: iteration must be >= 0, got {it}")
    lr = base_lr * max(0.0, 1.0 - it / horizon) ** power
    if it < warmup_iters:
        k = (1.0 - it / warmup_iters) * (1.0 - warmup_ratio)
        lr *= 1.0 - k
    return lr


@dataclass
class OptimizerSpec:
    """One optimiser: which modules it updates, its kind, its hyperparameters and its poly schedule.

    ``modules`` names one or several entries of the trainer's module dict. A module that defines
    ``parameter_groups()`` (a list of ``{"params", "lr_mult", "name"}`` dicts, optionally with a
    ``"weight_decay"``) gets those groups; any other module contributes all its trainable parameters with
    ``lr_mult`` 1; ``head_lr_mult`` replaces every group multiplier other than 1 (a recipe with one lr for all
parameters sets it to 1). ``clip_grad_norm`` clips this optimiser's gradients (after AMP unscaling) when set.
    """

    modules: str | Sequence[str]
    kind: str = "sgd"
    lr: float = 2.5e-4
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    power: float = 0.9
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    clip_grad_norm: float | None = None
    head_lr_mult: float | None = None  # replaces the modules' own non-1 lr_mult (the 10× head); None keeps it

    def __post_init__(self) -> None:
        if self.kind not in OPTIMIZER_KINDS:
            raise ValueError(f"OptimizerSpec: unknown kind {self.kind!r}; use one of {OPTIMIZER_KINDS}")
        if self.lr < 0:
            raise ValueError(f"OptimizerSpec: lr must be >= 0, got {self.lr}")

    @property
    def module_names(self) -> tuple[str, ...]:
        """The module names as a tuple, whether one or several were given."""
        return (self.modules,) if isinstance(self.modules, str) else tuple(self.modules)

    def lr_at(self, it: int, horizon: int) -> float:
        """The base (``lr_mult`` 1) learning rate of iteration ``it``."""
        return poly_lr(self.lr, it, horizon, self.power, self.warmup_iters, self.warmup_ratio)


def module_param_groups(name: str, module: nn.Module) -> list[dict]:
    """Trainable parameter groups of one module, honouring its ``parameter_groups()`` if it has one.

    Raises if the module's groups repeat a parameter or leave a trainable one out: a parameter that no
    group holds would silently never train.
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    if not hasattr(module, "parameter_groups"):
        return [{"params": trainable, "lr_mult": 1.0, "name": name}]
    groups, seen = [], set()
    for i, g in enumerate(module.parameter_groups()):
        params = [p for p in g["params"] if p.requires_grad]
        for p in params:
            if id(p) in seen:
                raise ValueError(f"module {name!r}: parameter_groups() lists a parameter twice")
            seen.add(id(p))
        group = {"params": params, "lr_mult": float(g.get("lr_mult", 1.0)), "name": f"{name}.{g.get('name', i)}"}
        if "weight_decay" in g:
            group["weight_decay"] = float(g["weight_decay"])
        if params:
            groups.append(group)
    missing = sum(1 for p in trainable if id(p) not in seen)
    if missing:
        raise ValueError(
            f"module {name!r}: parameter_groups() leaves out {missing} trainable parameter(s); "
            "list them in a group or set requires_grad=False"
        )
    return groups


def build_optimizer(spec: OptimizerSpec, modules: Mapping[str, nn.Module]) -> torch.optim.Optimizer:
    """Create the torch optimiser for ``spec`` over the named modules (group lrs are set per iteration)."""
    groups = []
    for name in spec.module_names:
        if name not in modules:
            raise KeyError(f"OptimizerSpec names module {name!r}, but the modules are {sorted(modules)}")
        groups += module_param_groups(name, modules[name])
    if spec.head_lr_mult is not None:
        for g in groups:
            if g["lr_mult"] != 1.0:
                g["lr_mult"] = float(spec.head_lr_mult)
    if not groups:
        raise ValueError(f"OptimizerSpec over {spec.module_names} has no trainable parameters")
    for g in groups:
        g["lr"] = spec.lr * g["lr_mult"]
    if spec.kind == "sgd":
        return torch.optim.SGD(
            groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay
        )
    cls = torch.optim.Adam if spec.kind == "adam" else torch.optim.AdamW
    return cls(groups, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay)


def apply_lr(optimizer: torch.optim.Optimizer, spec: OptimizerSpec, it: int, horizon: int) -> float:
    """Set every group's rate for iteration ``it`` to ``poly_lr * lr_mult``; returns the base rate."""
    base = spec.lr_at(it, horizon)
    for g in optimizer.param_groups:
        g["lr"] = base * g.get("lr_mult", 1.0)
    return base
