"""``bench`` / ``python -m bench``: the command line. Every command has ``--help``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench.cli_cache import add_cache_parsers
from bench.cli_perf import add_perf_parsers
from bench.paths import REPO


def _progress_printer(label: str):
    """A rich bar on a terminal, plain periodic lines otherwise."""
    from bench.console import task_progress

    return task_progress(label)


def cmd_data_check(a) -> int:
    from bench.data import DataError
    from bench.data.check import check_dataset, format_report

    try:
        with _progress_printer(f"checking {a.dataset}") as prog:
            rep = check_dataset(a.dataset, a.root, a.split and [a.split], city=a.city, progress=prog, deep=a.deep)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(rep))
    return 0 if rep.ok else 1


def cmd_data_minicity(a) -> int:
    from bench.data.minicity import ensure_minicity
    from bench.paths import resolve_root
    from bench.suite_runner import load_suite, minicity_options

    # the tree a suite reads, with its counts and options; without weather the minicity_clear suite's, which never
    # overwrites the default one
    name = a.suite or ("minicity_clear" if a.source_weather is False else "minicity")
    try:
        block = load_suite(name).get("minicity")
    except (FileNotFoundError, KeyError, ValueError) as e:  # SuiteError is a ValueError
        print(f"error: bench data minicity --suite {name}: {e}", file=sys.stderr)
        return 2
    if not block:
        print(f"error: suite {name!r} has no minicity section: it reads no generated tree", file=sys.stderr)
        return 2
    opts = minicity_options(block)
    if a.seed is not None:
        opts["seed"] = a.seed
    if a.source_weather is not None:
        opts["source_weather"] = a.source_weather
    if a.root is None:
        a.root = resolve_root(block["root"])
    stats = ensure_minicity(a.root, force=a.force, **opts)
    if stats.get("regenerated"):
        print(f"MiniCity at {a.root}: {stats.get('files', '?')} files, {stats.get('bytes', 0) / 1e6:.1f} MB, "
              f"{stats.get('seconds', 0):.1f} s")
    else:
        print(f"MiniCity at {a.root} is up to date (--force regenerates it)")
    return 0


def _suite_args(a) -> tuple[str, list[str]]:
    args = list(a.args)
    return (args.pop(0) if args and "=" not in args[0] else "minicity"), args


def cmd_run(a) -> int:
    from bench.data import DataError
    from bench.scheduler import ResourceError
    from bench.suite_runner import SuiteError, run_suite

    suite, overrides = _suite_args(a)
    try:
        out = run_suite(suite, overrides, results_root=a.results, executor=a.executor, retries=a.retries,
                        tracking_uri=a.tracking_uri)
    except (SuiteError, DataError, ResourceError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(f"report: {out['report']}")
    return 1 if any(o.status in ("failed", "skipped") for o in out["outcomes"].values()) else 0


def cmd_rehearse(a) -> int:
    """``bench rehearse SUITE``: every stage of the suite for a few iterations on stand-in data (bench.rehearse)."""
    from bench.data import DataError
    from bench.rehearse import rehearse
    from bench.scheduler import ResourceError
    from bench.suite_runner import SuiteError

    if not a.args:
        print("error: bench rehearse needs a SUITE (e.g. gta5_cityscapes)", file=sys.stderr)
        return 2
    try:
        out = rehearse(a.args[0], a.args[1:], iters=a.iters, model=a.model, results_root=a.results,
                       executor=a.executor)
    except (SuiteError, DataError, ResourceError, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(f"rehearsal: {out['report']}")
    return 1 if any(r["status"] not in ("done", "cached") for r in out["rows"]) else 0


def cmd_sweep(a) -> int:
    from bench.data import DataError
    from bench.scheduler import ResourceError
    from bench.suite_runner import SuiteError, load_suite
    from bench.sweep import list_studies, run_sweep
    from bench.sweep_tune import SweepFailed

    if a.regret:  # `bench sweep --regret [SUITE]`: the finished sweeps' regret side by side
        from bench.sweep_report import write_regret_summary

        try:
            md, paths = write_regret_summary(Path(a.results or REPO / "results"), a.study or "minicity")
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(md + f"\ntable: {paths['md']}")
        return 0
    if a.list:  # `bench sweep --list [SUITE]`: the word after --list names a suite
        try:
            suite = load_suite(a.study) if a.study else None
        except SuiteError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(list_studies(suite))
        return 0
    if a.study is None:
        print("error: name a study or a method (bench sweep --list shows the studies)", file=sys.stderr)
        return 2
    suite, words = _suite_args(a)
    try:
        out = run_sweep(a.study, suite, words, results_root=a.results, holdout=a.holdout, executor=a.executor,
                        tracking_uri=a.tracking_uri, metric=a.metric, mode=a.mode, search=a.search,
                        num_samples=a.num_samples, search_seed=a.search_seed)
    except (SuiteError, DataError, ResourceError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    except SweepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"table: {out['paths']['md']}  plot: {out['paths']['png']}  ({out['seconds']:.0f} s)")
    return 0


def split_overrides(text: str) -> list[str]:
    """The ``overrides`` tag of an invocation run (its words joined by spaces) back into words: a space inside
    brackets or braces (``seeds=[0, 1]``) does not split."""
    words, depth = [], 0
    for token in text.split():
        if words and depth > 0:
            words[-1] += " " + token
        else:
            words.append(token)
        depth += sum(token.count(c) for c in "[{") - sum(token.count(c) for c in "]}")
    return [] if words == ["-"] else words


def recorded_overrides(suite: str, a) -> tuple[list[str], str | None]:
    """The overrides the invocation ``bench table`` re-renders was run with (its ``overrides`` tag), and its id."""
    from mlflow.tracking import MlflowClient

    from bench.suite_runner import load_suite
    from bench.tracking import default_tracking_uri, load_results

    uri = a.tracking_uri or default_tracking_uri((a.results or REPO / "results").resolve())
    _, invocation = load_results(uri, load_suite(suite, [])["name"], a.invocation)
    return split_overrides(MlflowClient(uri).get_run(invocation).data.tags.get("overrides", "-")), invocation


def cmd_table(a) -> int:
    from bench.suite_runner import SuiteError, render_suite

    suite, overrides = _suite_args(a)
    try:
        recorded, invocation = recorded_overrides(suite, a)
        if recorded:
            print(f"re-applying the invocation's overrides: {' '.join(recorded)}")
        path = render_suite(suite, [*recorded, *overrides], results_root=a.results, tracking_uri=a.tracking_uri,
                            invocation=invocation)
    except (SuiteError, LookupError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_ui(a) -> int:
    import os

    from bench.tracking import comparison_urls, default_tracking_uri, ui_command

    uri = a.tracking_uri or default_tracking_uri(a.results or REPO / "results")
    cmd, env = ui_command(uri, a.port)
    cmd[cmd.index("--host") + 1] = a.host
    cmd[0] = str(Path(sys.executable).with_name("mlflow"))
    if a.host not in LOOPBACK:
        print(f"warning: --host {a.host} serves the MLflow UI, which has no authentication, to every machine that "
              f"can reach this one; anyone there can read and delete runs", file=sys.stderr)
    print(f"MLflow UI on http://{a.host}:{a.port} for {uri} (Ctrl-C stops it)")
    urls = comparison_urls(uri, f"http://{a.host}:{a.port}")
    print("\n".join(["method-by-method comparison (the saved view 'Methods by mIoU': experiment runs, best mIoU "
                     "first, mIoU as the first column and the first chart; add &compareRunsMode=CHART for the charts):",
                     *urls]) if urls else "", flush=True)
    # replace this process, so Ctrl-C and SIGTERM reach the server itself and none is left holding the port
    os.execvpe(cmd[0], cmd, env)


def version() -> str:
    """The installed distribution's version, or pyproject's when run from a checkout that is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("uda-bench")
    except PackageNotFoundError:
        import re

        text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
        found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
        return found.group(1) if found else "unknown"


def suites_epilog() -> str:
    """The suites under bench/suites with their one-line descriptions, and examples."""
    import yaml

    lines = ["suites (bench/suites/*.yaml, or a path to your own YAML):"]
    for path in sorted((REPO / "bench" / "suites").glob("*.yaml")):
        try:
            desc = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("description", "")
        except (OSError, yaml.YAMLError) as e:
            desc = f"(unreadable: {e})"
        lines.append(f"  {path.stem:22s} {' '.join(str(desc).split())}")
    return "\n".join(lines + [
        "", "overrides: dotted keys of the suite as key=value, values in YAML (seeds=[0,1] train.device=cuda)", "",
        "examples:",
        "  bench run                                   MiniCity, every method, its default seeds (CPU)",
        "  bench run minicity seeds=[0]                one seed",
        "  bench run minicity only=[source_only,adaptsegnet] train.device=cpu",
        "  bench run gta5_cityscapes methods.cag_uda.lr=1e-4 --results /data/results",
        "  bench run --executor local minicity         in-process, one stage at a time (debugging)",
        "  RAY_ADDRESS=auto bench run gta5_cityscapes  on a running Ray cluster"])


def add_sweep_parser(sub, suite_opts) -> None:
    """``bench sweep``: its options, with every study in the help (``bench.sweep.list_studies``)."""
    from bench.sweep import list_studies
    from bench.sweep_tune import metric_names

    sw = sub.add_parser("sweep", help="a parameter study as a Ray Tune search: bench sweep STUDY|METHOD [SUITE] "
                        "[key=v1,v2,…|key=uniform(lo,hi)] [seed=0,1,2] [dotted.override=…]",
                        description="A parameter study as a Ray Tune search over one config key, optimising a "
                        "label-free criterion (target val is reported, never optimised). Writes the sweep table, the "
                        "selection-regret table and the search table. Studies (bench sweep --list):",
                        epilog=list_studies(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sw.add_argument("study", nargs="?", help="a named study (see below) or a method for an ad-hoc sweep (then give "
                    "key=v1,v2,… or key=uniform(lo,hi) / loguniform(lo,hi) / randint(lo,hi) / choice([a,b]))")
    suite_opts(sw)
    sw.add_argument("--list", action="store_true", help="print every study: method, parameter, values, paper table "
                    "(`--list SUITE`: also the values and settings that suite gives them)")
    sw.add_argument("--regret", action="store_true", help="summarise the selection regret of every finished sweep "
                    "of a suite (`--regret SUITE`, default minicity), one row per sweep")
    sw.add_argument("--holdout", action="store_true", help="also score every trial on a fixed 20 %% of target "
                    "train (seed 0) and mark the value that choice would pick, next to the val numbers")
    sw.add_argument("--metric", default="snd", choices=metric_names(),
                    help="what the search optimises (default snd: soft neighbourhood density, label-free and made "
                    "for choosing UDA hyperparameters; holdout_miou needs --holdout)")
    sw.add_argument("--mode", choices=["min", "max"], help="default: the metric's own direction")
    sw.add_argument("--search", choices=["grid", "random", "optuna"], default="grid",
                    help="grid (the listed values), random (seeded) or optuna (TPE; pip install optuna)")
    sw.add_argument("--num-samples", type=int, help="trials of a random or Optuna search (default 8)")
    sw.add_argument("--search-seed", type=int, default=0, help="seed of a random or Optuna search's draws")
    sw.add_argument("--executor", choices=["ray", "local"], default="ray",
                    help="ray (default; Ray Tune trials) or local (in-process, one value at a time; grid only)")
    sw.set_defaults(func=cmd_sweep)


def add_suite_options(q) -> None:
    """The options every suite command shares: the suite and its overrides, the results root, MLflow."""
    q.add_argument("args", nargs="*", help="suite name, then dotted overrides such as seeds=[0] train.device=cpu")
    q.add_argument("--results", type=Path, help="results root (default: <repo>/results)")
    q.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<results>/mlflow.db)")


def add_data_parsers(sub) -> None:
    """``bench data check|minicity``."""
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    c = data.add_parser("check", help="validate a dataset tree and print its summary and fingerprint")
    c.add_argument("dataset", choices=["gta5", "cityscapes", "synthia", "crosscity"],
                   help="which dataset's layout and label format to expect")
    c.add_argument("--root", required=True, type=Path, help="the dataset's root folder (see datasets/README.md)")
    c.add_argument("--split", help="check one split only, e.g. train or val (default: all of the dataset's splits)")
    c.add_argument("--city", help="Cross-City only: Rome, Rio, Tokyo or Taipei")
    c.add_argument("--deep", action="store_true", help="decode every image fully (default: labels fully, images "
                   "by their header only, which a truncated file passes)")
    c.set_defaults(func=cmd_data_check)
    m = data.add_parser("minicity", help="generate the embedded MiniCity benchmark (GTA5/SYNTHIA/Cityscapes trees)")
    m.add_argument("--suite", default=None,
                   help="write the tree this suite reads, with its counts and options (default: minicity, or "
                   "minicity_clear with --no-source-weather), e.g. --suite minicity_src1k")
    m.add_argument("--root", type=Path, default=None, help="where to write it (default: the suite's root)")
    m.add_argument("--seed", type=int, default=None, help="generator seed; another seed is another benchmark "
                   "(default: the suite's, 0)")
    m.add_argument("--force", action="store_true", help="regenerate even when up to date")
    m.add_argument("--source-weather", action=argparse.BooleanOptionalAction, default=None,
                   help="the synthetic sources draw their sky per image, clear to overcast (the default suite's); "
                   "--no-source-weather: generator v3's one blue source sky (the minicity_clear suite's tree)")
    m.set_defaults(func=cmd_data_minicity)


def add_suite_parsers(sub) -> None:
    """The commands that take a suite: ``bench run|rehearse|sweep|table``."""
    r = sub.add_parser("run", help="run a suite: bench run [SUITE] [key=value ...] (default SUITE: minicity)",
                       description="Run a suite end to end: data checks, planning, the stages on Ray, MLflow, tables, "
                       "plots and report.md under <results>/<suite>/.", epilog=suites_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_suite_options(r)
    r.add_argument("--executor", choices=["ray", "local"], default="ray",
                   help="ray (default; local cluster or RAY_ADDRESS) or local (in-process, one stage at a time)")
    r.add_argument("--retries", type=int, default=1, help="retries of a failed stage, from its last checkpoint")
    r.set_defaults(func=cmd_run)
    rh = sub.add_parser("rehearse", help="every stage of a real suite for --iters iterations on stand-in data at "
                        "native resolution, with s/it, memory and the projected wall time of the full recipe")
    add_suite_options(rh)
    rh.add_argument("--iters", type=int, default=2, help="iterations per train stage (default 2)")
    rh.add_argument("--model", choices=["small"], help="the small CPU network instead of the suite's")
    rh.add_argument("--executor", choices=["ray", "local"], default="ray")
    rh.set_defaults(func=cmd_rehearse)
    add_sweep_parser(sub, add_suite_options)
    tb = sub.add_parser("table", help="re-render a suite's tables, plots and report from MLflow (no training)")
    add_suite_options(tb)
    tb.add_argument("--invocation", help="MLflow run id of the invocation (default: the latest)")
    tb.set_defaults(func=cmd_table)


def add_ui_parser(sub) -> None:
    """``bench ui``."""
    u = sub.add_parser("ui", help="the MLflow UI (one worker, no job runner: fits a small machine)",
                       description="Serve the MLflow UI for a results folder. The command becomes the server "
                       "process, so Ctrl-C or SIGTERM stops the server.")
    u.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                   "only; 0.0.0.0 serves every network, without authentication, with a warning)")
    u.add_argument("--port", type=int, default=5000, help="port to listen on (default: %(default)s)")
    u.add_argument("--results", type=Path, help="results root whose mlflow.db to serve (default: <repo>/results)")
    u.add_argument("--tracking-uri", help="serve this tracking URI instead (default: sqlite:///<results>/mlflow.db)")
    u.set_defaults(func=cmd_ui)


def build_parser() -> argparse.ArgumentParser:
    """The ``bench`` command line: one group of subcommands per ``add_*`` function."""
    p = argparse.ArgumentParser(prog="bench", description="uda-bench: reproducible UDA for semantic segmentation",
                                epilog="`bench COMMAND --help` for each command; `bench run --help` lists the suites.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (add_data_parsers, add_suite_parsers, add_cache_parsers, add_ui_parser, add_perf_parsers):
        add(sub)
    return p


def _shutdown_ray() -> None:
    """Stop the local Ray this process started (its raylet, GCS and agents), so none outlives the command."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def main(argv=None) -> int:
    from bench.signals import catch_sigterm, terminated

    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(levelname)s %(message)s")
    catch_sigterm()
    try:
        return int(a.func(a) or 0)
    except KeyboardInterrupt as e:
        # one line, not a traceback: finished stages are in the cache and a partial one has its checkpoints
        words = " ".join(sys.argv[1:] if argv is None else argv)
        what = "terminated (SIGTERM)" if terminated(e) else "interrupted"
        print(f"\n{what}: completed stages are kept in the cache and an unfinished stage resumes from its last "
              f"checkpoint; rerun `bench {words}` to continue", file=sys.stderr)
        return 143 if terminated(e) else 130
    finally:
        _shutdown_ray()


if __name__ == "__main__":
    sys.exit(main())
