"""Load a suite, apply ``key=value`` overrides, and run it: data checks → plan (stages keyed and
de-duplicated across method × variant × target × seed) → the DAG on Ray or in-process → MLflow →
tables, plots and the report under ``results/<suite>/``.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import yaml

from bench.paths import REPO
from bench.schema import SUITE_KEYS  # noqa: F401 - re-exported: the suite's top-level keys

SUITES_DIR = Path(__file__).resolve().parent / "suites"


class SuiteError(ValueError):
    """A suite file or override that cannot be applied."""


def load_suite(name: str, overrides=()) -> dict:
    path = Path(name) if name.endswith((".yaml", ".yml")) else SUITES_DIR / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
        raise SuiteError(f"unknown suite {name!r} ({path} not found); valid: {valid}")
    suite = _read_yaml(path)
    if not isinstance(suite, dict):
        raise SuiteError(f"{path}: expected a mapping of suite sections (datasets, methods, seeds, ...), got "
                         f"{type(suite).__name__}")
    if suite.get("extends"):
        suite = extend_suite(load_suite(suite["extends"]), suite)
    suite["name"] = path.stem
    for ov in overrides:
        apply_override(suite, ov)
    check_keys(suite, path, overrides)
    for key in ("datasets", "seeds", "methods"):
        if not suite.get(key):
            raise SuiteError(f"suite {suite['name']}: {key!r} is missing or empty")
    from bench.validate import SettingError, validate_suite

    try:
        validate_suite(suite, f"suite {suite['name']} ({path})")
    except SettingError as e:
        raise SuiteError(f"{e}; fix it in the suite file or override it with key=value") from None
    return suite


def _read_yaml(path: Path):
    """The YAML document at ``path``; a syntax error is one line, ``file:line:column: what``."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise SuiteError(f"{where}: YAML syntax error: {what}") from None


def extend_suite(base: dict, child: dict) -> dict:
    """``extends: BASE`` in a suite file: the child's top-level sections replace the base's, except ``datasets``
    and ``methods``, whose entries (one domain, one method) are updated key by key — so a selection suite can
    change one split or one schedule and keep everything else in step with its base."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if key in ("datasets", "methods") and isinstance(value, dict):
            for name, over in value.items():
                if name not in out[key]:
                    out[key][name] = copy.deepcopy(over)
                else:
                    out[key][name] = {**copy.deepcopy(out[key][name]), **copy.deepcopy(over or {})}
        elif key != "name":
            out[key] = copy.deepcopy(value)
    return out


def check_keys(suite: dict, path: Path, overrides=()) -> None:
    """Every key of the loaded suite against the schema (``bench.schema``); the error names the override that
    brought a bad key in, else the suite file."""
    from bench.schema import SchemaError, check_tree

    try:
        check_tree(suite)
    except SchemaError as e:
        bad = ".".join(e.path)
        source = next((f"override {ov!r}" for ov in overrides if (bad + ".").startswith(ov.split("=", 1)[0] + ".")),
                      f"suite file {path}")
        raise SuiteError(f"suite {suite['name']}: {source}: {e.args[0]}; fix the key (`bench run --help` for "
                         "the format)") from None


def apply_override(suite: dict, text: str) -> None:
    """``a.b.c=value`` (value parsed as YAML). The key must be one the suite's schema has (``bench.schema``),
    and every key but the last must exist."""
    from bench.schema import SchemaError, check_path

    if "=" not in text:
        raise SuiteError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    parts = key.split(".")
    try:
        check_path(tuple(parts))
    except SchemaError as e:
        raise SuiteError(f"override {text!r}: {e.args[0]}") from None
    node = suite
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node, dict) or p not in node:
            where = ".".join(parts[:i]) or "the suite"
            valid = sorted(node) if isinstance(node, dict) else []
            raise SuiteError(f"override {key!r}: {p!r} is not a key of {where}; valid: {valid}")
        node[p] = copy.deepcopy(node[p])  # YAML anchors share dicts: override one method only
        node = node[p]
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise SuiteError(f"override {text!r}: the value is not valid YAML ({what})") from None


class SuiteDataError(SuiteError):
    """A dataset of the suite is missing or malformed; raised before any training."""


def ensure_minicity_pretraining(spec: dict) -> None:
    """``minicity.pretrain: {root, name}``: train the small net's generic-domain backbone once (the suite's stand-in
    for ImageNet weights; ``bench.pretrain``), before planning, since the stage keys hold the file's hash."""
    from bench.paths import resolve_root
    from bench.pretrain import RECIPE, check_recipe, ensure_pretrained

    unknown = sorted(set(spec) - {"root", "name", "recipe"})
    if unknown or "root" not in spec:
        raise SuiteError(f"minicity.pretrain: expected keys root (and optional name, recipe), got {sorted(spec)}")
    try:
        check_recipe(spec.get("recipe") or {})
    except ValueError as e:
        raise SuiteError(f"minicity.pretrain.recipe: {e}") from None
    root = resolve_root(spec["root"])
    name = spec.get("name", "minicity_generic_small")
    st = ensure_pretrained(root, name, {**RECIPE, **(spec.get("recipe") or {})})  # locks the file's name
    if st["regenerated"]:
        print(f"MiniCity pretraining (generic shapes domain) written to {spec['root']}/{name}.pt: "
              f"{st['seconds']:.0f} s, once for every seed and method")


def ensure_data(suite: dict) -> dict:
    """Generate MiniCity when the suite embeds it, then fingerprint every dataset of every target.
    A missing or malformed tree stops here, before any training, with the ``bench data check`` command."""
    if "minicity" in suite:
        ensure_minicity_data(suite["minicity"])
    check_paper_specs(suite)
    check_weights(suite)
    return fingerprint_targets(suite)


def minicity_options(mc: dict) -> dict:
    """The generator's keyword arguments (seed, size, counts, source_weather) from a suite's ``minicity`` section;
    what the section leaves out takes the generator's defaults."""
    extra = {k: tuple(mc[k]) if k == "size" else mc[k] for k in ("size", "counts", "source_weather") if k in mc}
    return {"seed": mc.get("seed", 0), **extra}


def ensure_minicity_data(mc: dict) -> None:
    """The suite's ``minicity`` section: generate the tree (once per content) and its generic pretraining."""
    from bench.data.minicity import ensure_minicity
    from bench.paths import resolve_root

    # two runs starting together on a fresh checkout never generate one tree at once: ensure_minicity locks it
    st = ensure_minicity(resolve_root(mc["root"]), **minicity_options(mc))
    if st.get("regenerated"):
        print(f"MiniCity generated at {mc['root']}: {st['files']} files, {st['bytes'] / 1e6:.1f} MB, "
              f"{st['seconds']:.0f} s")
    if mc.get("pretrain"):
        ensure_minicity_pretraining(mc["pretrain"])


def check_paper_specs(suite: dict) -> None:
    """A typo in ``paper.rows`` or a method's ``tables`` fails now, not after training."""
    from bench.ablations import ablation_specs
    from bench.report import published_rows

    try:
        for target in list(suite.get("targets") or {"": {}}):
            published_rows(suite, target)
        for method in suite.get("methods") or {}:
            ablation_specs(suite, method)
    except (KeyError, ValueError) as e:
        raise SuiteError(f"suite {suite['name']}: {e.args[0]}") from e


def check_weights(suite: dict) -> None:
    """Every weights file a method (or one of its variants) names in its declared ``weight_fields``, checked now, not
    when its stage comes."""
    from bench.paths import resolve_root
    from methods.base import get_method

    for mname, values in (suite.get("methods") or {}).items():
        if suite.get("only") is not None and mname not in suite["only"]:
            continue
        fields = get_method(mname).weight_fields
        entries = [("", values or {})] + [(f"variants.{v}.", o or {}) for v, o in
                                           ((values or {}).get("variants") or {}).items()]
        for where, vals in entries:
            for key, weights in vals.items():
                if key not in fields or not isinstance(weights, str) or resolve_root(weights).is_file():
                    continue
                raise SuiteDataError(
                    f"suite {suite['name']}: methods.{mname}.{where}{key} {weights} does not exist "
                    f"({resolve_root(weights)}). uda-bench never downloads weights: see datasets/README.md "
                    f"(Initial weights) for where to get the file, or set methods.{mname}.{where}{key}=PATH")


def fingerprint_targets(suite: dict) -> dict:
    """target → domain → fingerprint (``bench.suite_plan.fingerprint_datasets``), every evaluation file decoded; a bad
    tree raises ``SuiteDataError`` with the ``bench data check`` command for it."""
    from bench.data import DataError
    from bench.suite_plan import dataset_specs, fingerprint_datasets

    out = {}
    for target in list(suite.get("targets") or {"": {}}):
        specs = dataset_specs(suite, target)
        try:
            out[target] = fingerprint_datasets(specs)
            decode_datasets(specs, out[target])
        except DataError as e:
            bad = getattr(e, "domain", None) or next((d for d, s in specs.items() if str(s["root"]) in str(e)), None)
            spec = specs.get(bad) or next(iter(specs.values()))
            city = f" --city {spec['city']}" if spec.get("city") else ""
            raise SuiteDataError(
                f"suite {suite['name']}: dataset {bad or '?'} is not usable: {e}\n"
                f"Check it with: bench data check {spec['name']} --root {spec['root']}{city} --deep\n"
                f"Where to get it and how to lay it out: datasets/README.md; or point the suite elsewhere "
                f"with datasets.{bad or '<domain>'}.root=PATH") from e
    return out


DECODE_SAMPLE = 32  # files of each training domain decoded before any stage (every file of val/test domains)


def decode_datasets(specs: dict, fps: dict) -> None:
    """Before any stage: decode every image and label of the evaluation domains (``*val*``, ``*test*``: read only
    after all training) and a fixed sample of the others, so a truncated file stops the run now, naming the file.
    Done once per content fingerprint (remembered next to the content hashes)."""
    import json
    import random

    from bench.data import DataError, build_dataset
    from bench.data.check import decode_check, label_format
    from bench.data.datasets import hash_cache_dir
    from bench.fsio import atomic_write_text

    memo = hash_cache_dir() / "decoded.json"
    try:
        seen = set(json.loads(memo.read_text()))
    except (OSError, ValueError, TypeError):
        seen = set()
    for domain, spec in specs.items():
        full = "val" in domain or "test" in domain
        tag = f"{spec['name']}:{fps[domain]['fingerprint']}:{'all' if full else DECODE_SAMPLE}"
        if tag in seen:
            continue
        s = copy.deepcopy(spec)
        s.pop("options", None)
        ds = build_dataset(s.pop("name"), s.pop("root"), s.pop("split", None), **s)
        samples = ds.samples if full else random.Random(0).sample(ds.samples, min(DECODE_SAMPLE, len(ds.samples)))
        errors = decode_check(samples, label_format(spec["name"]), domain)
        if errors:
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            err = DataError(f"{len(errors)} of {len(samples)} decoded files are bad: {'; '.join(errors[:3])}{more}")
            err.domain = domain  # several domains may share a root: name the one that failed
            raise err
        seen.add(tag)
        try:
            atomic_write_text(memo, json.dumps(sorted(seen)))
        except OSError:
            pass  # not remembered: decoded again next run


def run_suite(name: str, overrides=(), results_root: Path | None = None, executor: str = "ray",
              retries: int = 1, tracking_uri: str | None = None, cache_root: Path | None = None) -> dict:
    """Run a suite end to end; returns ``{"results", "outcomes", "invocation", "summary", "report"}``."""
    from bench.board import Board
    from bench.live_log import LiveLog
    from bench.report import write_outputs
    from bench.scheduler import Scheduler, summary_lines
    from bench.stage_cache import StageCache
    from bench.suite_plan import method_configs, plan_suite
    from bench.tracking import Tracker, default_tracking_uri, environment

    t0 = time.perf_counter()
    suite = load_suite(name, overrides)
    results_root = Path(results_root or REPO / "results").resolve()
    cache_root = Path(cache_root or results_root / "cache")
    method_configs(suite)  # a bad method name or key fails before MiniCity is generated
    fingerprints = ensure_data(suite)
    experiments, unique, specs = plan_suite(suite, fingerprints)
    requested = sum(len(e.stages) for e in experiments)
    cached = sum(1 for k in unique if (cache_root / k / "DONE").is_file())
    print(f"{suite['name']}: {len(experiments)} experiments, {requested} stage requests → {len(unique)} unique "
          f"stages ({cached} already in the cache at {cache_root}); executor {executor}")
    labels = {}
    for e in experiments:
        for ps in e.stages:
            where = f"{e.method}{'[' + e.variant + ']' if e.variant else ''} {e.target + ' ' if e.target else ''}"
            labels.setdefault(ps.key, f"{ps.name} ({where.strip()}) seed {e.seed}")
    uri = tracking_uri or default_tracking_uri(results_root)
    tracker = Tracker(uri, suite["name"], results_root / "mlartifacts")
    env = environment()
    StageCache(cache_root).record_users(suite["name"], experiments)  # what `bench cache ls` shows per key
    live = LiveLog(tracker, suite, overrides, experiments, fingerprints, env, cache_root)  # opens the invocation
    print(f"MLflow: {uri}, invocation run {live.invocation} (`bench ui` to watch it)")
    board = Board(len(unique), labels)
    train = dict(suite.get("train") or {})
    res_cfg = suite.get("resources") or {}
    on_finished = interim_reports(suite, uri, live, results_root / suite["name"], experiments, env, cache_root, t0,
                                  board, lambda: sched.outcomes)
    sched = Scheduler(unique, specs, train, cache_root, executor=executor, retries=retries, board=board,
                      gpu_share=res_cfg.get("gpu"), on_finished=on_finished)
    try:
        outcomes = sched.run()
    except BaseException:
        on_finished.stopped()  # an interim report must not promise a final one that will not come
        live.close(sched.outcomes)
        tracker.end(live.invocation, ok=False)  # an interrupted suite is not left RUNNING in the UI
        raise
    finally:
        board.close()
    live.close(outcomes)
    summary = summary_lines(outcomes)
    invocation, out_dir = live.invocation, results_root / suite["name"]
    report = on_finished.final(lambda: write_outputs(suite, uri, invocation, out_dir, experiments, outcomes, env,
                                                     summary, time.perf_counter() - t0, tracker=tracker,
                                                     cache_root=cache_root))
    tracker.end(invocation, ok=not any(o.status in ("failed", "skipped") for o in outcomes.values()))
    for line in summary:
        print(line)
    return {"results": report["results"], "outcomes": outcomes, "invocation": invocation, "summary": summary,
            "report": report["path"], "tracking_uri": uri}


def interim_reports(suite, uri, live, out_dir: Path, experiments, env, cache_root, t0: float, board, outcomes):
    """The scheduler's ``on_finished``: MLflow's live log, then ``report.md`` of the seeds complete so far whenever
    a seed completes before the last (``bench.interim``). ``outcomes()`` gives the scheduler's outcomes."""
    from bench.interim import InterimReports
    from bench.report import write_outputs

    def write(note: str, seeds: list[int]) -> Path:
        return write_outputs(suite, uri, live.invocation, out_dir, experiments, outcomes(), env,
                             ["(interim report: the run goes on)"], time.perf_counter() - t0, cache_root=cache_root,
                             note=note, interim_seeds=seeds)["path"]

    total = len({ps.key for e in experiments for ps in e.stages})
    return InterimReports(live.stage_finished, write, experiments, total, board, t0,
                          pending=lambda: any(o.status == "pending" for o in outcomes().values()))


def render_suite(name: str, overrides=(), results_root: Path | None = None, tracking_uri: str | None = None,
                 invocation: str | None = None, cache_root: Path | None = None) -> Path:
    """``bench table``: rebuild tables, plots and the report of the latest (or given) invocation from MLflow
    and the cache, without training."""
    from bench.report import write_outputs
    from bench.scheduler import Outcome
    from bench.suite_plan import plan_suite
    from bench.tracking import default_tracking_uri, environment, load_results

    suite = load_suite(name, overrides)
    results_root = Path(results_root or REPO / "results").resolve()
    cache_root = Path(cache_root or results_root / "cache")
    uri = tracking_uri or default_tracking_uri(results_root)
    _, invocation = load_results(uri, suite["name"], invocation)
    experiments, unique, _ = plan_suite(suite, ensure_data(suite))
    from bench.stage_cache import CorruptEntry, StageCache

    cache, outcomes = StageCache(cache_root), {}
    for k, ps in unique.items():
        o = outcomes[k] = Outcome(k, ps.name, "pending")
        if cache.is_done(k):
            try:  # a hand-edited or corrupt result is never published
                o.status, o.result = "cached", cache.result(k)
            except CorruptEntry as e:
                print(f"warning: {e}; run the suite again to recompute it", file=sys.stderr)
    report = write_outputs(suite, uri, invocation, results_root / suite["name"], experiments, outcomes,
                           environment(), ["(re-rendered by bench table; no stage was run)"], 0.0,
                           cache_root=cache_root)
    return report["path"]
