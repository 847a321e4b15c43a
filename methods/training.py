"""What every train stage shares: the schedule fields a Config declares (:func:`schedule`), the stage params read
from them (:func:`schedule_params`), the optimiser specs read back from those params, and the train-stage shell
(:func:`train_segmenter`: initial model, optimiser, trainer, model spec) with its standard result
(:func:`stage_result`).

Seeding is the trainer's (``bench.train.Trainer.deferred``): a stage's networks are built right after it seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from methods.fields import field_group

# the poly-SGD schedule of one train stage (horizon: the poly decay length, None = iters)
SCHEDULE = {"iters": int, "horizon": int | None, "batch_size": int, "lr": float, "momentum": float,
            "weight_decay": float, "power": float}
# AdaptSegNet's schedule, which source-only training, SSF-DAN and PixIntraDA's Stage I adopt
ADAPTSEGNET = {"iters": 150_000, "horizon": 250_000, "batch_size": 1, "lr": 2.5e-4, "momentum": 0.9,
               "weight_decay": 5e-4, "power": 0.9}
ADAPTSEGNET_NOTES = {"iters": "AdaptSegNet stops at 150k", "horizon": "AdaptSegNet's poly decays over 250k iterations",
                     "batch_size": "images per domain and iteration (AdaptSegNet: 1 source + 1 target)"}
DOMAINS = ("source", "target_train")  # what an adaptation stage reads: labelled source, unlabelled target


def schedule(prefix: str = "", **declared) -> type:
    """A Config mixin with the schedule fields in ``declared`` (values; ``source``/``sources``/``note``/``notes``:
    their provenance, see ``methods.fields.field_group``), named ``{prefix}{name}``: a prefixed schedule (warm-up,
    Stage I, self-training) declares only what it does not share with the unprefixed one."""
    return field_group(SCHEDULE, prefix, **declared)


def schedule_params(cfg, prefix: str = "", names=tuple(SCHEDULE)) -> dict:
    """A stage's schedule params, keyed without the prefix: each from the field ``{prefix}{name}``, else the
    unprefixed field (a warm-up that shares the stages' momentum), else — for ``horizon`` only — None (= iters).
    ``cfg``: a Config or a mapping of its (resolved) values."""
    def value(name: str):
        for key in (prefix + name, name):
            if (key in cfg) if isinstance(cfg, dict) else hasattr(cfg, key):
                return cfg[key] if isinstance(cfg, dict) else getattr(cfg, key)
        if name == "horizon":
            return None
        raise KeyError(f"{type(cfg).__name__} has neither {prefix + name!r} nor {name!r}")

    return {name: value(name) for name in names}


def segmenter_spec(p: dict):
    """The segmenter's SGD with poly decay, from a stage's schedule params; ``nesterov``, ``head_lr_mult`` and
    ``lr_warmup_iters`` (a linear warm-up from 0) apply where the stage has them."""
    from bench.schedule import OptimizerSpec

    warmup = {"warmup_iters": p["lr_warmup_iters"], "warmup_ratio": 0.0} if "lr_warmup_iters" in p else {}
    return OptimizerSpec("segmenter", kind="sgd", lr=p["lr"], momentum=p["momentum"], nesterov=p.get("nesterov", False),
                         weight_decay=p["weight_decay"], power=p["power"], head_lr_mult=p.get("head_lr_mult"), **warmup)


def discriminator_spec(modules, p: dict):
    """Adam over the discriminator ``modules`` (AdaptSegNet's: ``d_lr``, betas ``d_betas`` else (0.9, 0.99), the
    poly power ``d_power`` else the segmenter's)."""
    from bench.schedule import OptimizerSpec

    return OptimizerSpec(modules, kind="adam", lr=p["d_lr"], betas=tuple(p.get("d_betas", (0.9, 0.99))),
                         power=p.get("d_power", p["power"]))


@dataclass
class Parts:
    """What a train stage adds around its segmenter: the ``losses``, the named datasets, other modules
    (discriminators, an EMA teacher) with their optimisers, and an ``after_step(it)`` hook."""

    losses: Callable
    datasets: dict
    modules: dict = field(default_factory=dict)
    optimizers: dict = field(default_factory=dict)
    after_step: Callable[[int], None] | None = None


def train_segmenter(p: dict, ctx, parts: Callable[[Any], Parts], batch_sizes: dict,
                    init_weights: str | None = None) -> dict:
    """Run one train stage and return the trainer's summary: the segmenter from ``ctx.start_model`` (the upstream
    ``init`` model, else ``p["model"]`` from ``init_weights`` or ``p["init_weights"]``), ``parts(segmenter)`` around
    it, :func:`segmenter_spec`, ``p["iters"]`` / ``p.get("horizon")`` and ``batch_sizes``; then ``model.json``.
    The trainer builds all this right after seeding (``Trainer.deferred``), in that order: the initial weights and
    discriminators draw from the seeded RNGs, and training starts from the freshly seeded state."""
    from bench.train import Recipe, Trainer

    start = p if init_weights is None else {**p, "init_weights": init_weights}

    def build() -> Recipe:
        model = ctx.start_model(start)
        extra = parts(model)
        return Recipe({"segmenter": model, **extra.modules}, {"segmenter": segmenter_spec(p), **extra.optimizers},
                      extra.losses, extra.datasets, extra.after_step)

    trainer = Trainer.deferred(build, ctx.train_config(p["iters"], p.get("horizon"), batch_sizes),
                               out_dir=ctx.out_dir, callbacks=ctx.callbacks(p["iters"]))
    fit = trainer.fit()
    ctx.record_model(start)
    return fit


def stage_result(fit: dict) -> dict:
    """A train stage's standard result from the trainer's summary."""
    return {"train_seconds": fit["seconds"], "seconds_per_iter": fit["seconds_per_iteration"],
            "iterations": fit["iterations"]}
