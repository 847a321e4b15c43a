"""What every method shares: config fields that carry their provenance, and a registry of methods."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

SOURCES = ("paper", "code", "inferred", "harness")


def param(default: Any, source: str, note: str = "", doc_only: bool = False) -> Any:
    """A config field whose default says where it comes from: paper, code (the official code), inferred
    (the paper is silent; our reading), or harness (a uda-bench setting, not part of the method).
    ``doc_only``: the field documents a fixed choice that no stage reads (its value is validated, and the ledger
    shows it); every other field must reach a stage or the planner (tests/test_recipes.py checks)."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r}; valid: {SOURCES}")
    kw = {"default_factory": (lambda d=default: type(d)(d))} if isinstance(default, (list, dict)) else {
        "default": default}
    return dataclasses.field(metadata={"source": source, "note": note, "doc_only": doc_only}, **kw)


def provenance(config) -> dict[str, tuple[Any, str, str]]:
    """``{field: (value, source, note)}`` — the run report's fidelity ledger for one config."""
    out = {}
    for f in dataclasses.fields(config):
        src = f.metadata.get("source", "harness")
        value = getattr(config, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = (value, src if value == default else "override", f.metadata.get("note", ""))
    return out


def make_config(cls, values: dict | None = None):
    """Instantiate a Config dataclass from a dict; an unknown key fails with the list of valid ones."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise KeyError(f"{cls.__module__}.{cls.__name__}: unknown key(s) {unknown}; valid: {sorted(names)}")
    for k, v in values.items():  # YAML gives lists where the dataclass holds tuples
        if isinstance(v, list) and isinstance(getattr(cls, k, None), tuple):
            values[k] = tuple(v)
    return cls(**values)


METHODS = {
    "source_only": "methods.source_only",
    "oracle": "methods.oracle",
    "adaptsegnet": "methods.adversarial",
    "cag_uda": "methods.cag_uda.stages",
    "ssf_dan": "methods.ssf_dan.stages",
    "bismap": "methods.bismap.stages",
    "pixintrada": "methods.pixintrada.stages",
    "intrada": "methods.intrada",
}


def get_method(name: str):
    """The method module (with ``Config`` and ``run``) for a registered name."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; valid: {sorted(METHODS)}")
    return importlib.import_module(METHODS[name])


# ------------------------------------------------------------------------------------------ stages
STAGE_KINDS = ("train", "label", "fit", "eval", "data")


@dataclasses.dataclass(eq=False)
class Stage:
    """One cacheable step of a method's pipeline.

    ``name`` identifies the computation across methods (``"source_only.train"`` is the same stage whether
    source-only, the oracle or CAG-UDA asks for it); ``params`` are the config values it reads (and only
    those: a field it does not read cannot change its cache key); ``upstream`` maps an alias to the stage
    whose output directory it reads; ``datasets`` names the suite's dataset domains it reads, whose
    fingerprints enter the key; ``version`` is the code version of ``fn`` — bump it when the stage's
    computation changes. ``fn(params, ctx) -> dict`` must be a module-level function (it is pickled to
    Ray workers); it writes files under ``ctx.out_dir`` and returns JSON-serialisable metrics.
    ``gpu`` is the (possibly fractional) GPU share it asks for when the cluster has GPUs.
    """

    name: str
    kind: str
    fn: Any
    params: dict
    upstream: dict = dataclasses.field(default_factory=dict)
    datasets: tuple = ()
    version: str = "1"
    gpu: float = 1.0
    cpu: float = 1.0
    seeded: bool = True

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage {self.name!r}: kind {self.kind!r}; valid: {STAGE_KINDS}")
        for alias, up in self.upstream.items():
            if not isinstance(up, Stage):
                raise TypeError(f"stage {self.name!r}: upstream {alias!r} is {type(up).__name__}, not a Stage")


def reads(config, *fields: str, **renamed: str) -> dict:
    """The ``params`` of a stage: the named config fields' values (``renamed``: param name → field name,
    for a shared stage whose fields a method names differently)."""
    names = {f.name for f in dataclasses.fields(config)}
    wanted = {f: f for f in fields} | renamed
    missing = sorted(v for v in wanted.values() if v not in names)
    if missing:
        raise KeyError(f"{type(config).__module__}.Config has no field(s) {missing}; valid: {sorted(names)}")
    return {k: getattr(config, v) for k, v in wanted.items()}


def closure(final) -> list[Stage]:
    """Every stage the given stage(s) depend on, upstream first (a stable topological order)."""
    order: list[Stage] = []
    seen: set[int] = set()

    def visit(s: Stage) -> None:
        if id(s) in seen:
            return
        seen.add(id(s))
        for up in s.upstream.values():
            visit(up)
        order.append(s)

    for s in final if isinstance(final, (list, tuple)) else [final]:
        visit(s)
    return order
