"""``bench perf``: measured figures that go into notes (never asserted in unit tests)."""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.metrics import ConfusionMatrix


def evaluator_throughput(images: int = 20, height: int = 1024, width: int = 2048, seed: int = 0) -> str:
    """Pixels/s of ``ConfusionMatrix.update`` (CPU, and GPU when present) vs a numpy bincount-per-image loop."""
    rng = np.random.default_rng(seed)
    preds = [rng.integers(0, 19, (height, width)).astype(np.int64) for _ in range(images)]
    gts = [np.where(rng.random((height, width)) < 0.1, 255, rng.integers(0, 19, (height, width))) for _ in preds]
    px = images * height * width

    t = time.perf_counter()
    ref = np.zeros((19, 19), np.int64)
    for p, g in zip(preds, gts):  # AdaptSegNet's fast_hist, with the range check it lacks
        k = (g >= 0) & (g < 19)
        ref += np.bincount(19 * g[k] + p[k], minlength=361).reshape(19, 19)
    t_np = time.perf_counter() - t
    lines = [f"{images} images {width}x{height} ({px / 1e6:.0f} Mpx)",
             f"numpy bincount per image : {px / t_np / 1e6:8.1f} Mpx/s"]

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        tp = [torch.from_numpy(p).to(dev) for p in preds]
        tg = [torch.from_numpy(g).to(dev) for g in gts]
        cm = ConfusionMatrix(19, device=dev)
        cm.update(tp[0], tg[0])  # warm-up (CUDA context, allocator)
        cm = ConfusionMatrix(19, device=dev)
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for p, g in zip(tp, tg):
            cm.update(p, g)
        if dev == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        assert np.array_equal(cm.numpy(), ref), "evaluator disagrees with the numpy baseline"
        lines.append(f"ConfusionMatrix ({dev:4s})   : {px / dt / 1e6:8.1f} Mpx/s  (matrix identical to numpy)")
    return "\n".join(lines)


def train_speed(model: str = "small", iters: int = 10, batch: int = 1, size=(256, 128), device: str = "auto",
                amp: str = "auto", warmup: int = 3) -> str:
    """Iterations/s of one source+target training step (CE on source, forward on target) on random data.

    The step is the trainer's, so AMP and channels_last are exactly what training uses. Peak memory: CUDA's
    max allocated on a GPU, the process's max RSS on a CPU.
    """
    import resource

    from bench.models import build_model
    from bench.schedule import OptimizerSpec
    from bench.train import TrainConfig, Trainer
    from methods.source_only import segmentation_ce

    class Random(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, key):
            g = torch.Generator().manual_seed(key[0] if isinstance(key, tuple) else key)
            return {"image": torch.randn(3, size[1], size[0], generator=g),
                    "label": torch.randint(0, 19, (size[1], size[0]), generator=g), "name": "x"}

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-init warning is expected here
        net = build_model(model)

    def losses(b, it):
        out = net(b["source"]["image"])
        net(b["target"]["image"])  # the target forward every UDA method pays
        return {"segmenter": {"ce": segmentation_ce(out.logits, b["source"]["label"])}}

    def run(n):
        cfg = TrainConfig(max_iters=n, batch_sizes={"source": batch, "target": batch}, device=device, amp=amp,
                          log_every=0, checkpoint_every=0, progress=False)
        tr = Trainer({"segmenter": net}, {"segmenter": OptimizerSpec("segmenter")}, losses,
                     {"source": Random(), "target": Random()}, cfg)
        return tr, tr.fit()

    run(warmup)
    tr, fit = run(iters)
    dev = tr.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        run(2)
        peak = f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    else:
        peak = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    spi = fit["seconds_per_iteration"]
    return (f"{model} {size[0]}x{size[1]} batch {batch}+{batch} on {dev} amp={amp} "
            f"threads={torch.get_num_threads()}: {1 / spi:.2f} it/s ({spi:.3f} s/it), {peak}")


def gmm_fit_timing(num_classes: int = 19, n_per_class: int = 20_000, dim: int = 64, n_components: int = 8,
                   device: str = "cpu", sklearn: bool = True, seed: int = 0) -> dict:
    """Seconds to fit ``fit_class_gmms`` (float32, max_iter 100, tol 1e-3) on synthetic data (per class, K
    blobs of unit variance), and with ``sklearn`` scikit-learn's GaussianMixture(covariance_type="diag") on the
    same data (float64) from the same initial parameters (our k-means++ init). Reports each one's mean per-sample
    log-likelihood under its final parameters. A measurement helper for notes, never a timed test."""
    from sklearn.mixture import GaussianMixture

    from methods.bismap.equations import ClassGMMs, fit_class_gmms, log_density

    gen = torch.Generator().manual_seed(seed)
    x = torch.empty(num_classes * n_per_class, dim)
    for c in range(num_classes):  # filled per class: no [C, N, D] temporaries at benchmark sizes
        centres = torch.randn(n_components, dim, generator=gen) * 3
        pick = torch.randint(n_components, (n_per_class,), generator=gen)
        x[c * n_per_class:(c + 1) * n_per_class] = centres[pick] + torch.randn(n_per_class, dim, generator=gen)
    x = x.to(device)
    y = torch.arange(num_classes, device=device).repeat_interleave(n_per_class)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    start = fit_class_gmms(x, y, num_classes, n_components, seed=seed, max_iter=0)
    sync()
    t = time.perf_counter()
    fit = fit_class_gmms(x, y, num_classes, n_components, seed=seed, init=start)
    sync()
    out = {"classes": num_classes, "per_class": n_per_class, "dim": dim, "K": n_components, "device": device,
           "torch_threads": torch.get_num_threads(), "torch_s": time.perf_counter() - t,
           "torch_iters": int(fit.n_iter.sum())}

    def own(g, c):  # mean log-likelihood of class c's data under class c's GMM
        one = ClassGMMs(g.weights[c:c + 1], g.means[c:c + 1], g.variances[c:c + 1], *[None] * 4)
        return float(log_density(one, x[c * n_per_class:(c + 1) * n_per_class])[:, 0].double().mean())

    out["torch_mean_loglik"] = float(np.mean([own(fit, c) for c in range(num_classes)]))
    if sklearn:
        xs, t, ll, iters = x.double().cpu().numpy(), time.perf_counter(), [], 0
        for c in range(num_classes):
            xc = xs[c * n_per_class:(c + 1) * n_per_class]
            w0 = start.weights[c].double().cpu().numpy()
            gm = GaussianMixture(n_components, covariance_type="diag", tol=1e-3, reg_covar=1e-6, max_iter=100,
                                 init_params="random", random_state=0, weights_init=w0 / w0.sum(),
                                 means_init=start.means[c].double().cpu().numpy(),
                                 precisions_init=1.0 / start.variances[c].double().cpu().numpy()).fit(xc)
            iters += gm.n_iter_
            ll.append(gm.score(xc))
        out.update(sklearn_s=time.perf_counter() - t, sklearn_iters=iters, sklearn_mean_loglik=float(np.mean(ll)))
    return out


def ssd_step(paper: bool, channels: int, widths: tuple, size: tuple, batch: int, present: int, repeats: int,
             device: str) -> dict:
    """SSF-DAN's separable discriminator, fast path vs the per-class loop (``bench perf ssd``); ``paper``: the
    paper's 2048-d input and widths."""
    from methods.ssf_dan.discriminator import PAPER_IN_CHANNELS, PAPER_WIDTHS, benchmark

    chans, widths = (PAPER_IN_CHANNELS, PAPER_WIDTHS) if paper else (channels, tuple(widths))
    return benchmark(in_channels=chans, widths=widths, size=size, batch=batch, present=present, repeats=repeats,
                     device=device)


def bootstrap_timing(images: int = 200, classes: int = 19, n_boot: int = 2000, repeats: int = 3, seed: int = 10) -> str:
    """Seconds per Δ interval (``stats.paired_bootstrap``) of two rows' per-image matrices: the cost of one cell of
    a results table's Δ column (median of ``repeats``)."""
    from bench.stats import paired_bootstrap

    rng = np.random.default_rng(seed)
    a, b = (rng.integers(0, 5000, (images, classes, classes)) for _ in range(2))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        paired_bootstrap(a, b, n_boot=n_boot)
        times.append(time.perf_counter() - t)
    return (f"paired bootstrap, {images} images × {classes} classes, {n_boot} resamplings: "
            f"{float(np.median(times)):.3f} s per interval (median of {repeats})")
