"""``bench perf loader [SUITE]``: does the data pipeline keep up with the GPU? (issue 16, "a real run must never
wait on its loader").

For every train stage of a real suite (its main rows; ``ablations=true`` adds the variants) the loaders the stage
builds — the suite's dataset specs with the method's input normalisation (``bench.suite_plan.method_datasets``), read
through :meth:`bench.stage_exec.StageContext.dataset` with the options the stage function passes (random scale,
crop, flip, native resolution) — are timed as the trainer runs them: a torch ``DataLoader`` over the seeded
:class:`bench.sampler.InfiniteSampler` with ``num_workers`` 0/2/4, decode + resize + scale + crop + normalise,
no GPU. Reported per loader and worker count: images/s (median of ``--repeats`` runs of ``--batches`` batches,
after one warm-up batch that also starts the workers), ms per batch, the need at ``--gpu-its`` (batch × GPU
iterations per second) and the headroom give/need; per stage: images per iteration (every loader's batch:
source + target), the iterations per second its loaders sustain together when they share the CPU (1 / Σ s per
batch), and the headroom against the assumed GPU step rate.

Data: stand-in trees of the real formats at native resolution (``bench.rehearse.standin_data``: MiniCity's
generator at GTA5 1914×1052, SYNTHIA 1280×760, Cityscapes 2048×1024), never a download. Their PNGs are not the real
files: the report gives each domain's mean file size and decode time so the difference can be judged. A stage that
reads pseudo-labels reads the stand-in's label files in their place (one uint8 PNG per target image); BiSMAP's STM
weight files (its ``Weighted`` source) are not read.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

# Assumed GPU training step rate (iterations/s) of a real stage, e.g. DeepLab-v2 R101, 1280×720 source + 1024×512
# target, batch 1 + 1, on an H200/A100. Not measured here (no GPU in this measurement) and not a published figure:
# an assumption to compare against, and not a pessimistic one for the loader: a DeepLab-v2 R101 1 + 1 step is some
# TFLOPs, which an H200 under bf16 AMP may well run several times a second more. Every row also gives the break-even
# rate (the GPU it/s the loader sustains), which needs no assumption.
DEFAULT_GPU_ITS = 4.0
TRAIN_DOMAINS = ("source", "target_train")
STANDIN_NOTE = ("stand-in data (bench.rehearse.standin_data: MiniCity generator at the datasets' native sizes, real "
                "formats), not the real datasets")


@dataclass(frozen=True)
class Loader:
    """One DataLoader a train stage builds: ``role`` is the trainer's dataset name (``easy``/``hard`` for IntraDA)."""

    domain: str
    role: str
    batch: int
    options: dict | None = None
    labels: bool = True  # the stage's ``ctx.dataset(labels=...)``: False for the unlabelled target
    pseudo: bool = False  # reads a pseudo-label PNG per image (measured with the stand-in's label files)


# ------------------------------------------------------------------------------------------- the stages' loaders
def _suite_transform(p: dict, st) -> list[Loader]:
    """adaptsegnet.train, adversarial.feature_warmup: the suite's transforms, 1 + 1 (methods/adversarial.py)."""
    return [Loader(d, d, p["batch_size"], labels=d != "target_train") for d in st.datasets]


def _source_only(p: dict, st) -> list[Loader]:
    return [Loader(p["train_domain"], p["train_domain"], p["batch_size"])]


def _ssf_dan(p: dict, st) -> list[Loader]:
    aug = {"crop": p["crop"]} if p["crop"] else None
    return [Loader("source", "source", p["batch_size"], aug),
            Loader("target_train", "target_train", p["batch_size"], aug, labels=False)]


def _cag_uda(p: dict, st) -> list[Loader]:
    from methods.cag_uda.stages import train_options

    aug = train_options(p)
    return [Loader("source", "source", p["batch_size"], aug),
            Loader("target_train", "target_train", p["batch_size"], aug, labels=False, pseudo=not p["online"])]


def _target_aug(p: dict) -> dict:
    return {k: v for k, v in (("scale", p["train_scale_range"]), ("crop", p["train_size"])) if v}


def _pixintrada(p: dict, st) -> list[Loader]:
    return [Loader("target_train", "target_train", p["batch_size"], _target_aug(p), labels=False, pseudo=True)]


def _intrada(p: dict, st) -> list[Loader]:
    aug = _target_aug(p)
    return [Loader("target_train", "easy", p["batch_size"], aug, labels=False, pseudo=True),
            Loader("target_train", "hard", p["batch_size"], aug, labels=False)]


def _bismap(p: dict, st, names: dict) -> list[Loader]:
    from methods.bismap.train import train_options

    out = [Loader("source", "source", p["batch_source"], train_options(p, names["source"], "source"))]
    if "target_train" in st.datasets:
        out.append(Loader("target_train", "target_train", p["batch_target"],
                          train_options(p, names["target_train"], "target_train"), labels=False,
                          pseudo="labels" in st.upstream))
    return out


STAGE_LOADERS = {"source_only.train": _source_only, "adaptsegnet.train": _suite_transform,
                 "adversarial.feature_warmup": _suite_transform, "ssf_dan.train": _ssf_dan,
                 "cag_uda.train": _cag_uda, "pixintrada.train": _pixintrada, "intrada.train": _intrada,
                 "bismap.warmup": _bismap, "bismap.self_train": _bismap, "bismap.distill": _bismap}


def stage_loaders(suite: dict) -> tuple[list[dict], list[str]]:
    """``[{"stage", "methods", "specs", "loaders"}]``, one per distinct train stage of the suite's methods (same
    name and params → one entry), and notes (train stages this module has no recipe for)."""
    from bench.suite_plan import dataset_specs, method_configs, method_datasets
    from methods.base import closure, get_method

    specs = dataset_specs(suite)
    names = {d: s["name"] for d, s in specs.items()}
    out: dict[str, dict] = {}
    notes = []
    for m, variant, cfg in method_configs(suite):
        method = get_method(m)
        m_specs, _ = method_datasets(method, cfg, specs, {})
        for st in closure(method.stages(cfg)[-1]):
            if st.kind != "train":
                continue
            fn = STAGE_LOADERS.get(st.name)
            if fn is None:
                notes.append(f"{st.name} ({m}): no loader recipe in bench/perf_loader.py STAGE_LOADERS; not timed")
                continue
            p = dict(st.params)
            loaders = fn(p, st, names) if fn is _bismap else fn(p, st)
            key = json.dumps([st.name, [_loader_key(m_specs, lo) for lo in loaders]], sort_keys=True, default=str)
            row = out.setdefault(key, {"stage": st.name, "methods": [], "specs": m_specs, "loaders": loaders})
            label = m + (f"[{variant}]" if variant else "")
            if label not in row["methods"]:
                row["methods"].append(label)
    return list(out.values()), sorted(set(notes))


def _loader_key(specs: dict, lo: Loader) -> str:
    """What makes two loaders read the same thing at the same cost (the spec without its root)."""
    spec = {k: v for k, v in specs[lo.domain].items() if k not in ("root", "labels")}
    labels = lo.labels and specs[lo.domain].get("labels", True)  # a spec's labels: false reads none either way
    return json.dumps({"spec": spec, "options": lo.options or None, "batch": lo.batch, "labels": labels,
                       "pseudo": lo.pseudo, "domain": lo.domain}, sort_keys=True, default=str)


def describe(specs: dict, lo: Loader) -> str:
    """``resize 1280×720 · scale [1.0, 1.5] · crop 1280×640 · flip · caffe`` — the transform one loader applies."""
    opts = {**(specs[lo.domain].get("options") or {}), **(lo.options or {})}
    parts = []
    if opts.get("resize"):
        parts.append("resize {}×{}".format(*opts["resize"]))
    else:
        parts.append("native")
    if opts.get("scale"):
        parts.append(f"scale {list(opts['scale'])}" + (f"·{opts['scale_base']}px" if opts.get("scale_base") else ""))
    if opts.get("crop"):
        parts.append("crop {}×{}".format(*opts["crop"]))
    if opts.get("flip"):
        parts.append("flip")
    parts.append(str(opts.get("normalize", "imagenet")))
    return " · ".join(parts) + (" + pseudo-label" if lo.pseudo else "")


# ------------------------------------------------------------------------------------------- measurement
def build_loader_dataset(specs: dict, lo: Loader, seed: int = 0):
    """The dataset the stage's ``ctx.dataset(domain, labels=..., options=...)`` returns; a pseudo-label loader
    reads the tree's label files in place of its pseudo-labels (one PNG per image, as the pseudo-label directory
    holds) — or none where the tree has none (Cross-City train), which ``pseudo_read`` then says."""
    from bench.data import DataError
    from bench.stage_exec import StageContext

    if lo.pseudo:
        try:
            labelled = {**specs, lo.domain: {**specs[lo.domain], "labels": True}}
            ds = StageContext(Path(os.devnull), seed, labelled, {}).dataset(lo.domain, options=lo.options)
            ds.pseudo_read = all(s.label is not None for s in ds.samples)
            if ds.pseudo_read:
                return ds
        except (DataError, FileNotFoundError):
            pass
    ds = StageContext(Path(os.devnull), seed, specs, {}).dataset(lo.domain, labels=lo.labels, options=lo.options)
    ds.pseudo_read = False
    return ds


def time_loader(ds, batch: int, workers: int, batches: int, repeats: int, name: str, seed: int = 0) -> dict:
    """Throughput of the trainer's DataLoader over ``ds``: one warm-up batch (worker start), then ``repeats`` timed
    runs of ``batches`` batches. → images (counted), batches, median images/s and ms/batch, every run's rate."""
    import torch
    from torch.utils.data import DataLoader

    from bench.sampler import InfiniteSampler, derive_seed

    loader = DataLoader(ds, batch_sampler=InfiniteSampler(len(ds), batch, seed, name), num_workers=workers,
                        pin_memory=False, generator=torch.Generator().manual_seed(derive_seed("loader", seed, name)))
    it = iter(loader)
    try:
        t0 = time.perf_counter()
        next(it)
        startup = time.perf_counter() - t0
        seconds, counted = [], []
        for _ in range(repeats):
            n, t = 0, time.perf_counter()
            for _ in range(batches):
                n += len(next(it)["image"])
            seconds.append(time.perf_counter() - t)
            counted.append(n)
    finally:
        del it  # joins the workers
    rates = [n / s for n, s in zip(counted, seconds, strict=True)]
    return {"images": sum(counted), "batches": batches * repeats, "images_per_s": statistics.median(rates),
            "ms_per_batch": statistics.median(seconds) / batches * 1000, "startup_s": startup, "rates": rates}


def decode_stats(ds, n: int = 4) -> dict:
    """Mean file size (MB) and median decode time (ms) of the first ``n`` images: how close the stand-in's PNGs
    are to the real files."""
    from bench.data.io import read_image

    paths = [s.image for s in ds.samples[:n]]
    read_image(paths[0])
    ms = []
    for p in paths:
        t = time.perf_counter()
        read_image(p)
        ms.append((time.perf_counter() - t) * 1000)
    return {"file_mb": sum(Path(p).stat().st_size for p in paths) / len(paths) / 1e6,
            "decode_ms": statistics.median(ms), "size": "{}×{}".format(*_size(paths[0]))}


def _size(path) -> tuple[int, int]:
    from bench.data.io import image_size

    return image_size(Path(path))


def need_images_per_s(batch: int, gpu_its: float) -> float:
    """What one loader must give: its batch × the GPU's iterations per second."""
    return batch * gpu_its


def stage_its(ms_per_batch: list[float]) -> float:
    """Iterations/s a stage's loaders sustain together on a shared CPU: each iteration takes one batch from every
    loader, and their work adds up (1 / Σ seconds per batch)."""
    return 1000.0 / sum(ms_per_batch)


# ------------------------------------------------------------------------------------------- entry
def measure(name: str = "gta5_cityscapes", overrides=(), workers=(0, 2, 4), batches: int = 4, repeats: int = 3,
            domains=TRAIN_DOMAINS, gpu_its: float = DEFAULT_GPU_ITS, data_root: Path | None = None,
            out: Path | None = None, counts: dict | None = None, progress=print) -> dict:
    """Time every distinct loader of the suite's train stages; → ``{"loaders", "stages", "domains", "notes",
    "text"}`` (rows as dicts; ``text`` the printed tables), also written to ``out`` (CSV + markdown) if given."""
    from bench.paths import REPO
    from bench.rehearse import standin_data
    from bench.suite_runner import load_suite

    if batches < 1 or repeats < 1 or gpu_its <= 0 or any(w < 0 for w in workers):
        raise ValueError(f"--batches {batches}, --repeats {repeats}, --gpu-its {gpu_its}, --workers {list(workers)}: "
                         "expected batches, repeats ≥ 1, gpu-its > 0, workers ≥ 0")
    suite = load_suite(name, ["ablations=false", *overrides])
    bad = sorted(set(domains) - set(suite["datasets"]))
    if bad:
        raise ValueError(f"--domains {bad}: not in the suite; it has {sorted(suite['datasets'])}")
    roots = standin_data(suite, Path(data_root or REPO / "results" / "rehearse" / "data"), counts)
    for d, spec in suite["datasets"].items():
        spec["root"] = str(Path(roots[d]).resolve())
        spec.pop("list_file", None)  # the real split lists name files the stand-in does not have
    stages, notes = stage_loaders(suite)
    stages = [s for s in stages if all(lo.domain in domains for lo in s["loaders"])]
    loaders, domain_rows = _time_all(stages, workers, batches, repeats, gpu_its, progress)
    for st in stages:
        st["keys"] = [_loader_key(st["specs"], lo) for lo in st["loaders"]]
    by_key = {(r["key"], r["workers"]): r for r in loaders}
    stage_rows = _stage_rows(stages, by_key, workers, gpu_its)
    head = _header(suite, workers, batches, repeats, gpu_its, notes)
    text = "\n".join([*head, "", loader_table(loaders), "", stage_table(stage_rows, workers), "",
                      domain_table(domain_rows)])
    if out is not None:
        _write(Path(out), text, loaders, stage_rows)
    return {"loaders": loaders, "stages": stage_rows, "domains": domain_rows, "notes": notes, "text": text}


def _time_all(stages, workers, batches, repeats, gpu_its, progress) -> tuple[list[dict], list[dict]]:
    rows, seen, domain_rows = [], {}, {}
    for st in stages:
        for lo in st["loaders"]:
            key = _loader_key(st["specs"], lo)
            if key in seen:
                seen[key]["stages"].append(st["stage"])
                continue
            ds = build_loader_dataset(st["specs"], lo)
            spec = st["specs"][lo.domain]
            if lo.domain not in domain_rows:
                domain_rows[lo.domain] = {"domain": lo.domain, "dataset": spec["name"], "images": len(ds),
                                          **decode_stats(ds)}
            what = describe(st["specs"], lo) + (" (the stand-in has no label files: not read)"
                                                 if lo.pseudo and not ds.pseudo_read else "")
            first = None
            for w in workers:
                progress(f"perf loader: {st['stage']} {lo.role} (batch {lo.batch}, {what}), {w} worker(s)")
                r = time_loader(ds, lo.batch, w, batches, repeats, lo.role)
                row = {"key": key, "domain": lo.domain, "dataset": spec["name"], "role": lo.role,
                       "transform": what, "batch": lo.batch, "workers": w,
                       "stages": [st["stage"]], **{k: r[k] for k in ("images", "batches", "images_per_s",
                                                                     "ms_per_batch", "startup_s")},
                       "need_images_per_s": need_images_per_s(lo.batch, gpu_its)}
                row["headroom"] = row["images_per_s"] / row["need_images_per_s"]
                row["break_even_gpu_its"] = row["images_per_s"] / lo.batch
                rows.append(row)
                if first is None:
                    first = seen[key] = row
                else:
                    row["stages"] = first["stages"]  # one list: later stages are added to every worker count
    return rows, list(domain_rows.values())


def _stage_rows(stages, by_key, workers, gpu_its) -> list[dict]:
    out = []
    for st in stages:
        images = sum(lo.batch for lo in st["loaders"])
        row = {"stage": st["stage"], "methods": ", ".join(st["methods"]),
               "loaders": " + ".join(f"{lo.role} {lo.batch}" for lo in st["loaders"]), "images_per_iter": images,
               "need_images_per_s": images * gpu_its}
        for w in workers:
            its = stage_its([by_key[(k, w)]["ms_per_batch"] for k in st["keys"]])
            row[f"its_w{w}"] = its
            row[f"headroom_w{w}"] = its / gpu_its
        out.append(row)
    return out


def _header(suite, workers, batches, repeats, gpu_its, notes) -> list[str]:
    import torch

    lines = [f"# Loader throughput of {suite['name']} on the CPU ({os.cpu_count()} cores, torch "
             f"{torch.__version__}, main-process torch threads {torch.get_num_threads()})", "",
             f"- data: {STANDIN_NOTE}; PNG sizes and decode times below",
             f"- num_workers {', '.join(map(str, workers))}; images/s = median of {repeats} runs of {batches} "
             f"batches after one warm-up batch; pin_memory off (no GPU)",
             f"- need = batch × {gpu_its:g} GPU it/s, an ASSUMED step rate (--gpu-its; not measured); break-even = "
             "the GPU it/s the loader sustains; headroom = give / need (< 1: the GPU waits on the loader)",
             "- a stage's loaders share the CPU: stage it/s = 1 / Σ (s per batch of each loader); with "
             "num_workers 0 the decoding also shares the training process with the GPU step"]
    return lines + [f"- {n}" for n in notes]


def loader_table(rows: list[dict]) -> str:
    lines = ["| domain | role | transform | batch | workers | images | img/s | ms/batch | need img/s | headroom | "
             "break-even GPU it/s | stages |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['domain']} ({r['dataset']}) | {r['role']} | {r['transform']} | {r['batch']} | "
                     f"{r['workers']} | {r['images']} | {r['images_per_s']:.1f} | {r['ms_per_batch']:.0f} | "
                     f"{r['need_images_per_s']:g} | {r['headroom']:.2f} | {r['break_even_gpu_its']:.2f} | "
                     f"{', '.join(dict.fromkeys(r['stages']))} |")
    return "\n".join(lines)


def stage_table(rows: list[dict], workers) -> str:
    ws = list(workers)
    lines = ["| stage | methods | loaders (batch) | images/iter | need img/s | "
             + " | ".join(f"it/s w{w} (headroom)" for w in ws) + " |", "|---" * (5 + len(ws)) + "|"]
    for r in rows:
        cells = " | ".join(f"{r[f'its_w{w}']:.2f} ({r[f'headroom_w{w}']:.2f}×)" for w in ws)
        lines.append(f"| {r['stage']} | {r['methods']} | {r['loaders']} | {r['images_per_iter']} | "
                     f"{r['need_images_per_s']:g} | {cells} |")
    return "\n".join(lines)


def domain_table(rows: list[dict]) -> str:
    lines = ["| domain | dataset | stand-in images | size | mean PNG MB | decode ms/image |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['domain']} | {r['dataset']} | {r['images']} | {r['size']} | {r['file_mb']:.2f} | "
                     f"{r['decode_ms']:.0f} |")
    return "\n".join(lines)


def _write(out: Path, text: str, loaders: list[dict], stages: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "loader.md").write_text(text + "\n")
    for fname, rows in (("loader.csv", loaders), ("loader_stages.csv", stages)):
        cols = [c for c in (rows[0] if rows else {}) if c != "key"]
        with (out / fname).open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: (";".join(dict.fromkeys(v)) if isinstance(v, list) else v) for k, v in r.items()})

