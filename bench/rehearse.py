"""``bench rehearse SUITE``: every stage of every experiment and variant of a real suite, N iterations each, on
stand-in data of the suite's real formats at native resolution, through the real scheduler — so a crash in stage 3,
a padded crop or an out-of-memory shows up in minutes, not after GPU-days — and a projection of the full recipe's
wall time from the measured seconds per iteration.

Stand-in data: MiniCity's generator at the datasets' native sizes (GTA5 1914×1052, SYNTHIA 1280×760, Cityscapes
2048×1024), written in their formats under ``<results>/rehearse/data`` and reused while its manifest matches;
Cross-City trees are built from the Cityscapes stand-in (images, test labels as ``<name>_eval.png``). Init weight
files that are absent (or any, with ``--model small``: they are DeepLab/ResNet-101 files) are replaced by a random
initialisation, and the rehearsal says so. One seed runs; seeded stages are projected × the suite's seeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

import yaml

NATIVE = {"gta5": (1914, 1052), "synthia": (1280, 760), "cityscapes": (2048, 1024), "crosscity": (2048, 1024)}
# images of the real datasets (datasets/README.md): label/fit/eval stages are projected by image count
REAL_IMAGES = {("gta5", "all"): 24_966, ("synthia", "all"): 9_400, ("cityscapes", "train"): 2_975,
               ("cityscapes", "val"): 500, ("crosscity", "train"): 3_200, ("crosscity", "test"): 100}
DEFAULT_SPLIT = {"gta5": "all", "synthia": "all", "cityscapes": "val", "crosscity": "test"}
COUNTS = {"source": 16, "target_train": 8, "target_val": 4}
NOT_ITERATIONS = {"rampup_iters", "lr_warmup_iters"}  # schedule shapes, not a stage's length
# what a method needs to run the small CPU network: copied from the MiniCity suite's settings of that method
SMALL_KEYS = ("model", "model_options", "feature_layer", "bn_mode", "gmm_feature", "feature_name", "feature_channels",
              "d_widths", "d_channels", "warmup_d_channels", "st_init", "distill_student_init", "intra_init")
INIT_KEYS = ("init_weights", "intra_init_weights", "stm_encoder_weights", "distill_student_weights")


# ------------------------------------------------------------------------------------------- stand-in data
def standin_data(suite: dict, root: Path, counts: dict | None = None) -> dict:
    """Write (or reuse) stand-in trees for the suite's datasets; → ``{domain: root}`` (every target's city)."""
    from bench.data.minicity import ensure_minicity

    counts = {**COUNTS, **(counts or {})}
    root = Path(root)
    by_name = {}
    for domain, spec in suite["datasets"].items():
        by_name.setdefault(spec["name"], set()).add(domain)
    n_cs_train = max([counts[d] for d in ("target_train", "source") if "cityscapes" == suite["datasets"].get(d, {})
                      .get("name")] + [counts["target_train"]])
    out: dict[str, Path] = {}
    for name, domains in by_name.items():
        w, h = NATIVE[name]
        if name in ("gta5", "synthia"):
            n = max(counts[d] for d in domains)
            tree = root / f"{name}_{w}x{h}"
            zero = {"gta5": 0, "synthia": 0, "cityscapes_train": 0, "cityscapes_val": 0}
            ensure_minicity(tree, size=(w, h), counts={**zero, name: n}, processes=1)
            for d in domains:
                out[d] = tree / name
        elif name == "cityscapes":
            out.update({d: _cityscapes(root, n_cs_train, counts["target_val"]) for d in domains})
        elif name == "crosscity":
            cities = {spec.get("city") for spec in suite["datasets"].values() if spec["name"] == "crosscity"}
            for over in (suite.get("targets") or {}).values():
                cities |= {o.get("city") for o in over.values() if o.get("city")}
            cs = _cityscapes(root, max(counts["target_train"], 1), counts["target_val"])
            tree = _crosscity(root / f"crosscity_{w}x{h}", cs, sorted(c for c in cities if c))
            out.update(dict.fromkeys(domains, tree))
        else:
            raise ValueError(f"rehearse: no stand-in for dataset {name!r}; valid: {sorted(NATIVE)}")
    return out


def _cityscapes(root: Path, n_train: int, n_val: int) -> Path:
    from bench.data.minicity import ensure_minicity

    w, h = NATIVE["cityscapes"]
    tree = root / f"cityscapes_{w}x{h}"
    ensure_minicity(tree, size=(w, h), counts={"gta5": 0, "synthia": 0, "cityscapes_train": n_train,
                                                "cityscapes_val": n_val}, processes=1)
    return tree / "cityscapes"


def _crosscity(tree: Path, cityscapes: Path, cities: list[str]) -> Path:
    """NTHU layout from the Cityscapes stand-in: train images, test images + ``<name>_eval.png`` labelIds."""
    stamp = tree / "standin.json"
    want = {"from": str(cityscapes), "cities": cities,
            "images": sorted(p.name for p in (cityscapes / "leftImg8bit").rglob("*.png"))}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    for city in cities:
        for split, cs_split in (("Train", "train"), ("Test", "val")):
            d = tree / city / "Images" / split
            d.mkdir(parents=True, exist_ok=True)
            for img in sorted((cityscapes / "leftImg8bit" / cs_split).rglob("*_leftImg8bit.png")):
                stem = img.name.replace("_leftImg8bit.png", "")
                shutil.copyfile(img, d / f"{stem}.png")
                if split == "Test":
                    lab = next((cityscapes / "gtFine" / cs_split).rglob(f"{stem}_gtFine_labelIds.png"))
                    (tree / city / "Labels" / "Test").mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(lab, tree / city / "Labels" / "Test" / f"{stem}_eval.png")
    stamp.write_text(json.dumps(want))
    return tree


# ------------------------------------------------------------------------------------------- the suite
def rehearsal_suite(suite: dict, roots: dict, iters: int, model: str | None) -> tuple[dict, list[str]]:
    """The suite with stand-in roots, one seed, every stage ``iters`` long, and (``model="small"``) the MiniCity
    suite's small-network settings; → (suite, notes saying what was replaced)."""
    from bench.paths import resolve_root
    from bench.suite_runner import load_suite
    from methods.base import get_method

    s = json.loads(json.dumps(suite))
    notes = []
    for domain, spec in s["datasets"].items():
        spec["root"] = str(roots[domain])
        spec.pop("list_file", None)  # the real split lists name files the stand-in does not have
    s["seeds"] = s["seeds"][:1]
    s["train"] = {**(s.get("train") or {}), "checkpoint_every": 10**9, "log_every": 1}
    small = load_suite("minicity")["methods"] if model == "small" else {}
    if model not in (None, "small"):
        raise ValueError(f"--model {model!r}; valid: small (or omit it for the suite's own networks)")
    for name, values in s["methods"].items():
        values = values if values is not None else {}
        s["methods"][name] = values
        for k in _iteration_fields(name):  # every length, the Config defaults' too
            values[k] = iters
        if isinstance(values.get("pretrain"), dict) or "pretrain" in _fields(name):
            values["pretrain"] = {**(values.get("pretrain") or {}), "iters": iters}
        for part in (values.get("variants") or {}).values():
            _short(part or {}, iters)
        if model == "small":
            ref = small.get(name) or small["source_only"]
            for k in SMALL_KEYS:
                if k in ref:
                    values[k] = ref[k]
            if "model_code" in _fields(name):
                values["model_code"] = "small"
                values["feature_layer_code"] = ref.get("feature_layer", "decoder")
            if isinstance(values.get("pretrain"), dict):
                values["pretrain"].update({k: small["source_only"][k] for k in ("model", "model_options")})
                values["pretrain"]["aux_weight"] = 0.0
            if "aux_weight" in values or "aux_weight" in _fields(name):  # the small net has no aux head
                values["aux_weight"] = 0.0
        notes += get_method(name).rehearsal(values)  # what the method needs on untrained features
        for part in [values, values.get("pretrain") or {}]:
            for k in INIT_KEYS:
                path = part.get(k)
                if path and (model == "small" or not resolve_root(path).is_file()):
                    why = "a ResNet-101 file cannot initialise the small net" if model == "small" else "absent"
                    notes.append(f"{name}.{k}: {path} {why}: random initialisation")
                    part[k] = None
    return s, sorted(set(notes))


def _fields(method: str) -> set[str]:
    from methods.base import get_method

    return {f.name for f in dataclasses.fields(get_method(method).Config)}


def _iteration_fields(method: str) -> list[str]:
    from methods.base import get_method

    return [f.name for f in dataclasses.fields(get_method(method).Config)
            if (f.name == "iters" or f.name.endswith(("_iters", "_iters_code"))) and f.name not in NOT_ITERATIONS
            and f.type in ("int", int)]


def _short(values: dict, iters: int) -> None:
    for k, v in list(values.items()):
        if (k == "iters" or k.endswith("_iters")) and k not in NOT_ITERATIONS and isinstance(v, int):
            values[k] = iters


# ------------------------------------------------------------------------------------------- measurement
class Measured:
    """A stage function that also reports its peak memory (RSS sampled every 20 ms; CUDA peak on a GPU) and the
    time it waited on DataLoader batches. Module-level and picklable, so Ray workers run it too."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, p, ctx):
        import torch
        from torch.utils.data import dataloader

        waited = [0.0]
        orig = dataloader._BaseDataLoaderIter.__next__

        def timed_next(it):
            t0 = time.perf_counter()
            try:
                return orig(it)
            finally:
                waited[0] += time.perf_counter() - t0

        peak, stop = [_rss()], threading.Event()

        def sample():
            while not stop.wait(0.02):
                peak[0] = max(peak[0], _rss())

        thread = threading.Thread(target=sample, daemon=True)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        dataloader._BaseDataLoaderIter.__next__ = timed_next
        thread.start()
        try:
            result = dict(self.fn(p, ctx) or {})
        finally:
            stop.set()
            thread.join()
            dataloader._BaseDataLoaderIter.__next__ = orig
        result["rehearse_peak_rss_mb"] = max(peak[0], _rss()) / 2**20
        result["rehearse_data_wait_seconds"] = waited[0]
        if cuda:
            result["rehearse_cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return result


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the process's peak so far
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


@contextlib.contextmanager
def measured_stages():
    """Every Stage built inside wraps its function in :class:`Measured` (the cache key ignores the function)."""
    from methods.base import Stage

    orig = Stage.__post_init__

    def post_init(self):
        orig(self)
        if not isinstance(self.fn, Measured):
            self.fn = Measured(self.fn)

    Stage.__post_init__ = post_init
    try:
        yield
    finally:
        Stage.__post_init__ = orig


# ------------------------------------------------------------------------------------------- projection
def _canon(params) -> str:
    return json.dumps(json.loads(json.dumps(params, default=str)), sort_keys=True)


def real_iterations(real: dict, rehearsal: dict) -> dict:
    """``{(stage name, canonical rehearsal params): real iterations}``: each method (variant) planned twice, with
    the real and the rehearsal values; their stage lists have the same shape, so they pair by position."""
    from bench.suite_plan import method_configs
    from methods.base import closure, get_method

    out = {}
    real_cfgs = {(m, v): c for m, v, c in method_configs(real)}
    for m, v, cfg in method_configs(rehearsal):
        rs = closure(get_method(m).stages(real_cfgs[(m, v)])[-1])
        hs = closure(get_method(m).stages(cfg)[-1])
        for r, h in zip(rs, hs, strict=True):
            if "iters" in r.params:
                out[(h.name, _canon(h.params))] = int(r.params["iters"])
    return out


def projection(suite: dict, rehearsal: dict, outcomes: dict, cache_root: Path, iters: int) -> list[dict]:
    """One row per unique stage: measured s/it, data-wait share, peak memory, and projected full-recipe hours."""
    from bench.suite_plan import dataset_specs

    its = real_iterations(suite, rehearsal)
    specs = dataset_specs(rehearsal)
    rows = []
    for key, o in outcomes.items():
        meta_path = cache_root / key / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        r = o.result or {}
        secs = float(r.get("stage_seconds", o.seconds) or 0.0)
        real_iters = its.get((o.name, _canon(meta.get("params", {}))))
        row = {"stage": o.name, "key": key, "status": o.status, "seconds": secs,
               "rss_mb": r.get("rehearse_peak_rss_mb"), "cuda_mb": r.get("rehearse_cuda_peak_mb"),
               "seeded": meta.get("seed") is not None}
        if real_iters is not None:
            done = max(int(r.get("iterations") or iters), 1)
            train = float(r.get("train_seconds") or secs)
            spi = float(r.get("seconds_per_iter") or train / done)
            row.update(kind="train", s_per_it=spi, iters=real_iters, projected_s=real_iters * spi,
                       data_share=min(1.0, float(r.get("rehearse_data_wait_seconds", 0.0)) / max(train, 1e-9)))
        else:
            domains = meta.get("datasets") or []
            factor = 1.0
            if domains:
                spec = specs[domains[0]]
                n_real = REAL_IMAGES.get((spec["name"], spec.get("split") or DEFAULT_SPLIT[spec["name"]]))
                n_here = _images(spec)
                factor = n_real / n_here if n_real and n_here else 1.0
            row.update(kind="per-image", s_per_it=None, iters=None, projected_s=secs * factor,
                       data_share=min(1.0, float(r.get("rehearse_data_wait_seconds", 0.0)) / max(secs, 1e-9)))
        rows.append(row)
    return rows


def _images(spec: dict) -> int:
    from bench.data import build_dataset

    s = dict(spec)
    s.pop("options", None)
    return len(build_dataset(s.pop("name"), s.pop("root"), s.pop("split", None), **s))


def table(rows: list[dict], suite: dict, device: str) -> str:
    n = len(suite["seeds"])
    total = sum(r["projected_s"] * (n if r["seeded"] else 1) for r in rows)
    lines = ["| stage | kind | s/it | data wait | peak RSS MB | CUDA peak MB | full iters | projected h (1 seed) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["projected_s"]):
        lines.append("| {} | {} | {} | {:.0%} | {} | {} | {} | {:.2f} |".format(
            r["stage"], r["kind"], f"{r['s_per_it']:.3f}" if r["s_per_it"] is not None else "–", r["data_share"],
            f"{r['rss_mb']:.0f}" if r["rss_mb"] else "–", f"{r['cuda_mb']:.0f}" if r.get("cuda_mb") else "–",
            r["iters"] if r["iters"] is not None else "–", r["projected_s"] / 3600))
    lines += ["", f"**{suite['name']}, {n} seed{'s' if n > 1 else ''}: {total / 3600:,.1f} {device}-hours on this "
              f"device** (train stages: full iterations × measured s/it; label/fit/eval stages: measured time × real "
              f"images / stand-in images; seeded stages × {n})"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- entry
def rehearse(name: str, overrides=(), iters: int = 2, model: str | None = None, results_root: Path | None = None,
             executor: str = "ray", counts: dict | None = None) -> dict:
    """Run the rehearsal; → ``{"rows", "table", "notes", "report", "outcomes"}`` (also written to
    ``<results>/<suite>/rehearsal.md`` and logged to MLflow)."""
    import torch

    from bench.paths import REPO
    from bench.suite_runner import load_suite, run_suite

    if iters < 1:
        raise ValueError(f"--iters {iters}: expected ≥ 1")
    suite = load_suite(name, overrides)
    results = Path(results_root or REPO / "results" / "rehearse").resolve()
    roots = standin_data(suite, results / "data", counts)
    reh, notes = rehearsal_suite(suite, roots, iters, model)
    for n in notes:
        print(f"rehearse: {n}")
    path = results / "suites" / f"{suite['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(reh, sort_keys=False))
    with measured_stages():
        out = run_suite(str(path), results_root=results, executor=executor)
    rows = projection(suite, load_suite(str(path)), out["outcomes"], results / "cache", iters)
    device = "GPU" if torch.cuda.is_available() else "CPU"
    text = table(rows, suite, device)
    failed = [r for r in rows if r["status"] not in ("done", "cached")]
    head = [f"# Rehearsal of {suite['name']}: {iters} iteration(s) per stage, model "
            f"{model or 'the suite`s'}, stand-in data at native size on {device}", ""]
    head += [f"- {n}" for n in notes] + ([""] if notes else [])
    head += [f"FAILED: {', '.join(r['stage'] for r in failed)}", ""] if failed else []
    report = results / suite["name"] / "rehearsal.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(head) + text + "\n")
    _log_mlflow(results, suite["name"], report, rows)
    print(text)
    return {"rows": rows, "table": text, "notes": notes, "report": report, "outcomes": out["outcomes"]}


def _log_mlflow(results: Path, name: str, report: Path, rows: list[dict]) -> None:
    try:
        import mlflow

        from bench.tracking import default_tracking_uri

        mlflow.set_tracking_uri(default_tracking_uri(results))
        mlflow.set_experiment(f"{name}-rehearsal")
        with mlflow.start_run(run_name="rehearsal"):
            mlflow.log_artifact(str(report))
            mlflow.log_metric("projected_hours_one_seed", sum(r["projected_s"] for r in rows) / 3600)
    except Exception as e:  # noqa: BLE001 - the projection is printed and written either way
        print(f"rehearse: MLflow logging skipped ({type(e).__name__}: {e})")
