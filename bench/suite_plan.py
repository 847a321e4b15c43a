"""A suite → experiments (method × variant × target × seed) → their stages, keyed and de-duplicated."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from bench.evaluate import eval_stage
from bench.paths import resolve_root
from bench.stage_keys import PlannedStage, plan_stages
from methods.base import get_method, make_config


@dataclass
class Experiment:
    method: str
    variant: str
    target: str
    seed: int
    config: object
    stages: list[PlannedStage] = field(default_factory=list)

    @property
    def model(self) -> PlannedStage:
        return self.stages[-2]

    @property
    def eval(self) -> PlannedStage:
        return self.stages[-1]

    @property
    def label(self) -> str:
        parts = [self.method + (f"[{self.variant}]" if self.variant else "")]
        if self.target:
            parts.append(self.target)
        return " ".join(parts + [f"seed {self.seed}"])


def dataset_specs(suite: dict, target: str = "") -> dict:
    """domain → build_dataset kwargs with absolute roots, after the target's overrides (Cross-City cities)."""
    specs = copy.deepcopy(suite["datasets"])
    for domain, over in ((suite.get("targets") or {}).get(target) or {}).items():
        if domain not in specs:
            raise KeyError(f"suite targets.{target}: {domain!r} is not a dataset domain; valid: {sorted(specs)}")
        specs[domain].update(over)
    for spec in specs.values():
        spec["root"] = str(resolve_root(spec["root"]))
    return specs


def fingerprint_datasets(specs: dict) -> dict:
    """domain → {"spec", "fingerprint"}; raises ``DataError`` (with the fix) when a tree is missing or wrong."""
    from bench.data import build_dataset

    out = {}
    for domain, spec in specs.items():
        s = copy.deepcopy(spec)
        opts = s.pop("options", {}) or {}
        ds = build_dataset(s.pop("name"), s.pop("root"), s.pop("split", None), **s, **opts)
        key_spec = {k: v for k, v in spec.items() if k != "root"}  # the path is not the content
        out[domain] = {"spec": key_spec, "fingerprint": ds.fingerprint(), "images": len(ds)}
    return out


def table_variants(method: str, tables) -> dict[str, dict]:
    """The variants a method section's ``tables`` names: ``[t4, ...]`` (every row of each table) or
    ``{t4: [row, ...]}`` (those rows). A variant that two tables define differently is an error."""
    from methods.base import get_method

    declared = get_method(method).tables
    picks = {t: None for t in tables} if isinstance(tables, (list, tuple)) else dict(tables or {})
    out: dict[str, dict] = {}
    for tname, rows in picks.items():
        if tname not in declared:
            raise KeyError(f"methods.{method}.tables: {tname!r} is not one of its tables {sorted(declared)}")
        variants = declared[tname].variants()
        unknown = sorted(set(rows or ()) - set(variants))
        if unknown:
            raise KeyError(f"methods.{method}.tables.{tname}: rows {unknown} are not its variants {sorted(variants)}")
        for v in rows if rows is not None else variants:
            if v in out and out[v] != variants[v]:
                raise KeyError(f"methods.{method}.tables: variant {v!r} differs between tables")
            out[v] = variants[v]
    return out


def method_variants(suite: dict) -> list[tuple[str, str, dict]]:
    """(method, variant, config values) for every method and its variants ("" = the base): the rows of the paper
    tables its section names (``tables``), then its own ``variants``; both only with ``ablations`` on."""
    out = []
    only = suite.get("only")
    if only is not None:
        unknown = sorted(set(only) - set(suite["methods"]))
        if unknown:
            raise KeyError(f"only={only}: {unknown} not in the suite's methods {sorted(suite['methods'])}")
    for name, values in suite["methods"].items():
        if only is not None and name not in only:
            continue
        values = dict(values or {})
        variants = table_variants(name, values.pop("tables", None) or ())
        for v, over in (values.pop("variants", {}) or {}).items():
            if v in variants:
                raise KeyError(f"methods.{name}.variants.{v}: already a row of the tables it names; rename it")
            variants[v] = over
        if not suite.get("ablations", True):
            variants = {}  # the suite's named variants are opt-in (ablations=true)
        out.append((name, "", values))
        for vname, over in variants.items():
            out.append((name, vname, {**values, **(over or {})}))
    return out


def method_configs(suite: dict) -> list[tuple[str, str, object]]:
    """(method, variant, Config) for the suite: unknown methods or keys, and values of the wrong type or out of
    range, fail here, before any data is touched."""
    from bench.validate import validate_config

    out = []
    for m, v, vals in method_variants(suite):
        where = f"methods.{m}" + (f".variants.{v}" if v else "")
        try:
            cfg = make_config(get_method(m).Config, vals)
            validate_config(cfg, where)
        except (ValueError, TypeError) as e:  # SettingError, or a Config that rejects its values
            name = suite.get("name", "?")
            raise KeyError(f"suite {name}: {e}; fix it in the suite file or override it with key=value") from None
        out.append((m, v, cfg))
    return out


def method_datasets(method, cfg, specs: dict, fps: dict) -> tuple[dict, dict]:
    """The dataset specs (and key specs) one method's stages see: the suite's, with the input normalisation the
    method's network expects when its ``input_normalize`` hook states one (e.g. ImageNet statistics for a
    torchvision-initialised DeepLab-v3+ in a suite normalised for the Caffe DeepLab-v2). Every stage of the
    method, its evaluation included, then reads the same inputs; the normalisation is part of the stage keys."""
    norm = method.input_normalize(cfg)
    if not norm:
        return specs, fps

    def with_norm(spec: dict) -> dict:
        return {**spec, "options": {**(spec.get("options") or {}), "normalize": norm}}

    return ({d: with_norm(v) for d, v in specs.items()},
            {d: {**v, "spec": with_norm(v["spec"])} for d, v in fps.items()})


def plan_suite(suite: dict, fingerprints: dict | None = None) -> tuple[list[Experiment], dict, dict]:
    """→ (experiments, unique stages by key, dataset specs by stage key)."""
    targets = list(suite.get("targets") or {"": {}})
    train = dict(suite.get("train") or {})
    experiments, unique, specs_by_key = [], {}, {}
    configs = method_configs(suite)
    for target in targets:
        specs = dataset_specs(suite, target)
        fps = (fingerprints or {}).get(target) or fingerprint_datasets(specs)
        for seed in suite["seeds"]:
            for mname, variant, cfg in configs:
                method = get_method(mname)
                final = method.stages(cfg)[-1]
                evaluation = dict(suite.get("evaluation") or {})
                if method.eval_protocol(cfg):  # a config that states its own protocol (e.g. ms)
                    evaluation["protocol"] = method.eval_protocol(cfg)
                ev = eval_stage(final, evaluation)
                m_specs, m_fps = method_datasets(method, cfg, specs, fps)
                planned = plan_stages([ev], seed, m_fps, train)
                for ps in planned:
                    unique.setdefault(ps.key, ps)
                    specs_by_key.setdefault(ps.key, m_specs)
                experiments.append(Experiment(mname, variant, target, seed, cfg, planned))
    return experiments, unique, specs_by_key


def plan_extra_stages(experiment: Experiment, finals: list, specs: dict, fingerprints: dict,
                      train: dict) -> tuple[list[PlannedStage], dict]:
    """Stages beyond an experiment's own (a sweep's held-out evaluation and label-free criteria), planned on the
    same terms as ``plan_suite`` planned the experiment: its method's dataset view (``method_datasets``), its seed
    and the suite's ``train`` settings. ``specs``/``fingerprints`` may hold domains the suite has not (a held-out
    part of target train). → (planned stages, upstream first; the dataset specs they read)."""
    m_specs, m_fps = method_datasets(get_method(experiment.method), experiment.config, specs, fingerprints)
    return plan_stages(finals, experiment.seed, m_fps, train), m_specs
