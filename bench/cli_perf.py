"""``bench perf …``: the benchmark commands (evaluator, training, bootstrap, SS-D, GMM fit, sweep vs pipelines,
loaders, stage order), their parsers and their printouts; the measurements themselves live in ``bench.perf``,
``bench.perf_sweep``, ``bench.perf_loader`` and ``bench.perf_schedule``."""

from __future__ import annotations

import sys
from pathlib import Path


def cmd_perf_eval(a) -> int:
    from bench.perf import evaluator_throughput

    print(evaluator_throughput(a.images, a.height, a.width))
    return 0


def cmd_perf_train(a) -> int:
    from bench.perf import train_speed

    print(train_speed(a.model, a.iters, a.batch, (a.width, a.height), a.device, a.amp))
    return 0


def cmd_perf_bootstrap(a) -> int:
    from bench.perf import bootstrap_timing

    print(bootstrap_timing(a.images, a.classes, a.boot, a.repeats))
    return 0


def cmd_perf_ssd(a) -> int:
    from bench.perf import ssd_step

    r = ssd_step(a.paper, a.channels, tuple(a.widths), (a.height, a.width), a.batch, a.present, a.repeats, a.device)
    print(f"SS-D {r['params_m']:.1f} M params, features {r['size']}, {a.present} classes present, {r['device']}")
    for name in ("fast", "loop"):
        x = r[name]
        peak = "" if x["peak_mb"] is None else f", CUDA peak {x['peak_mb']:.0f} MB"
        print(f"  {name:4s}: {x['seconds'] * 1000:8.1f} ms/step (fwd+bwd), saved activations {x['saved_mb']:.0f} MB"
              f"{peak}")
    print(f"  speed-up ×{r['loop']['seconds'] / r['fast']['seconds']:.2f}; max |fast − loop| = {r['max_abs_diff']:.2e}")
    return 0


def cmd_perf_gmm(a) -> int:
    import torch

    from bench.perf import gmm_fit_timing

    devices = [a.device] if a.device != "auto" else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"GMM fit: {a.classes} classes x {a.components} diagonal components, {a.dim}-d, {a.samples} samples per "
          f"class (EM <= 100 iterations, tol 1e-3, both from the same k-means++ start)")
    for i, dev in enumerate(devices):
        r = gmm_fit_timing(a.classes, a.samples, a.dim, a.components, device=dev, sklearn=i == 0 and a.sklearn,
                           seed=a.seed)
        print(f"  torch   ({dev:4s}, {r['torch_threads']} threads): {r['torch_s']:8.2f} s, {r['torch_iters']:5d} EM "
              f"iterations, mean log-likelihood {r['torch_mean_loglik']:.4f}")
        if "sklearn_s" in r:
            print(f"  sklearn (cpu , float64)  : {r['sklearn_s']:8.2f} s, {r['sklearn_iters']:5d} EM iterations, "
                  f"mean log-likelihood {r['sklearn_mean_loglik']:.4f}")
    return 0


def cmd_perf_sweep(a) -> int:
    from bench.perf_sweep import sweep_vs_independent

    r = sweep_vs_independent(a.study, a.suite, a.results, seed=a.seed, independent=a.independent,
                             executor=a.executor)
    n = len(r["values"])
    print(f"{r['study']} on {a.suite}, {n} values {r['values']}, seed {a.seed}:")
    print(f"  sweep (shared stages once + {n} trial tails): {r['sweep_s']:8.0f} s")
    print(f"  one independent pipeline (mean of {len(r['independent_s'])}): {r['one_pipeline_s']:8.0f} s  "
          f"→ {n} independent ≈ {r['independent_total_est_s']:.0f} s")
    print(f"  sweep / one pipeline = {r['ratio_to_one']:.2f}  (goal ≤ 1.5 when the swept key touches only the "
          f"last stages)")
    return 0


def cmd_perf_loader(a) -> int:
    from bench.data import DataError
    from bench.perf_loader import measure
    from bench.suite_runner import SuiteError

    name, overrides = (a.args[0], a.args[1:]) if a.args and "=" not in a.args[0] else ("gta5_cityscapes", a.args)
    try:
        workers = [int(w) for w in a.workers.split(",") if w.strip()]
        domains = [d.strip() for d in a.domains.split(",") if d.strip()]
        r = measure(name, overrides, workers=workers, batches=a.batches, repeats=a.repeats, domains=domains,
                    data_root=a.data, out=a.out, **({"gpu_its": a.gpu_its} if a.gpu_its is not None else {}))
    except (SuiteError, DataError, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(r["text"])
    if a.out:
        print(f"written: {a.out / 'loader.md'}, loader.csv, loader_stages.csv")
    return 0


def cmd_perf_schedule(a) -> int:
    from bench.perf_schedule import compare_orders
    from bench.suite_runner import SuiteError

    name, overrides = (a.args[0], a.args[1:]) if a.args and "=" not in a.args[0] else ("minicity", a.args)
    try:
        slots = [int(n) for n in a.slots.split(",") if n.strip()]
        print(compare_orders(name, overrides, a.results, slots))
    except (SuiteError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def add_perf_schedule_parser(perf) -> None:
    """``bench perf schedule``: when results would come, from a finished run's stage times (bench.perf_schedule)."""
    s = perf.add_parser("schedule", help="replay a finished run's recorded stage times on N slots: minutes to the "
                        "first mIoU, to each seed's whole table and to the end, under the scheduler's order and "
                        "under longest-chain-first")
    s.add_argument("args", nargs="*", help="suite (default minicity), then dotted overrides, as the run had them")
    s.add_argument("--results", type=Path, default=Path("results"), help="the run's results root (its cache/ holds "
                   "each stage's meta.json; default %(default)s)")
    s.add_argument("--slots", default="1,2,4", help="stages at once, comma-separated (default %(default)s)")
    s.set_defaults(func=cmd_perf_schedule)


def add_perf_loader_parser(perf) -> None:
    """``bench perf loader``: the train stages' DataLoaders on the CPU against the GPU's need (bench.perf_loader)."""
    lo = perf.add_parser("loader", help="images/s of every train stage's DataLoader (decode, resize, crop, normalise) "
                         "with num_workers 0/2/4 on stand-in data at native size, against what the GPU step needs",
                         description="Times the DataLoaders a suite's train stages build (their transforms and "
                         "batch sizes) on the CPU, on stand-in trees of the real formats at native resolution "
                         "(bench rehearse's), and compares images/s with batch × --gpu-its.")
    lo.add_argument("args", nargs="*", help="suite (default gta5_cityscapes), then dotted overrides (only=[bismap], "
                    "ablations=true adds the variants' stages)")
    lo.add_argument("--workers", default="0,2,4", help="num_workers values, comma-separated (default %(default)s)")
    lo.add_argument("--batches", type=int, default=6, help="batches per timed run (default %(default)s)")
    lo.add_argument("--repeats", type=int, default=3, help="timed runs per loader; images/s is their median "
                    "(default %(default)s)")
    lo.add_argument("--domains", default="source,target_train", help="time the stages that read only these "
                    "domains (default %(default)s)")
    lo.add_argument("--gpu-its", type=float, default=None, help="GPU training iterations/s to compare with; an "
                    "assumption, not a measurement (default: bench.perf_loader.DEFAULT_GPU_ITS = 4)")
    lo.add_argument("--data", type=Path, help="stand-in data root (default <repo>/results/rehearse/data, shared "
                    "with bench rehearse)")
    lo.add_argument("--out", type=Path, help="also write loader.md, loader.csv and loader_stages.csv here")
    lo.set_defaults(func=cmd_perf_loader)


def add_perf_parsers(sub) -> None:
    """``bench perf eval|train|bootstrap|ssd|gmm|sweep|loader|schedule``."""
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
    b = perf.add_parser("bootstrap", help="seconds per paired-bootstrap Δ interval (one cell of a results table)")
    b.add_argument("--images", type=int, default=200, help="validation images (MiniCity's val: 200)")
    b.add_argument("--classes", type=int, default=19)
    b.add_argument("--boot", type=int, default=2000, help="resamplings (the tables': 2000)")
    b.add_argument("--repeats", type=int, default=3)
    b.set_defaults(func=cmd_perf_bootstrap)
    d = perf.add_parser("ssd", help="SSF-DAN's separable discriminator: fast path vs the per-class loop")
    d.add_argument("--paper", action="store_true", help="the paper's widths: 2048 → 1024 → 512 → 256 → 128 → 1")
    d.add_argument("--channels", type=int, default=80, help="input channels (default: MiniCity's small net)")
    d.add_argument("--widths", type=int, nargs="+", default=[32, 16, 16, 8])
    d.add_argument("--height", type=int, default=16, help="feature grid (MiniCity 256×128 at stride 8: 16×32)")
    d.add_argument("--width", type=int, default=32)
    d.add_argument("--batch", type=int, default=4)
    d.add_argument("--present", type=int, default=12, help="classes present in the label grid")
    d.add_argument("--repeats", type=int, default=3)
    d.add_argument("--device", default="cpu")
    d.set_defaults(func=cmd_perf_ssd)
    g = perf.add_parser("gmm", help="BiSMAP's per-class GMM fit: torch EM (fit_class_gmms) vs scikit-learn "
                        "GaussianMixture(covariance_type='diag') on the same data")
    g.add_argument("--classes", type=int, default=19)
    g.add_argument("--components", type=int, default=8)
    g.add_argument("--dim", type=int, default=32, help="feature dimension (paper: 256; MiniCity's small net: 32)")
    g.add_argument("--samples", type=int, default=5000, help="samples per class (paper: 300,000)")
    g.add_argument("--device", default="auto", help="auto: the CPU, and the GPU when there is one")
    g.add_argument("--no-sklearn", dest="sklearn", action="store_false", help="torch only")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_perf_gmm)
    w = perf.add_parser("sweep", help="a study as one sweep vs as independent pipelines (wall time, empty caches)")
    w.add_argument("study", help="a named study (bench sweep's)")
    w.add_argument("suite", nargs="?", default="minicity")
    w.add_argument("--results", type=Path, required=True, help="an empty folder: each run gets its own root")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--independent", type=int, default=1, help="how many independent pipelines to time")
    w.add_argument("--executor", default="ray", choices=["ray", "local"])
    w.set_defaults(func=cmd_perf_sweep)
    add_perf_loader_parser(perf)
    add_perf_schedule_parser(perf)
