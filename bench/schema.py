"""The schema of a suite: which keys a suite file or a ``key=value`` override may name, at every depth.

A typo (``train.devce``, ``evaluation.protocl``, ``methods.cag_uda.delta_dd``) would otherwise be carried along
and silently ignored. The valid keys come from the code that reads them (the method's ``Config``, the trainer's
settings, ``build_dataset`` and ``Transform``, the protocols), so the schema cannot drift from what is read.
Names the user chooses (dataset domains, targets, variants) are free; what lies under them is checked.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from functools import cache, lru_cache

SUITE_KEYS = ("name", "extends", "description", "minicity", "datasets", "targets", "evaluation", "seeds",
              "resources", "train", "paper", "methods", "only", "ablations", "studies")
FREE = None  # a mapping whose keys the user names (domains, variants, model options)
# dict-valued method settings that are themselves a method's Config (CAG-UDA's source-only pretraining)
NESTED_CONFIGS = {"pretrain": "source_only"}


class SchemaError(KeyError):
    """An unknown key; ``args[0]`` is the message with the valid keys and a did-you-mean."""

    def __init__(self, path: tuple, valid) -> None:
        self.path, self.valid = path, sorted(valid)
        dotted, parent = ".".join(path), ".".join(path[:-1]) or "the suite"
        near = difflib.get_close_matches(path[-1], self.valid, n=1, cutoff=0.6)
        hint = f" (did you mean {'.'.join((*path[:-1], near[0]))}?)" if near else ""
        super().__init__(f"unknown key(s) [{path[-1]!r}] at {dotted}{hint}; valid: {self.valid} (the keys of {parent})")


@cache
def config_fields(method: str) -> frozenset:
    from methods.base import get_method

    return frozenset(f.name for f in dataclasses.fields(get_method(method).Config))


@lru_cache(maxsize=1)
def dataset_keys() -> frozenset:
    from bench.data.datasets import build_dataset

    params = inspect.signature(build_dataset).parameters
    return frozenset(k for k, p in params.items() if p.kind != p.VAR_KEYWORD) | {"options"}


@lru_cache(maxsize=1)
def transform_keys() -> frozenset:
    from bench.data.transforms import Transform

    return frozenset(f.name for f in dataclasses.fields(Transform))


@lru_cache(maxsize=1)
def evaluation_keys() -> frozenset:
    """``protocol``, ``subsets`` and every keyword a protocol's predictor takes (passed through as settings)."""
    from bench import protocols

    keys = {"protocol", "subsets"}
    for fn in (protocols.predict_a, protocols.predict_b, protocols.predict_ms):
        keys |= set(list(inspect.signature(fn).parameters)[3:])
    return frozenset(keys)


def _dataset_children(rest: tuple):
    """Below one dataset domain: its spec keys, then Transform options / holdout settings."""
    if not rest:
        return dataset_keys()
    if rest == ("options",):
        return transform_keys()
    if rest == ("holdout",):
        return frozenset({"fraction", "seed", "part"})
    return FREE


def _method_children(method: str, rest: tuple):
    """Below ``methods.<method>``: its Config fields (and ``variants``, ``tables``), a variant's fields, nested
    configs, the names of the method's paper tables."""
    from methods.base import get_method, method_names

    if method not in method_names():
        return FREE  # reported one level up, with the registered names
    if rest[:1] == ("tables",):
        return frozenset(get_method(method).tables) if len(rest) == 1 else FREE
    if rest[:1] == ("variants",):
        if len(rest) == 1:
            return FREE
        rest = rest[2:]  # methods.m.variants.<name>.<field> reads like methods.m.<field>
        if not rest:
            return config_fields(method)
    if not rest:
        return config_fields(method) | {"variants", "tables"}
    if len(rest) == 1 and rest[0] in NESTED_CONFIGS and rest[0] in config_fields(method):
        return config_fields(NESTED_CONFIGS[rest[0]])
    return FREE


def children(path: tuple):
    """The valid keys of the mapping at ``path`` (a tuple of keys from the suite's top), or FREE."""
    from bench.validate import TRAIN_RULES
    from methods.base import method_names

    if not path:
        return frozenset(SUITE_KEYS)
    head, rest = path[0], path[1:]
    fixed = {"train": TRAIN_RULES, "resources": ("gpu",),
             "minicity": ("root", "seed", "size", "counts", "source_weather", "pretrain"),
             "paper": ("benchmark", "targets", "rows", "note")}
    if head == "minicity" and rest[:1] == ("pretrain",):
        from bench.pretrain import OPTIONAL, RECIPE

        keys = {1: frozenset(("root", "name", "recipe")), 2: frozenset(RECIPE) | frozenset(OPTIONAL)}
        return keys.get(len(rest), FREE) if rest[1:2] in ((), ("recipe",)) else FREE
    if head in fixed:
        return frozenset(fixed[head]) if not rest else FREE
    if head == "evaluation":
        return evaluation_keys() if not rest else FREE
    if head == "datasets":
        return FREE if not rest else _dataset_children(rest[1:])
    if head == "targets":
        return FREE if len(rest) < 2 else _dataset_children(rest[2:])
    if head == "methods":
        return frozenset(method_names()) if not rest else _method_children(rest[0], rest[1:])
    if head == "studies":  # a named study's values for this suite (bench sweep)
        from methods.base import studies

        return frozenset(studies()) if not rest else FREE
    return FREE


def check_path(path: tuple) -> None:
    """Raise ``SchemaError`` when ``path``'s last key is not valid where it stands."""
    for i in range(1, len(path) + 1):
        valid = children(path[:i - 1])
        if valid is not FREE and path[i - 1] not in valid:
            raise SchemaError(path[:i], valid)


def check_tree(node, path: tuple = ()) -> None:
    """Every key of a loaded suite (file and overrides applied), at any depth."""
    if not isinstance(node, dict):
        return
    valid = children(path)
    for key, value in node.items():
        if valid is not FREE and key not in valid:
            raise SchemaError((*path, str(key)), valid)
        check_tree(value, (*path, str(key)))
