"""The swept key's search space from a CLI word: a list (``delta_d=0.5,1,1.5``: a grid) or a range
(``delta_d=uniform(0.5,3.5)``, ``loguniform(1e-4,1e-2)``, ``randint(1,5)``, ``choice([0.5,1,2])``), and its Ray
Tune form for ``--search grid|random|optuna``. Parsing needs no Ray, so bad input fails before a cluster starts."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bench.suite_runner import SuiteError

SEARCHES = ("grid", "random", "optuna")
_RANGE = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$", re.S)
_HOW = ("write a list key=a,b,c (grid) or a range key=uniform(lo,hi), loguniform(lo,hi) (0 < lo < hi), "
        "randint(lo,hi) (integers lo ≤ v < hi) or choice([a,b,c])")


@dataclass(frozen=True)
class Space:
    """``kind``: ``grid`` (``args`` = the values), ``uniform``/``loguniform``/``randint`` (``args`` = (lo, hi)) or
    ``choice`` (``args`` = the values)."""

    key: str
    kind: str
    args: tuple

    @property
    def is_range(self) -> bool:
        return self.kind not in ("grid", "choice")

    def probes(self) -> list:
        """Values that stand for the space when planning which stages every trial shares: two different values
        differ in every stage the key reaches, so the stages they have in common do not read it."""
        if not self.is_range:
            return list(self.args)
        lo, hi = self.args
        return [lo, hi - 1] if self.kind == "randint" and hi - lo > 1 else [lo, hi] if lo != hi else [lo]

    def check(self, search: str) -> None:
        """Raise the one clear error when ``search`` cannot run this space (no Ray needed)."""
        if search not in SEARCHES:
            raise SuiteError(f"--search {search!r}: choose one of {', '.join(SEARCHES)}")
        if search == "grid" and self.is_range:
            raise SuiteError(f"sweep key {self.key}: a range ({self.kind}) has no grid; add --search random or "
                             f"--search optuna with --num-samples N, or list the values {self.key}=a,b,c")

    def to_tune(self, search: str):
        """The Tune search-space entry for ``search``: a grid stays ``grid_search`` under ``grid``; under random or
        Optuna a list becomes a ``choice`` (Optuna cannot run Tune's grids)."""
        from ray import tune

        self.check(search)
        if search == "grid":
            return tune.grid_search(list(self.args))
        if not self.is_range:
            return tune.choice(list(self.args))
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](*self.args)


def _scalar(text: str):
    """A YAML scalar, with ``1e-4`` read as a number (YAML 1.1 reads it as a string)."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _number(key: str, text: str) -> float:
    value = _scalar(text.strip()) if text.strip() else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SuiteError(f"sweep key {key}: {text.strip()!r} is not a finite number; {_HOW}")
    return value


def _range(key: str, kind: str, body: str) -> Space:
    import yaml

    if kind == "choice":
        try:
            values = yaml.safe_load(body if body.strip().startswith("[") else f"[{body}]")
        except yaml.YAMLError:
            values = None
        if not isinstance(values, list) or not values:
            raise SuiteError(f"sweep key {key}: choice({body}) needs a non-empty list; {_HOW}")
        return Space(key, "choice", tuple(_scalar(v) if isinstance(v, str) else v for v in values))
    parts = body.split(",")
    if len(parts) != 2:
        raise SuiteError(f"sweep key {key}: {kind}({body}) needs exactly two bounds lo,hi; {_HOW}")
    lo, hi = (_number(key, p) for p in parts)
    if kind == "randint" and not (isinstance(lo, int) and isinstance(hi, int)):
        raise SuiteError(f"sweep key {key}: randint({body}) needs integer bounds; {_HOW}")
    if not lo < hi or (kind == "loguniform" and lo <= 0):
        raise SuiteError(f"sweep key {key}: {kind}({body}) needs lo < hi" + (" and lo > 0" if kind == "loguniform"
                                                                            else "") + f"; {_HOW}")
    return Space(key, kind, (lo, hi))


def parse_space(key: str, raw: str) -> Space:
    """``raw`` (the text after ``key=``) → a :class:`Space`; one ``SuiteError`` naming the key and the fix."""
    import yaml

    m = _RANGE.match(raw)
    if m:
        kind, body = m.group(1), m.group(2)
        if kind not in ("uniform", "loguniform", "randint", "choice"):
            raise SuiteError(f"sweep key {key}: unknown range {kind}(…); {_HOW}")
        return _range(key, kind, body)
    if not raw.strip() or "(" in raw or ")" in raw:
        raise SuiteError(f"sweep key {key}: cannot read {raw!r}; {_HOW}")
    try:
        values = [_scalar(x) for x in raw.split(",")]
    except yaml.YAMLError as e:
        raise SuiteError(f"sweep key {key}: cannot read {raw!r} ({e.problem}); {_HOW}") from None
    if any(v is None for v in values):
        raise SuiteError(f"sweep key {key}: an empty value in {raw!r}; {_HOW}")
    return Space(key, "grid", tuple(values))
