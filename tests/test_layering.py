"""Import layering (issue 17): methods/ stays below the harness, and bench/ has no import cycle.

Every import counts, module-level or inside a function, since a function-local import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HARNESS = ("bench.suite_plan", "bench.scheduler", "bench.sweep", "bench.tracking", "bench.cli", "bench.suite_runner")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("bench", "methods"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of bench/ and methods/ that ``name`` imports anywhere in its body."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = name.split(".")[: len(name.split(".")) - node.level + is_pkg]
                base = ".".join(pkg + ([base] if base else []))
            # `from bench.data import io` needs the submodule; any other name needs the package itself
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def test_methods_do_not_import_the_harness():
    bad = sorted((m, d) for m, deps in _graph().items() if m.startswith("methods")
                 for d in deps if d in HARNESS or d.startswith(tuple(h + "." for h in HARNESS)))
    assert not bad, f"methods/ imports the planner, runner, sweep, tracking or CLI: {bad}"


def test_bench_has_no_import_cycle():
    graph = {m: {d for d in deps if d.startswith("bench")} for m, deps in _graph().items() if m.startswith("bench")}
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import cycle in bench/: " + " -> ".join(cycle))


def test_graph_sees_local_imports():
    # guards the test itself: stage_exec.py imports bench.train inside a function only
    assert "bench.train" in _graph()["bench.stage_exec"]
