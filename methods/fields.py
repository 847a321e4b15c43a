"""Config fields declared as a group: settings several papers share (a train schedule, IAST's selector) are named
and typed once; a paper's Config inherits the group with its own values and provenance (``methods.base.param``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from methods.base import param


def field_group(types: dict[str, Any], prefix: str = "", *, source: str = "paper", sources: dict | None = None,
                note: str = "", notes: dict | None = None, **values) -> type:
    """A dataclass mixin with one field ``{prefix}{name}`` per entry of ``values`` (names from ``types``), each a
    ``param(value, source, note)``: ``sources`` / ``notes`` give a name its own source / note, ``source`` / ``note``
    serve the others. Inherit it in a ``@dataclass`` Config; its fields come before the Config's own."""
    unknown = sorted(set(values) - set(types) | set(sources or {}) - set(values) | set(notes or {}) - set(values))
    if unknown:
        raise KeyError(f"field_group: unknown or unset name(s) {unknown}; valid: {sorted(types)}")
    sources, notes = sources or {}, notes or {}
    fields = [(prefix + name, types[name], param(value, sources.get(name, source), notes.get(name, note)))
              for name, value in values.items()]
    return dataclasses.make_dataclass(f"{prefix}fields", fields)
