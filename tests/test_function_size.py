"""The harness modules of the method contract (issue 17) keep their functions short enough to read at once."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIMIT = 60  # lines, signature and docstring included


@pytest.mark.parametrize("module", ["cli", "report", "suite_runner", "evaluate", "sweep", "sweep_trials",
                                    "sweep_report", "sweep_tune"])
def test_no_function_over_the_limit(module):
    tree = ast.parse((REPO / "bench" / f"{module}.py").read_text())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > LIMIT}
    assert not long, f"bench/{module}.py: functions over {LIMIT} lines: {long}"
