"""``bench`` / ``python -m bench``: the command line. Every command has ``--help``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _progress_printer(label: str):
    """A rich bar on a terminal, plain periodic lines otherwise."""
    from bench.console import task_progress

    return task_progress(label)


def cmd_data_check(a) -> int:
    from bench.data import DataError
    from bench.data.check import check_dataset, format_report

    try:
        with _progress_printer(f"checking {a.dataset}") as prog:
            rep = check_dataset(a.dataset, a.root, a.split and [a.split], city=a.city, progress=prog)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(rep))
    return 0 if rep.ok else 1


def cmd_data_minicity(a) -> int:
    from bench.data.minicity import ensure_minicity, generate_minicity

    fn = generate_minicity if a.force else ensure_minicity
    stats = fn(a.root, seed=a.seed)
    if stats:
        print(f"MiniCity at {a.root}: {stats.get('files', '?')} files, {stats.get('bytes', 0) / 1e6:.1f} MB, "
              f"{stats.get('seconds', 0):.1f} s")
    else:
        print(f"MiniCity at {a.root} is up to date")
    return 0


def cmd_run(a) -> int:
    from bench.suite_runner import run_suite

    args = list(a.args)
    suite = args.pop(0) if args and "=" not in args[0] else "minicity"
    run_suite(suite, args)
    return 0


def cmd_perf_eval(a) -> int:
    from bench.perf import evaluator_throughput

    print(evaluator_throughput(a.images, a.height, a.width))
    return 0


def cmd_perf_train(a) -> int:
    from bench.perf import train_speed

    print(train_speed(a.model, a.iters, a.batch, (a.width, a.height), a.device, a.amp))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="uda-bench: reproducible UDA for semantic segmentation")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    c = data.add_parser("check", help="validate a dataset tree and print its summary and fingerprint")
    c.add_argument("dataset", choices=["gta5", "cityscapes", "synthia", "crosscity"])
    c.add_argument("--root", required=True, type=Path, help="the dataset's root folder")
    c.add_argument("--split", help="check one split only (default: all of the dataset's splits)")
    c.add_argument("--city", help="Cross-City: Rome, Rio, Tokyo or Taipei")
    c.set_defaults(func=cmd_data_check)
    m = data.add_parser("minicity", help="generate the embedded MiniCity benchmark (GTA5/SYNTHIA/Cityscapes trees)")
    m.add_argument("--root", type=Path, default=REPO / "datasets" / "minicity")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--force", action="store_true", help="regenerate even when up to date")
    m.set_defaults(func=cmd_data_minicity)

    r = sub.add_parser("run", help="run a suite: bench run [SUITE] [key=value ...] (default SUITE: minicity)")
    r.add_argument("args", nargs="*", help="suite name, then dotted overrides such as seeds=[0] train.iters=200")
    r.set_defaults(func=cmd_run)

    perf = sub.add_parser("perf", help="benchmarks").add_subparsers(dest="perf_command", required=True)
    e = perf.add_parser("eval", help="evaluator throughput vs a numpy bincount-per-image baseline")
    e.add_argument("--images", type=int, default=20)
    e.add_argument("--height", type=int, default=1024)
    e.add_argument("--width", type=int, default=2048)
    e.set_defaults(func=cmd_perf_eval)
    t = perf.add_parser("train", help="training iterations/s and peak memory of a model (synthetic batches)")
    t.add_argument("--model", default="small")
    t.add_argument("--iters", type=int, default=10)
    t.add_argument("--batch", type=int, default=1, help="images per domain (source + target)")
    t.add_argument("--width", type=int, default=256)
    t.add_argument("--height", type=int, default=128)
    t.add_argument("--device", default="auto")
    t.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"])
    t.set_defaults(func=cmd_perf_train)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(levelname)s %(message)s")
    return int(a.func(a) or 0)


if __name__ == "__main__":
    sys.exit(main())
