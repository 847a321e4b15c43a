"""What every method shares: config fields that carry their provenance, and a registry of methods."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

SOURCES = ("paper", "code", "inferred", "harness")


def param(default: Any, source: str, note: str = "") -> Any:
    """A config field whose default says where it comes from: paper, code (the official code), inferred
    (the paper is silent; our reading), or harness (a uda-bench setting, not part of the method)."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r}; valid: {SOURCES}")
    kw = {"default_factory": (lambda d=default: type(d)(d))} if isinstance(default, (list, dict)) else {
        "default": default}
    return dataclasses.field(metadata={"source": source, "note": note}, **kw)


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
}


def get_method(name: str):
    """The method module (with ``Config`` and ``run``) for a registered name."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; valid: {sorted(METHODS)}")
    return importlib.import_module(METHODS[name])
