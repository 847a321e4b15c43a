"""Types and ranges of a suite's settings, checked when the suite is loaded — before any data or training.

A wrong value (``iters=abc``, ``iters=2.5``, ``lr=-1``, ``batch_size=0``, ``evaluation.protocol=Z``, ``seeds=5``)
would otherwise pass the up-front checks and fail inside a stage, after a retry or after hours of training, or
worse run with a nonsense meaning (``seeds=abc`` trains seeds 'a', 'b', 'c'). Each error names the setting, the
value, what is expected and where to change it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin


class SettingError(ValueError):
    """A setting of the wrong type or out of range."""


def _type_ok(value: Any, tp: Any) -> bool | None:
    """Does ``value`` fit the annotation ``tp``? None when the annotation is not one this checks."""
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        res = [_type_ok(value, a) for a in get_args(tp)]
        return True if True in res else None if None in res else False
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is Literal:
        return value in get_args(tp)
    if tp in (tuple, list) or origin in (tuple, list):
        return isinstance(value, (tuple, list))
    if tp is dict or origin is dict:
        return isinstance(value, dict)
    return None


def _type_name(tp: Any) -> str:
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null",
            tuple: "a list", list: "a list", dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _range_rule(name: str, default: Any) -> tuple[str, Any] | None:
    """(description, predicate) for fields whose name says what range they live in."""
    if "iters" in name or name == "horizon" or name.endswith("_horizon"):
        if default == 0:
            return "≥ 0", lambda v: v >= 0
        return "> 0", lambda v: v > 0
    if "batch" in name:
        return "> 0", lambda v: v > 0
    if name == "lr" or name.endswith("_lr") or name.startswith(("lr_", "weight_decay")) or "_lr_" in name:
        return "≥ 0 and finite", lambda v: v >= 0 and math.isfinite(v)
    if name == "num_stages":
        return "≥ 0", lambda v: v >= 0
    return None


def validate_config(cfg, where: str) -> None:
    """Check every field of a method's Config dataclass against its annotation and its name's range rule.
    ``where`` names the setting's place in the suite (``methods.source_only``)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), hints.get(f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if value is None and (default is None or tp in (tuple, list, dict) or get_origin(tp) in (tuple, list, dict)):
            continue  # configs annotate e.g. `crop: tuple` and take null for "off"
        ok = _type_ok(value, tp)
        if ok is False:
            raise SettingError(f"{where}.{f.name} = {value!r}: expected {_type_name(tp)}")
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        rule = _range_rule(f.name, default)
        if rule and not rule[1](value):
            raise SettingError(f"{where}.{f.name} = {value!r}: expected {rule[0]}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingError(f"{where}.{f.name} = {value!r}: expected a finite number")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# train section: key → (expected, predicate); the trainer's own settings plus the harness's
TRAIN_RULES: dict[str, tuple[str, Any]] = {
    "device": ("a device string: auto, cpu, cuda or cuda:N", lambda v: isinstance(v, str) and v != ""),
    "amp": ("one of auto, bf16, fp16, off", lambda v: v in ("auto", "bf16", "fp16", "off")),
    "deterministic": ("true, false or warn", lambda v: v is True or v is False or v == "warn"),
    "channels_last": ("true, false or null (= on CUDA)", lambda v: v is None or isinstance(v, bool)),
    "log_every": ("an integer ≥ 0", lambda v: _int(v) and v >= 0),
    "eval_every": ("an integer ≥ 0", lambda v: _int(v) and v >= 0),
    "checkpoint_every": ("an integer ≥ 0 (0 = only at the end)", lambda v: _int(v) and v >= 0),
    "keep_checkpoints": ("an integer ≥ 0 (0 = keep all)", lambda v: _int(v) and v >= 0),
    "num_workers": ("an integer ≥ 0", lambda v: _int(v) and v >= 0),
    "progress": ("true, false or null", lambda v: v is None or isinstance(v, bool)),
    "metrics_every": ("an integer > 0", lambda v: _int(v) and v > 0),
    "threads": ("an integer > 0 (torch threads and Ray CPUs per stage) or null (= the stage's own share)",
                lambda v: v is None or (_int(v) and v > 0)),
}


def validate_suite(suite: dict, where: str) -> None:
    """The suite-level settings: seeds, train, evaluation, resources, studies. ``where`` names the suite (and
    file)."""
    from bench.data.labels import SUBSETS
    from bench.protocols import PROTOCOLS

    seeds = suite.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(_int(s) for s in seeds):
        raise SettingError(f"{where}: seeds = {seeds!r}: expected a non-empty list of integers, e.g. seeds=[0,1,2]")
    if len(set(seeds)) != len(seeds):
        raise SettingError(f"{where}: seeds = {seeds!r}: a seed is listed twice")
    train = suite.get("train") or {}
    if not isinstance(train, dict):
        raise SettingError(f"{where}: train = {train!r}: expected a mapping of settings")
    for key, value in train.items():
        if key not in TRAIN_RULES:
            raise SettingError(f"{where}: train.{key} is not a setting; valid: {sorted(TRAIN_RULES)}")
        expected, ok = TRAIN_RULES[key]
        if not ok(value):
            raise SettingError(f"{where}: train.{key} = {value!r}: expected {expected}")
    ev = suite.get("evaluation") or {}
    if not isinstance(ev, dict):
        raise SettingError(f"{where}: evaluation = {ev!r}: expected a mapping")
    if "protocol" in ev and ev["protocol"] not in PROTOCOLS:
        raise SettingError(f"{where}: evaluation.protocol = {ev['protocol']!r}: expected one of {list(PROTOCOLS)}")
    subsets = ev.get("subsets", ["19"])
    if not isinstance(subsets, list) or not subsets or any(not isinstance(s, str) or s not in SUBSETS for s in subsets):
        raise SettingError(f"{where}: evaluation.subsets = {subsets!r}: expected a list of {sorted(SUBSETS)} (quoted)")
    res = suite.get("resources") or {}
    if not isinstance(res, dict):
        raise SettingError(f"{where}: resources = {res!r}: expected a mapping such as {{gpu: 0.5}}")
    for key, value in res.items():
        if key != "gpu":
            raise SettingError(f"{where}: resources.{key} is not a setting; valid: ['gpu'] (CPUs per stage: "
                               "train.threads)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value:
            raise SettingError(f"{where}: resources.gpu = {value!r}: expected a GPU share > 0, e.g. 0.5 or 1")
    studies = suite.get("studies") or {}
    if not isinstance(studies, dict):
        raise SettingError(f"{where}: studies = {studies!r}: expected a mapping of study name → its values")
    for name, entry in studies.items():
        _check_study(where, name, entry)


def _check_study(where: str, name: str, entry) -> None:
    """``studies.<name>``: a list of values, or ``{values: [...], set: {<method key>: value}}``."""
    import dataclasses

    from methods.base import get_method, studies

    values, settings = (entry.get("values"), entry.get("set")) if isinstance(entry, dict) else (entry, None)
    if isinstance(entry, dict) and (set(entry) - {"values", "set"} or not entry):
        raise SettingError(f"{where}: studies.{name} = {entry!r}: a mapping takes `values` (a list) and `set` (the "
                           "method's settings for the study), e.g. {values: [0.5, 1], set: {delta_override: -20}}")
    if values is not None or not isinstance(entry, dict):
        if not isinstance(values, list) or not values or any(isinstance(v, (dict, list, bool)) or v is None
                                                             for v in values):
            raise SettingError(f"{where}: studies.{name} = {values!r}: expected a non-empty list of the swept key's "
                               "values, e.g. [-25, -20, -15]")
    if settings is not None:
        method = studies()[name].method if name in studies() else None
        if not isinstance(settings, dict) or not settings:
            raise SettingError(f"{where}: studies.{name}.set = {settings!r}: expected a mapping of {method} settings")
        fields = {f.name for f in dataclasses.fields(get_method(method).Config)} if method else set(settings)
        if set(settings) - fields:
            raise SettingError(f"{where}: studies.{name}.set: {sorted(set(settings) - fields)} are not {method} "
                               f"settings; valid: {sorted(fields)}")
