"""What every method shares: config fields that carry their provenance, the stage type, and the method contract
(:class:`Method`: what the harness may ask a method for) with the registry of methods (``methods/registry.py``)."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
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


# ------------------------------------------------------------------------------------------ the contract
@dataclasses.dataclass(frozen=True)
class Study:
    """A named parameter study (``bench sweep NAME``): ``param`` of ``method`` over ``values`` (with ``fixed``
    config overrides), the label stage whose pseudo-label ratio (result key ``ratio_key``) and precision the table
    shows, and the paper's points: ``(paper, table, row or method name, value column, ratio column, ratio scale to
    %[, value scale])`` of the paper's ``<paper>_t<N>_*.csv`` (the value scale maps the paper's column to the swept
    key's units)."""

    method: str
    param: str
    values: tuple
    fixed: dict = dataclasses.field(default_factory=dict)
    label_stage: str | None = None
    paper: tuple | None = None
    note: str = ""
    ratio_key: str = "pl_ratio"
    paper_by_source: dict | None = None  # source dataset name -> a ``paper`` tuple (e.g. PixIntraDA T5 / T8)

    @property
    def slug(self) -> str:
        """The study's name on disk and in Ray Tune: method, key and its fixed overrides, so two studies of one key
        (SSF-DAN's progressive and fixed ρ) never share a results folder or a Tune experiment."""
        return f"{self.method}_{self.param}" + "".join(f"_{k}-{v}" for k, v in self.fixed.items())


@dataclasses.dataclass(frozen=True)
class PaperTable:
    """One of a paper's ablation tables, written once: each row as ``key: (printed row label, config overrides)``.

    A key is one of the method's variants (``""``: the full method, no overrides) or ``method:variant`` for
    another method's run (e.g. ``"intrada:"``; its overrides are that method's business and must be empty). A
    suite that names the table runs its rows as variants and shows them beside the printed values of
    ``<paper>_t<table>_*.csv``. ``base``: the row gains are measured from; ``baseline``: ``(method, printed row)``
    of another method's base run shown first (e.g. source-only); ``name``: the file-name suffix when a method
    shows several tables (default ``t<table>``); ``benchmark``: the one the printed values are on (tables say so
    when a suite of another benchmark, e.g. MiniCity, shows them for scale)."""

    paper: str
    table: int
    rows: Mapping[str, tuple[str, dict]]
    base: str = ""
    baseline: tuple[str, str] | None = None
    name: str | None = None
    benchmark: str | None = None

    def variants(self) -> dict[str, dict]:
        """The method's own rows as ``{variant: overrides}`` (the full method and other methods' rows excluded)."""
        return {k: dict(over) for k, (_, over) in self.rows.items() if k and ":" not in k}


@dataclasses.dataclass(frozen=True)
class Paper:
    """A reproduced paper: ``key`` prefixes its transcribed tables (``<key>_t<N>_<benchmark or name>.csv``),
    ``name`` is how tables caption it, ``rows_dir`` holds its CSVs (None: ``results/paper``)."""

    key: str
    name: str
    rows_dir: str | None = None


def no_hook(cfg) -> None:
    """A hook's default: the method states nothing, the suite decides."""
    return None


def no_rehearsal_change(values: dict) -> list[str]:
    """The ``rehearsal`` hook's default: the suite's values run as they are."""
    return []


@dataclasses.dataclass(frozen=True)
class Method:
    """What the harness may ask a method for. Only ``name``, ``Config`` and ``stages`` are required.

    - ``stages(cfg) -> list[Stage]``: the pipeline; the last stage produces the model that is evaluated.
    - ``paper``, ``tables``, ``studies``: the paper it reproduces, its ablation tables as data (suites name them)
      and its parameter studies (``bench sweep``), all registered with the method.
    - ``input_normalize(cfg)``: the input normalisation its network expects (``caffe`` / ``imagenet`` / ``unit``),
      or None for the suite's; applied to every dataset the method's stages read, and part of their keys.
    - ``eval_protocol(cfg)``: an evaluation protocol the config states (e.g. ``ms``), or None for the suite's.
    - ``weight_fields``: Config fields that name a local weights file (checked before a run; default: every
      field whose name ends in ``weights``).
    - ``rehearsal(values)``: adapt the suite's values of the method for ``bench rehearse`` (every stage for a few
      iterations, on untrained features) in place; returns notes saying what changed.
    """

    name: str
    Config: type
    stages: Callable[[Any], list]
    paper: Paper | None = None
    tables: Mapping[str, PaperTable] = dataclasses.field(default_factory=dict)
    studies: Mapping[str, Study] = dataclasses.field(default_factory=dict)
    input_normalize: Callable[[Any], str | None] = no_hook
    eval_protocol: Callable[[Any], str | None] = no_hook
    weight_fields: tuple[str, ...] | None = None
    rehearsal: Callable[[dict], list[str]] = no_rehearsal_change

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.Config):
            raise TypeError(f"method {self.name!r}: Config must be a dataclass, got {self.Config!r}")
        fields = {f.name for f in dataclasses.fields(self.Config)}
        if self.weight_fields is None:
            object.__setattr__(self, "weight_fields", tuple(sorted(f for f in fields if f.endswith("weights"))))
        bad = sorted(set(self.weight_fields) - fields)
        if bad:
            raise KeyError(f"method {self.name!r}: weight_fields {bad} are not Config fields")
        for tname, t in self.tables.items():
            if t.base not in t.rows:
                raise KeyError(f"method {self.name!r}: table {tname} base {t.base!r} is not one of its rows "
                               f"{sorted(t.rows)}")
            for key, (_, over) in t.rows.items():
                unknown = sorted(set(over) - fields) if ":" not in key else sorted(over)
                if unknown:
                    raise KeyError(f"method {self.name!r}: table {tname} row {key!r} overrides {unknown}, which "
                                   f"are not its Config fields")
        for sname, st in self.studies.items():
            if st.method != self.name:
                raise ValueError(f"method {self.name!r}: study {sname} belongs to {st.method!r}")


_RUNTIME: dict[str, Method] = {}  # methods registered by ``register`` (e.g. a test's), beside methods/registry.py


def register(method: Method) -> Method:
    """Add a method at run time (a test's toy method, a plugin); a name of ``methods/registry.py`` is refused."""
    from methods.registry import METHODS

    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered in methods/registry.py")
    _RUNTIME[method.name] = method
    return method


def unregister(name: str) -> None:
    _RUNTIME.pop(name, None)


def method_names() -> list[str]:
    """Every registered method name, sorted."""
    from methods.registry import METHODS

    return sorted({*METHODS, *_RUNTIME})


def get_method(name: str) -> Method:
    """The registered method ``name`` (its module's ``METHOD``)."""
    from methods.registry import METHODS

    if name in _RUNTIME:
        return _RUNTIME[name]
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; valid: {method_names()}")
    method = importlib.import_module(METHODS[name]).METHOD
    if not isinstance(method, Method) or method.name != name:
        raise TypeError(f"{METHODS[name]}.METHOD must be a methods.base.Method named {name!r}")
    return method


def all_methods() -> list[Method]:
    return [get_method(n) for n in method_names()]


def papers() -> dict[str, Paper]:
    """key → Paper of every registered method that reproduces one."""
    return {m.paper.key: m.paper for m in all_methods() if m.paper is not None}


def studies() -> dict[str, Study]:
    """Every registered method's studies by name; two methods may not use one name."""
    out: dict[str, Study] = {}
    for m in all_methods():
        for name, st in m.studies.items():
            if name in out:
                raise ValueError(f"study {name!r} is declared by both {out[name].method} and {m.name}")
            out[name] = st
    return out
