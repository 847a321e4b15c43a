"""The trainer: schedule, LR groups, gradient isolation, checkpoints, resume, reproducibility, hooks."""

from __future__ import annotations

import copy
import io
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from bench.checkpoint import list_checkpoints
from bench.progress import TrainProgress
from bench.schedule import OptimizerSpec, apply_lr, build_optimizer, poly_lr
from bench.train import NonFiniteLossError, Recipe, TrainConfig, Trainer

# ------------------------------------------------------------------------------------------- fixtures


class ToyDataset(Dataset):
    """Random 3x16x16 images; label 1 where red > green. ``ds[(i, aug_seed)]`` flips at random."""

    def __init__(self, n: int, seed: int, shift: float = 0.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 16, 16, generator=g) + shift
        self.labels = (self.images[:, 0] > self.images[:, 1]).long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        idx, aug = key if isinstance(key, tuple) else (key, None)
        img, lbl = self.images[idx], self.labels[idx]
        flip = aug is not None and random.Random(aug).random() < 0.5
        if flip:
            img, lbl = img.flip(-1), lbl.flip(-1)
        return {"image": img, "label": lbl, "name": f"toy_{idx}", "aug": -1 if aug is None else aug}


class TinySeg(nn.Module):
    """Conv + BN + dropout body and a 1x1 head; the head gets 10x LR via parameter_groups()."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.2))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.body(x))

    def parameter_groups(self):
        return [
            {"params": self.body.parameters(), "lr_mult": 1.0, "name": "backbone"},
            {"params": self.head.parameters(), "lr_mult": 10.0, "name": "head"},
        ]


def tiny_disc() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, stride=2), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 3, stride=2))


def bce(logits, target: float):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def adversarial_losses(seg, disc, lam=0.5):
    """AdaptSegNet-style output-space adversarial losses: seg CE + adv for G, src/tgt BCE for D."""

    def losses(batch, it):
        ps, pt = seg(batch["source"]["image"]), seg(batch["target"]["image"])
        g = {"ce": F.cross_entropy(ps, batch["source"]["label"]), "adv": lam * bce(disc(pt.softmax(1)), 1.0)}
        d = {"src": bce(disc(ps.softmax(1).detach()), 1.0), "tgt": bce(disc(pt.softmax(1).detach()), 0.0)}
        return {"segmenter": g, "discriminator": d}

    return losses


class Recorder:
    """Callback keeping every step's metrics."""

    def __init__(self):
        self.steps: dict[int, dict[str, float]] = {}

    def __call__(self, step, metrics):
        self.steps[step] = metrics


def make_trainer(out_dir=None, *, adversarial=True, seed=0, losses=None, cb=None, eval_fn=None, **cfg):
    torch.manual_seed(123)  # same initial weights in every run; the trainer seed drives everything else
    seg, disc = TinySeg(), tiny_disc()
    modules = {"segmenter": seg, "discriminator": disc} if adversarial else {"segmenter": seg}
    opts = {"segmenter": OptimizerSpec("segmenter", kind="sgd", lr=0.01, weight_decay=5e-4)}
    if adversarial:
        opts["discriminator"] = OptimizerSpec("discriminator", kind="adam", lr=1e-3)
    datasets = {"source": ToyDataset(10, 1), "target": ToyDataset(7, 2, shift=0.3)}
    if losses is None:
        losses = adversarial_losses(seg, disc) if adversarial else source_only(seg)
    # device="cpu": these tests compare CPU tensors (on a GPU machine "auto" would pick CUDA, where e.g.
    # cross-entropy has no deterministic kernel and deterministic=True raises)
    cfg = {"max_iters": 12, "batch_sizes": {"source": 4, "target": 3}, "seed": seed, "log_every": 0,
           "checkpoint_every": 4, "device": "cpu", **cfg}
    rec = Recorder()
    trainer = Trainer(modules, opts, losses, datasets, TrainConfig(**cfg), out_dir=out_dir, eval_fn=eval_fn,
                      callbacks=[rec] + ([cb] if cb else []))
    return trainer, rec


def source_only(seg):
    def losses(batch, it):
        return {"segmenter": {"ce": F.cross_entropy(seg(batch["source"]["image"]), batch["source"]["label"])}}

    return losses


def assert_same(a, b, path="state"):
    """Recursive bit-exact comparison of nested state dicts."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def loss_series(rec, steps):
    return [{k: v for k, v in rec.steps[s].items() if k.startswith("loss/")} for s in steps]


# ------------------------------------------------------------------------------------------- schedule


def test_poly_lr_hand_computed():
    assert poly_lr(2.5e-4, 0, 100) == 2.5e-4
    # 0.5 ** 0.9 = 0.535886731...
    assert poly_lr(2.5e-4, 50, 100, 0.9) == pytest.approx(1.339716828e-4, rel=1e-9)
    # AdaptSegNet: decays over 250k, stops at 150k -> 0.4 ** 0.9 = 0.438383...
    assert poly_lr(2.5e-4, 150_000, 250_000, 0.9) == pytest.approx(1.095958e-4, rel=1e-6)
    assert poly_lr(1e-3, 99, 100, 1.0) == pytest.approx(1e-5)
    assert poly_lr(1e-3, 300, 100) == 0.0  # past the horizon
    # warm-up: it 5 of 10 with ratio 0.1 -> poly * (1 - 0.5 * 0.9) = poly * 0.55
    assert poly_lr(1.0, 5, 100, 1.0, warmup_iters=10, warmup_ratio=0.1) == pytest.approx(0.95 * 0.55)
    assert poly_lr(1.0, 0, 100, 1.0, warmup_iters=10, warmup_ratio=0.1) == pytest.approx(0.1)
    assert poly_lr(1.0, 10, 100, 1.0, warmup_iters=10, warmup_ratio=0.1) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        poly_lr(1.0, 0, 0)


def test_trainer_follows_poly_with_horizon_beyond_stop():
    trainer, rec = make_trainer(adversarial=False, max_iters=4, horizon=10)
    trainer.fit()
    for step in range(1, 5):  # step s used the rate of 0-based iteration s - 1
        assert rec.steps[step]["lr/segmenter"] == pytest.approx(poly_lr(0.01, step - 1, 10, 0.9), rel=1e-12)
    head = [g for g in trainer.optimizers["segmenter"].param_groups if g["name"] == "segmenter.head"][0]
    assert head["lr"] == pytest.approx(10 * poly_lr(0.01, 3, 10, 0.9), rel=1e-12)


def test_head_params_get_10x_lr():
    seg = TinySeg()
    opt = build_optimizer(OptimizerSpec("segmenter", lr=2.5e-4), {"segmenter": seg})
    apply_lr(opt, OptimizerSpec("segmenter", lr=2.5e-4), 50, 100)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    base = poly_lr(2.5e-4, 50, 100)
    assert lrs == {"segmenter.backbone": pytest.approx(base), "segmenter.head": pytest.approx(10 * base)}
    head_ids = {id(p) for p in seg.head.parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == head_ids
    # a module without parameter_groups(): every trainable parameter, lr_mult 1
    plain = build_optimizer(OptimizerSpec("d", kind="adam", lr=1e-4), {"d": tiny_disc()})
    assert [g["lr_mult"] for g in plain.param_groups] == [1.0]


def test_parameter_groups_that_miss_a_parameter_are_refused():
    seg = TinySeg()
    seg.parameter_groups = lambda: [{"params": seg.head.parameters(), "lr_mult": 10.0, "name": "head"}]
    with pytest.raises(ValueError, match="leaves out"):
        build_optimizer(OptimizerSpec("segmenter"), {"segmenter": seg})


# ------------------------------------------------------------------------------------ resume, seeds


def test_kill_and_resume_is_bit_identical(tmp_path):
    full, rec_full = make_trainer(tmp_path / "full")
    full.fit()
    first, rec_a = make_trainer(tmp_path / "killed")
    out = first.fit(stop_at=5)
    assert out["iterations"] == 5 and not out["finished"]
    assert [it for it, _ in list_checkpoints(tmp_path / "killed")] == [4, 5]
    resumed, rec_b = make_trainer(tmp_path / "killed")
    out = resumed.fit()
    assert out["resumed_from"] == 5 and out["iterations_run"] == 7 and out["finished"]
    assert sorted(rec_b.steps) == list(range(6, 13))
    assert loss_series(rec_b, range(6, 13)) == loss_series(rec_full, range(6, 13))
    for name in ("segmenter", "discriminator"):
        assert_same(full.modules[name].state_dict(), resumed.modules[name].state_dict(), name)
        assert_same(full.optimizers[name].state_dict(), resumed.optimizers[name].state_dict(), name)
    assert_same(full.samplers["target"].state_dict(), resumed.samplers["target"].state_dict())
    # a second fit on a finished out_dir does nothing and reports the stored metrics
    again, _ = make_trainer(tmp_path / "killed")
    out = again.fit()
    assert out["iterations_run"] == 0 and out["metrics"] == rec_full.steps[12]


def test_same_seed_same_run_different_seed_different_run():
    runs = []
    for seed in (0, 0, 1):
        trainer, rec = make_trainer(seed=seed, max_iters=6)
        trainer.fit()
        runs.append(loss_series(rec, range(1, 7)))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_dataloader_workers_do_not_change_the_run():
    a, rec_a = make_trainer(max_iters=5, num_workers=0)
    a.fit()
    b, rec_b = make_trainer(max_iters=5, num_workers=2)
    b.fit()
    assert loss_series(rec_a, range(1, 6)) == loss_series(rec_b, range(1, 6))


def test_resume_refuses_a_different_run(tmp_path):
    make_trainer(tmp_path, max_iters=4)[0].fit(stop_at=2)
    other, _ = make_trainer(tmp_path, max_iters=4, batch_sizes={"source": 2, "target": 3})
    with pytest.raises(RuntimeError, match="cannot resume"):
        other.fit()


# --------------------------------------------------------------------------------- two optimisers


def test_generator_loss_does_not_leak_into_discriminator_grads():
    captured = {}
    torch.manual_seed(123)
    seg, disc = TinySeg(), tiny_disc()
    ref_seg, ref_disc = copy.deepcopy(seg), copy.deepcopy(disc)
    inner = adversarial_losses(seg, disc)

    def losses(batch, it):
        captured.update(batch=batch, rng=torch.get_rng_state())
        return inner(batch, it)

    # device="cpu": the reference below runs on the CPU (on a GPU machine "auto" would pick CUDA)
    cfg = TrainConfig(max_iters=1, batch_sizes={"source": 4, "target": 3}, log_every=0, device="cpu")
    trainer = Trainer(
        {"segmenter": seg, "discriminator": disc},
        {"segmenter": OptimizerSpec("segmenter", lr=0.01), "discriminator": OptimizerSpec("discriminator")},
        losses, {"source": ToyDataset(10, 1), "target": ToyDataset(7, 2, 0.3)}, cfg,
    )
    trainer.fit()
    torch.set_rng_state(captured["rng"])  # same dropout masks as the trainer's forward
    ref = adversarial_losses(ref_seg, ref_disc)(captured["batch"], 0)
    d_params, g_params = list(ref_disc.parameters()), list(ref_seg.parameters())
    d_total, g_total = sum(ref["discriminator"].values()), sum(ref["segmenter"].values())
    d_alone = torch.autograd.grad(d_total, d_params, retain_graph=True)
    g_alone = torch.autograd.grad(g_total, g_params, retain_graph=True)
    naive = torch.autograd.grad(d_total + g_total, d_params, retain_graph=True)  # what isolation prevents
    for p, want, leaky in zip(disc.parameters(), d_alone, naive, strict=True):
        assert torch.allclose(p.grad, want, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(p.grad, leaky, rtol=1e-5, atol=1e-7)
    for p, want in zip(seg.parameters(), g_alone, strict=True):
        assert torch.allclose(p.grad, want, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------ failures and files


def test_nan_loss_raises_naming_term_and_iteration(tmp_path):
    seg_holder = {}

    def losses(batch, it):
        ce = F.cross_entropy(seg_holder["seg"](batch["source"]["image"]), batch["source"]["label"])
        bad = ce * (float("nan") if it == 3 else 0.0)
        return {"segmenter": {"ce": ce, "bad": bad}}

    trainer, _ = make_trainer(tmp_path, adversarial=False, losses=losses, checkpoint_every=2)
    seg_holder["seg"] = trainer.modules["segmenter"]
    with pytest.raises(NonFiniteLossError, match=r"segmenter/bad is nan at iteration 4.*iteration 2"):
        trainer.fit()
    assert [it for it, _ in list_checkpoints(tmp_path)] == [2]
    assert not (tmp_path / "model.pt").exists()


def test_bad_losses_output_is_named():
    trainer, _ = make_trainer(adversarial=False, losses=lambda b, it: {"generator": torch.tensor(1.0)})
    with pytest.raises(KeyError, match="generator"):
        trainer.fit()
    trainer, _ = make_trainer(adversarial=False, losses=lambda b, it: {"segmenter": {"ce": torch.ones(3)}})
    with pytest.raises(TypeError, match="segmenter/ce"):
        trainer.fit()
    with pytest.raises(ValueError, match="batch_sizes"):
        make_trainer(batch_sizes={"source": 4})


def test_checkpoints_load_weights_only_and_rotate(tmp_path):
    trainer, _ = make_trainer(tmp_path, max_iters=7, checkpoint_every=2, amp="fp16")
    trainer.fit()
    ckpts = list_checkpoints(tmp_path)
    assert [it for it, _ in ckpts] == [6, 7]
    assert not list(tmp_path.glob("*.tmp"))
    state = torch.load(ckpts[-1][1], weights_only=True)
    assert state["iteration"] == 7
    assert set(state) >= {"modules", "optimizers", "scaler", "samplers", "rng", "metrics", "config"}
    assert state["scaler"]["scale"] > 0  # fp16 GradScaler state travels with the checkpoint
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    model = torch.load(tmp_path / "model.pt", weights_only=True)
    fresh = TinySeg()
    fresh.load_state_dict(model["segmenter"])
    assert_same(fresh.state_dict(), trainer.modules["segmenter"].state_dict())


# -------------------------------------------------------------------------------------------- hooks


def test_eval_hook_schedule_modes_and_rng_isolation():
    calls, modes, holder = [], [], {}

    def eval_fn(modules, step):
        for m in modules.values():
            m.eval()
        torch.rand(5)  # eval randomness must not shift the training stream
        random.random()
        calls.append(step)
        return {"val/score": float(step)}

    def check_mode(step, metrics):
        modes.append(all(m.training for m in holder["trainer"].modules.values()))

    plain, rec_plain = make_trainer(max_iters=7)
    plain.fit()
    holder["trainer"], rec = make_trainer(max_iters=7, eval_every=3, eval_fn=eval_fn, cb=check_mode)
    out = holder["trainer"].fit()
    assert calls == [3, 6, 7]  # every eval_every steps and at the end
    assert modes == [True] * 7  # train() mode restored after each eval
    assert rec.steps[3]["val/score"] == 3.0 and "val/score" not in rec.steps[4]
    assert out["metrics"]["val/score"] == 7.0
    assert loss_series(rec_plain, range(1, 8)) == loss_series(rec, range(1, 8))
    calls.clear()
    make_trainer(max_iters=2, eval_fn=eval_fn)[0].fit()
    assert calls == [2]  # eval_every=0: only at the end


def test_plain_progress_lines(capsys):
    trainer, _ = make_trainer(adversarial=False, max_iters=4, log_every=2, progress=False)
    out = trainer.fit()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("it ")]
    assert [ln.split()[1] for ln in lines] == ["2/4", "4/4"]
    assert "loss/segmenter/ce=" in lines[0] and "lr/segmenter=" in lines[0] and "it/s" in lines[0]
    assert out["seconds"] > 0 and out["seconds_per_iteration"] > 0 and math.isfinite(out["seconds"])


def test_rich_progress_bar_renders():
    stream = io.StringIO()
    bar = TrainProgress(total=4, start=1, log_every=1, use_rich=True, stream=stream)
    for step in (2, 3, 4):
        bar.update(step, {"loss/segmenter/ce": 0.5, "lr/segmenter": 0.01})
    bar.message("eval it 4: val/mIoU=50")
    bar.close()
    text = stream.getvalue()
    assert "4/4" in text and "segmenter/ce=0.5000" in text and "eval it 4" in text


def test_deterministic_mode_is_on_during_fit_and_restored_after():
    seen = []
    trainer, _ = make_trainer(adversarial=False, max_iters=2, deterministic=True,
                              cb=lambda s, m: seen.append(torch.are_deterministic_algorithms_enabled()))
    before = torch.are_deterministic_algorithms_enabled()
    trainer.fit()
    assert seen == [True, True]
    assert torch.are_deterministic_algorithms_enabled() == before


def test_bf16_autocast_runs_on_cpu():
    trainer, rec = make_trainer(max_iters=2, amp="bf16")
    trainer.fit()
    assert all(math.isfinite(v) for v in rec.steps[2].values())


# ------------------------------------------------------------------------------------------ deferred build
def _recipe(seg: nn.Module, disc: nn.Module) -> Recipe:
    return Recipe({"segmenter": seg, "discriminator": disc},
                  {"segmenter": OptimizerSpec("segmenter", kind="sgd", lr=0.01),
                   "discriminator": OptimizerSpec("discriminator", kind="adam", lr=1e-3)},
                  adversarial_losses(seg, disc), {"source": ToyDataset(10, 1), "target": ToyDataset(7, 2, shift=0.3)})


def test_deferred_build_is_seeded_and_training_starts_from_the_fresh_seed():
    """A deferred build draws its initial weights from the seeded RNGs, and training then runs exactly as when a
    stage seeds, builds and hands the trainer its modules (which seeds again): the one seeding replaces both."""
    cfg = TrainConfig(max_iters=5, batch_sizes={"source": 4, "target": 3}, seed=3, log_every=0, device="cpu")
    torch.manual_seed(cfg.seed)
    eager = Trainer(*astuple_recipe(_recipe(TinySeg(), tiny_disc())), cfg)
    eager_fit = eager.fit()

    def build():
        recipe = _recipe(TinySeg(), tiny_disc())
        torch.rand(7)  # whatever else the build draws or seeds must not move the training streams
        torch.manual_seed(99)
        random.seed(99)
        return recipe

    torch.manual_seed(12345)  # no effect: the trainer seeds before it builds
    deferred = Trainer.deferred(build, cfg)
    assert deferred.modules == {}
    fit = deferred.fit()
    assert fit["metrics"] == eager_fit["metrics"]
    for name in ("segmenter", "discriminator"):
        assert_same(deferred.modules[name].state_dict(), eager.modules[name].state_dict())


def astuple_recipe(r: Recipe) -> tuple:
    return r.modules, r.optimizers, r.losses, r.datasets
