#!/usr/bin/env bash
# ./reproduce.sh [SUITE] [key=value ...]   run a suite (no SUITE: the embedded MiniCity suite)
# ./reproduce.sh test [pytest args]        run the test suite
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[reproduce] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# Reinstall only when the dependency files change.
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[reproduce] installing uda-bench and its pinned dependencies into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
if [ "${1:-}" = "test" ]; then
  shift
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/bench run "$@"
