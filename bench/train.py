"""The one training loop: the only place in uda-bench that calls backward and steps optimisers.

A train stage hands the :class:`Trainer` its modules, one :class:`~bench.schedule.OptimizerSpec` per
optimiser, named map-style datasets and a ``losses`` callable::

    losses(batch, it) -> {optimizer_name: {term_name: scalar tensor}}     # or {optimizer_name: tensor}

``batch`` is ``{dataset_name: collated batch on the device}``; ``it`` is the 0-based index of the
iteration being computed (the first call gets 0; metrics of that iteration are reported as step 1). Each
optimiser's terms are summed and back-propagated into *that optimiser's parameters only*
(``torch.autograd.backward(..., inputs=...)``), so e.g. a generator's adversarial term never leaks gradients
into the discriminator and methods need not toggle ``requires_grad``. An optimiser missing from the output
is not stepped that iteration. The trainer owns seeding, AMP, poly LR, clipping, checkpoints, resume and progress.

The trainer seeds every RNG in :meth:`Trainer._setup`, the train stages' one seeding. A stage builds its networks
from the seeded RNGs too (random layers, discriminators): it hands :meth:`Trainer.deferred` a ``build() -> Recipe``
that runs right after the seeding; the RNGs are then put back to the freshly seeded state, so training draws the
same numbers whatever ``build`` drew — as if the RNGs were seeded once before the build and again before training.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench.checkpoint import (
    atomic_save,
    checkpoint_path,
    load_latest,
    preserved_rng,
    prune_checkpoints,
    rng_state,
    set_rng_state,
)
from bench.progress import TrainProgress
from bench.sampler import InfiniteSampler, derive_seed
from bench.schedule import OptimizerSpec, apply_lr, build_optimizer

LossFn = Callable[[dict[str, Any], int], Mapping[str, Any]]
EvalFn = Callable[[Mapping[str, nn.Module], int], Mapping[str, float]]
AMP_MODES = ("auto", "bf16", "fp16", "off")
MODEL_FILE = "model.pt"


class NonFiniteLossError(RuntimeError):
    """A loss term was NaN or infinite; raised before any backward, step or checkpoint of that iteration."""


@dataclass
class TrainConfig:
    """How to run a train stage (what to optimise is the method's business).

    ``horizon``: poly decay length (None = ``max_iters``); AdaptSegNet uses 250k with ``max_iters`` 150k.
    ``eval_every`` / ``checkpoint_every``: 0 = only at the end. ``amp``: "auto" = bf16 autocast on CUDA and
    off on CPU. ``channels_last``: None = on CUDA. ``deterministic``: True = deterministic algorithms
    (ops without one raise — on CUDA that includes the 2-D cross-entropy, seen on an H200 with torch 2.11, so
    use "warn" there), "warn" = they only warn, False = no constraint. ``progress``: None = a rich bar when
    stdout is a terminal, plain lines every ``log_every`` iterations otherwise.
    """

    max_iters: int
    batch_sizes: dict[str, int]
    horizon: int | None = None
    seed: int = 0
    log_every: int = 50
    eval_every: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    amp: str = "auto"
    device: str = "auto"
    channels_last: bool | None = None
    deterministic: bool | str = False
    num_workers: int = 0
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.max_iters <= 0:
            raise ValueError(f"TrainConfig: max_iters must be positive, got {self.max_iters}")
        if self.horizon is not None and self.horizon <= 0:
            raise ValueError(f"TrainConfig: horizon must be positive, got {self.horizon}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"TrainConfig: amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.deterministic not in (True, False, "warn"):
            raise ValueError(f"TrainConfig: deterministic must be True, False or 'warn', got {self.deterministic!r}")


@dataclass
class Recipe:
    """What a train stage optimises (the trainer decides how): its modules, one optimiser spec per optimiser, the
    ``losses`` callable, its named map-style datasets and an optional ``after_step(it)`` hook run under no_grad
    after the optimiser steps (e.g. an EMA teacher update)."""

    modules: Mapping[str, nn.Module]
    optimizers: Mapping[str, OptimizerSpec]
    losses: LossFn
    datasets: Mapping[str, Dataset]
    after_step: Callable[[int], None] | None = None


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """ "auto" = the current CUDA device if there is one, else the CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None = full precision)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def to_device(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move the tensors in a (nested) batch to ``device``; strings and other values stay as they are."""
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device, non_blocking=True)
        if channels_last and obj.ndim == 4 and obj.is_floating_point():
            obj = obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, channels_last) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, channels_last) for v in obj)
    return obj


def _as_callback(cb: Any) -> Callable[[int, dict[str, float]], None]:
    if hasattr(cb, "on_step"):
        return cb.on_step
    if callable(cb):
        return cb
    raise TypeError(f"callback {cb!r} is neither callable nor has an on_step(step, metrics) method")


class Trainer:
    """Runs one train stage; see the module docstring for the ``losses`` contract.

    ``eval_fn(modules, step)`` runs every ``eval_every`` steps and at the end; it switches modules to
    eval() itself, the trainer restores every module's previous mode afterwards and shields the training
    RNG streams from it. ``callbacks`` get ``(step, metrics)`` after every iteration. ``after_step(it)``
    runs under no_grad after the optimiser steps (e.g. an EMA teacher update). Modules that some optimiser
    updates are put in train() mode; the others (teachers, frozen nets) keep the mode the method gave them.
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        optimizers: Mapping[str, OptimizerSpec],
        losses: LossFn,
        datasets: Mapping[str, Dataset],
        config: TrainConfig,
        out_dir: str | Path | None = None,
        eval_fn: EvalFn | None = None,
        callbacks: Iterable[Any] = (),
        after_step: Callable[[int], None] | None = None,
    ) -> None:
        self._configure(config, out_dir, eval_fn, callbacks)
        self._build: Callable[[], Recipe] | None = None
        self._adopt(Recipe(modules, optimizers, losses, datasets, after_step))

    @classmethod
    def deferred(
        cls,
        build: Callable[[], Recipe],
        config: TrainConfig,
        out_dir: str | Path | None = None,
        eval_fn: EvalFn | None = None,
        callbacks: Iterable[Any] = (),
    ) -> Trainer:
        """A trainer whose recipe ``build()`` makes at the start of :meth:`fit`, right after seeding: the initial
        weights come from the seeded RNGs, and training starts from the freshly seeded state whatever ``build``
        drew. ``modules`` and the rest exist once ``fit`` has begun (``build`` runs once per trainer)."""
        trainer = cls.__new__(cls)
        trainer._configure(config, out_dir, eval_fn, callbacks)
        trainer._build = build
        trainer.modules, trainer.specs, trainer.datasets = {}, {}, {}
        return trainer

    def _configure(self, config: TrainConfig, out_dir, eval_fn, callbacks) -> None:
        """The run settings: device, AMP, horizon, output directory, evaluation and callbacks."""
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.eval_fn = eval_fn
        self.callbacks = [_as_callback(cb) for cb in callbacks]
        self.device = resolve_device(config.device)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        cl = config.channels_last
        self.channels_last = self.device.type == "cuda" if cl is None else bool(cl)
        self.horizon = config.horizon or config.max_iters
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self._params: dict[str, list[nn.Parameter]] = {}
        self.samplers: dict[str, InfiniteSampler] = {}
        self.scaler: torch.amp.GradScaler | None = None
        self.iteration = 0
        self.metrics: dict[str, float] = {}
        self._last_ckpt: int | None = None

    def _adopt(self, recipe: Recipe) -> None:
        """Take a stage's recipe, checked against the config: a batch size per dataset, known module names."""
        batch_sizes = self.config.batch_sizes
        if set(batch_sizes) != set(recipe.datasets):
            raise ValueError(f"batch_sizes names {sorted(batch_sizes)} but the datasets are {sorted(recipe.datasets)}")
        for name, spec in recipe.optimizers.items():
            for m in spec.module_names:
                if m not in recipe.modules:
                    raise KeyError(f"optimiser {name!r} names module {m!r}; the modules are {sorted(recipe.modules)}")
        self.modules, self.specs, self.losses = dict(recipe.modules), dict(recipe.optimizers), recipe.losses
        self.datasets, self.after_step = dict(recipe.datasets), recipe.after_step

    # ----------------------------------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg = self.config
        seed_everything(cfg.seed)  # the train stages' one seeding: their builds and their training start here
        if self._build is not None:
            with preserved_rng():  # back to the freshly seeded state: training ignores what the build drew
                self._adopt(self._build())
            self._build = None
        for m in self.modules.values():
            if self.channels_last:
                m.to(device=self.device, memory_format=torch.channels_last)
            else:
                m.to(self.device)
        self.optimizers = {n: build_optimizer(s, self.modules) for n, s in self.specs.items()}
        self._params = {n: [p for g in o.param_groups for p in g["params"]] for n, o in self.optimizers.items()}
        owner: dict[int, str] = {}
        for n, params in self._params.items():
            for p in params:
                if owner.setdefault(id(p), n) != n:
                    raise ValueError(f"a parameter is in both optimiser {owner[id(p)]!r} and {n!r}")
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.samplers = {}
        for name, ds in self.datasets.items():
            if not hasattr(ds, "__len__"):
                raise TypeError(f"dataset {name!r} must be map-style (define __len__ and __getitem__)")
            self.samplers[name] = InfiniteSampler(len(ds), cfg.batch_sizes[name], cfg.seed, name)
        self.iteration, self.metrics = 0, {}

    def _state(self) -> dict[str, Any]:
        return {
            "format": 1,
            "iteration": self.iteration,
            "modules": {n: m.state_dict() for n, m in self.modules.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "samplers": {n: s.state_dict() for n, s in self.samplers.items()},
            "rng": rng_state(),
            "metrics": dict(self.metrics),
            "config": asdict(self.config),
        }

    def _resume(self) -> int | None:
        loaded = load_latest(self.out_dir) if self.out_dir is not None else None
        if loaded is None:
            return None
        it, state = loaded
        where = checkpoint_path(self.out_dir, it)
        try:
            for n, m in self.modules.items():
                m.load_state_dict(state["modules"][n])
            for n, o in self.optimizers.items():
                o.load_state_dict(state["optimizers"][n])
            if self.scaler is not None and state["scaler"] is not None:
                self.scaler.load_state_dict(state["scaler"])
            for n, s in self.samplers.items():
                s.load_state_dict(state["samplers"][n])
        except (KeyError, RuntimeError, ValueError) as e:
            raise RuntimeError(
                f"cannot resume from {where}: it does not match this run ({type(e).__name__}: {e}); "
                "use a fresh out_dir or delete the checkpoints"
            ) from e
        set_rng_state(state["rng"])
        self.iteration, self.metrics = int(state["iteration"]), dict(state["metrics"])
        return it

    def _save_checkpoint(self) -> None:
        if self.out_dir is None:
            return
        atomic_save(self._state(), checkpoint_path(self.out_dir, self.iteration))
        prune_checkpoints(self.out_dir, self.config.keep_checkpoints)

    # ------------------------------------------------------------------------------------- iteration
    def _collect(self, out: Any, it: int) -> dict[str, dict[str, torch.Tensor]]:
        """Validate the losses output and check every term is finite (one device sync for all)."""
        if not isinstance(out, Mapping):
            raise TypeError(f"losses() must return {{optimizer: {{term: tensor}}}}, got {type(out).__name__}")
        terms: dict[str, dict[str, torch.Tensor]] = {}
        for opt, value in out.items():
            if opt not in self.optimizers:
                raise KeyError(f"losses() returned optimiser {opt!r}; the optimisers are {sorted(self.optimizers)}")
            value = {"loss": value} if isinstance(value, torch.Tensor) else dict(value)
            for term, t in value.items():
                if not isinstance(t, torch.Tensor) or t.numel() != 1:
                    raise TypeError(f"loss term {opt}/{term} must be a scalar tensor, got {t!r:.80}")
            if value:
                terms[opt] = value
        flat = [(f"{o}/{k}", t) for o, d in terms.items() for k, t in d.items()]
        if flat:
            values = torch.stack([t.detach().float().reshape(()) for _, t in flat]).cpu().tolist()
            for (name, _), v in zip(flat, values, strict=True):
                if not math.isfinite(v):
                    last = "none" if self._last_ckpt is None else f"iteration {self._last_ckpt}"
                    raise NonFiniteLossError(
                        f"loss term {name} is {v} at iteration {it + 1}; nothing was stepped or saved for it "
                        f"(last checkpoint: {last})"
                    )
                self.metrics[f"loss/{name}"] = v
            for o, d in terms.items():
                self.metrics[f"loss/{o}"] = sum(self.metrics[f"loss/{o}/{k}"] for k in d)
        return terms

    def _train_step(self, iters: dict[str, Any], it: int) -> None:
        batch = {}
        for name, loader_iter in iters.items():
            batch[name] = to_device(next(loader_iter), self.device, self.channels_last)
            self.samplers[name].advance()
        self.metrics = {}
        for n, o in self.optimizers.items():
            self.metrics[f"lr/{n}"] = apply_lr(o, self.specs[n], it, self.horizon)
            o.zero_grad(set_to_none=True)
        amp = nullcontext() if self.amp_dtype is None else torch.autocast(self.device.type, self.amp_dtype)
        with amp:
            out = self.losses(batch, it)
        terms = self._collect(out, it)
        order = [n for n in self.optimizers if n in terms]
        for i, n in enumerate(order):
            total = sum(terms[n].values())
            if not total.requires_grad:
                raise RuntimeError(f"losses for optimiser {n!r} at iteration {it + 1} depend on no parameter")
            if self.scaler is not None:
                total = self.scaler.scale(total)
            # inputs= keeps each optimiser's loss out of the other optimisers' gradients
            torch.autograd.backward(total, inputs=self._params[n], retain_graph=i < len(order) - 1)
        for n in order:
            opt, spec, params = self.optimizers[n], self.specs[n], self._params[n]
            if not any(p.grad is not None for p in params):
                continue  # nothing reached these parameters; GradScaler.step would assert
            if spec.clip_grad_norm is not None:
                if self.scaler is not None:
                    self.scaler.unscale_(opt)
                norm = torch.nn.utils.clip_grad_norm_(params, spec.clip_grad_norm)
                self.metrics[f"grad_norm/{n}"] = float(norm)
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()
        if self.after_step is not None:
            with torch.no_grad():
                self.after_step(it)

    def _evaluate(self, step: int) -> dict[str, float]:
        modes = {n: m.training for n, m in self.modules.items()}
        try:
            with preserved_rng():  # eval frequency must not change the training trajectory
                result = self.eval_fn(self.modules, step)
        finally:
            for n, m in self.modules.items():
                m.train(modes[n])
        return {k: float(v) for k, v in (result or {}).items()}

    # ------------------------------------------------------------------------------------------- fit
    def fit(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train to ``max_iters`` (resuming from ``out_dir``'s latest checkpoint); returns a summary.

        ``stop_at=k`` stops after iteration k with a checkpoint, as if the job were killed there. The
        summary holds the last ``metrics``, total ``iterations``, ``iterations_run`` in this call,
        ``seconds`` (wall time of the call, a deferred build included), ``seconds_per_iteration`` (training
        steps only), ``resumed_from`` and ``finished``.
        """
        cfg, t0 = self.config, time.perf_counter()
        with determinism(cfg.deterministic):
            self._setup()
            resumed = self._last_ckpt = self._resume()
            start = self.iteration
            end = cfg.max_iters if stop_at is None else min(cfg.max_iters, stop_at)
            train_seconds = self._run(start, end, stop_at) if start < end else 0.0
            if self.iteration >= cfg.max_iters and self.out_dir is not None:
                atomic_save({n: m.state_dict() for n, m in self.modules.items()}, self.out_dir / MODEL_FILE)
        run = self.iteration - start
        return {
            "metrics": dict(self.metrics),
            "iterations": self.iteration,
            "iterations_run": run,
            "seconds": time.perf_counter() - t0,
            "seconds_per_iteration": train_seconds / run if run else 0.0,
            "resumed_from": resumed,
            "finished": self.iteration >= cfg.max_iters,
        }

    def _run(self, start: int, end: int, stop_at: int | None) -> float:
        """Iterations ``start`` .. ``end - 1``; returns the seconds spent in training steps."""
        cfg = self.config
        iters: dict[str, Any] = {}
        progress, seconds = None, 0.0
        try:
            iters.update(self._loaders())
            for n in {m for s in self.specs.values() for m in s.module_names}:
                self.modules[n].train()
            progress = TrainProgress(cfg.max_iters, start, cfg.log_every, cfg.progress)
            for it in range(start, end):
                t_step = time.perf_counter()
                self._train_step(iters, it)
                seconds += time.perf_counter() - t_step
                self._end_iteration(it + 1, stop_at, progress)
        finally:
            if progress is not None:
                progress.close()
            iters.clear()  # shuts down DataLoader workers
        return seconds

    def _loaders(self) -> dict[str, Any]:
        """One endless iterator per dataset, batched by its sampler (so a resume continues where it stopped)."""
        cfg, out = self.config, {}
        for name, ds in self.datasets.items():
            loader = DataLoader(
                ds,
                batch_sampler=self.samplers[name],
                num_workers=cfg.num_workers,
                pin_memory=self.device.type == "cuda",
                # its own generator: creating the iterator must not draw from the global torch RNG
                generator=torch.Generator().manual_seed(derive_seed("loader", cfg.seed, name)),
            )
            out[name] = iter(loader)
        return out

    def _end_iteration(self, step: int, stop_at: int | None, progress: TrainProgress) -> None:
        """After step ``step``: evaluation when due, callbacks, progress, and a checkpoint when due."""
        cfg = self.config
        self.iteration = step
        last = step == cfg.max_iters
        if self.eval_fn is not None and (last or (cfg.eval_every > 0 and step % cfg.eval_every == 0)):
            ev = self._evaluate(step)
            self.metrics.update(ev)
            progress.message(f"eval it {step}: " + " ".join(f"{k}={v:.4g}" for k, v in ev.items()))
        for cb in self.callbacks:
            cb(step, dict(self.metrics))
        progress.update(step, self.metrics)
        periodic = cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0
        if periodic or last or step == stop_at:
            self._save_checkpoint()
            self._last_ckpt = step


@contextlib.contextmanager
def determinism(mode: bool | str):
    """Run the block under ``TrainConfig.deterministic``'s torch settings, restoring the caller's afterwards."""
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    if mode:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reads it at first use
        torch.use_deterministic_algorithms(True, warn_only=mode == "warn")
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev[2], prev[3]
