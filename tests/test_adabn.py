"""AdaBN: Alg. 1's statistics against numpy (a 1×1 conv then BN, the conv done by einsum), the shared source-only
stage, and a tiny MiniCity run in which only the BN statistics change."""

import numpy as np
import pytest
import torch
from fixtures import tiny_minicity_suite, write_suite

from methods import adabn, source_only
from methods.base import make_config
from methods.training import ADAPTSEGNET


def test_target_bn_statistics_are_the_target_batches_statistics():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2)).astype(np.float32)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1, bias=False), torch.nn.BatchNorm2d(3, momentum=0.3))
    model[0].weight.data = torch.from_numpy(w).view(3, 2, 1, 1)
    model[1].weight.data.fill_(2.0)
    model[1].bias.data.fill_(-1.0)
    batches = [rng.normal(loc=i, size=(4, 2, 5, 5)).astype(np.float32) for i in range(3)]
    assert adabn.target_bn_statistics(model, (torch.from_numpy(b) for b in batches)) == 1
    outs = [np.einsum("oc,nchw->nohw", w, b) for b in batches]
    # momentum None: the running values are the plain average over batches of each batch's mean and unbiased var
    mean = np.mean([o.mean(axis=(0, 2, 3)) for o in outs], axis=0)
    var = np.mean([o.transpose(1, 0, 2, 3).reshape(3, -1).var(axis=1, ddof=1) for o in outs], axis=0)
    bn = model[1]
    assert np.allclose(bn.running_mean.numpy(), mean, atol=1e-5) and np.allclose(bn.running_var.numpy(), var, atol=1e-4)
    assert not model.training and bn.momentum == 0.3 and int(bn.num_batches_tracked) == 3
    assert torch.all(bn.weight == 2.0) and torch.all(bn.bias == -1.0)  # γ, β untouched



def test_target_bn_statistics_reach_frozen_bn_layers():
    """A model with bn_mode="frozen" keeps its BN in eval mode under .train(); AdaBN must still re-estimate them."""
    from bench.models import build_model

    torch.manual_seed(0)
    model = build_model("small", num_classes=19, bn_mode="frozen", bn_scope="backbone")
    model.train()
    assert not model.stem[1].training  # the frozen mode's own behaviour
    x = torch.randn(2, 3, 32, 64) * 3 + 5
    adabn.target_bn_statistics(model, [x])
    # the stem's BN sees the conv of x directly: its running mean must be that conv output's channel mean
    conv = model.stem[0](x)
    assert torch.allclose(model.stem[1].running_mean, conv.mean((0, 2, 3)), atol=1e-4)
    assert not model.stem[1].training

def test_adabn_starts_from_the_source_only_stage():
    values = {**ADAPTSEGNET, "model": "small", "model_options": {}, "iters": 5}
    (so,) = source_only.stages(make_config(source_only.Config, values))
    trained, recal = adabn.stages(make_config(adabn.Config, {**values, "bn_images": 16}))
    assert (trained.name, trained.params) == (so.name, so.params)  # one shared stage, one key
    assert recal.upstream == {"model": trained} and recal.params == {"bn_images": 16, "bn_batch_size": 8}
    assert recal.datasets == ("target_train",)


@pytest.mark.slow
def test_adabn_changes_only_the_bn_statistics_on_tiny_minicity(tmp_path, one_torch_thread):
    from bench.stage_exec import load_model
    from bench.suite_runner import run_suite

    suite = tiny_minicity_suite(tmp_path, {"gta5": 6, "synthia": 2, "cityscapes_train": 6, "cityscapes_val": 2})
    suite["only"] = ["source_only", "adabn"]
    for m in ("source_only", "adabn"):
        suite["methods"][m].update(iters=4, batch_size=2)
    path = write_suite(suite, tmp_path / "tiny.yaml")
    out = run_suite(str(path), results_root=tmp_path / "results", executor="local")
    names = sorted(o.name for o in out["outcomes"].values())
    assert names == ["adabn.recalibrate", "eval", "eval", "source_only.train"]  # the training runs once
    cache = tmp_path / "results" / "cache"
    so, re = (load_model(next(cache.glob(f"{n}-*"))).state_dict() for n in ("source_only-train", "adabn-recalibrate"))
    changed = {k for k in so if not torch.equal(so[k], re[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
