"""Repository paths: a leaf module (stdlib only), so methods and the harness can share it without layering issues."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def resolve_root(root: str | Path) -> Path:
    """A suite's path: absolute as given, else relative to the repository (``~`` expanded)."""
    p = Path(root).expanduser()
    return p if p.is_absolute() else REPO / p
