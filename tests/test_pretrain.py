"""MiniCity's generic pretraining domain, its backbone-only init file, and the stage keys that hold its hash."""

import hashlib
import json

import numpy as np
import pytest
import torch

from bench.data.generic_shapes import KINDS, GenericShapes, make_generic
from bench.models import build_model
from bench.pretrain import RECIPE, check_recipe, ensure_pretrained
from bench.stage_keys import init_file_hashes, stage_key
from methods.base import Stage

TINY = {**RECIPE, "iters": 3, "images": 4, "size": [64, 32], "batch_size": 2}


def test_generic_samples_are_deterministic_and_cover_every_kind():
    a, la = make_generic(0, 5, (96, 48))
    b, lb = make_generic(0, 5, (96, 48))
    c, _ = make_generic(0, 6, (96, 48))
    assert a.shape == (48, 96, 3) and a.dtype == np.uint8 and la.shape == (48, 96)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    seen = set()
    for i in range(20):
        seen |= set(np.unique(make_generic(1, i, (96, 48))[1]).tolist())
    assert seen == set(range(len(KINDS)))


def test_colour_does_not_predict_the_shape_kind():
    # the proxy task must need shape and texture: a nearest-mean-colour classifier fitted on 40 images does
    # no better than always answering the majority kind (+5 points) on 40 others
    def pixels(lo, hi):
        xs, ys = zip(*(make_generic(3, i, (64, 32)) for i in range(lo, hi)))
        return np.concatenate([x.reshape(-1, 3) for x in xs]).astype(np.float32), np.concatenate(
            [y.ravel() for y in ys])

    xtr, ytr = pixels(0, 40)
    xte, yte = pixels(40, 80)
    means = np.stack([xtr[ytr == k].mean(0) for k in range(len(KINDS))])
    pred = np.argmin(((xte[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    majority = np.bincount(ytr).argmax()
    assert (pred == yte).mean() <= (yte == majority).mean() + 0.05


def test_dataset_reads_trainer_keys_and_flips_by_stream_position():
    ds = GenericShapes(3, seed=0, size=(64, 32))
    plain, flipped = ds[(1, 0)], ds[(1, 1)]
    assert plain["image"].shape == (3, 32, 64) and plain["label"].dtype == torch.int64
    assert torch.equal(plain["label"].flip(-1), flipped["label"])


def test_backbone_only_file_loads_the_backbone_and_keeps_fresh_heads(tmp_path):
    src = build_model("small", num_classes=len(KINDS))
    prefixes = ("stem.", "layer1.", "layer2.", "layer3.", "layer4.")
    state = {k: v for k, v in src.state_dict().items() if k.startswith(prefixes)}
    torch.save(state, tmp_path / "bb.pt")
    torch.manual_seed(1)
    model = build_model("small", init_weights=tmp_path / "bb.pt")
    assert torch.equal(model.layer4[0].conv1.weight, src.layer4[0].conv1.weight)
    assert model.classifier.weight.shape[0] == 19
    assert set(model.init_report.kept) >= {"classifier.weight", "context.bn.weight"}
    del state["layer2.0.conv1.weight"]  # neither a full state dict nor the whole backbone
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="missing keys"):
        build_model("small", init_weights=tmp_path / "partial.pt")


def test_ensure_pretrained_trains_once_and_again_for_another_recipe(tmp_path):
    first = ensure_pretrained(tmp_path, "tiny", TINY)
    assert first["regenerated"] and first["path"].is_file()
    record = json.loads((tmp_path / "tiny.json").read_text())
    assert record["recipe"] == TINY
    # the file's hash and the CPU it was made on, to tell two machines' files apart
    assert record["sha256"] == hashlib.sha256(first["path"].read_bytes()).hexdigest()
    assert record["made_on"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    build_model("small", init_weights=first["path"])  # loads as a backbone init
    mtime = first["path"].stat().st_mtime_ns
    again = ensure_pretrained(tmp_path, "tiny", TINY)
    assert not again["regenerated"] and first["path"].stat().st_mtime_ns == mtime
    other = ensure_pretrained(tmp_path, "tiny", {**TINY, "iters": 4})
    assert other["regenerated"]


def test_head_kept_file_gives_every_seed_one_head_but_a_fresh_classifier(tmp_path):
    gn = {**TINY, "keep": "all_but_classifier", "head_norm": "gn"}
    st = ensure_pretrained(tmp_path, "head", gn)
    state = torch.load(st["path"], weights_only=True)
    assert {k.split(".")[0] for k in state} == {"stem", "layer1", "layer2", "layer3", "layer4", "context", "low",
                                                "fuse"}
    assert "context.bn.running_mean" not in state  # GroupNorm, as the suite rows' head
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        with pytest.warns(UserWarning, match=r"\['classifier'\] not in the file"):  # a head in part: said
            models.append(build_model("small", init_weights=st["path"], head_norm="gn"))
    a, b = models
    assert torch.equal(a.fuse[1][0].weight, state["fuse.1.0.weight"]) and torch.equal(a.fuse[1][0].weight,
                                                                                        b.fuse[1][0].weight)
    assert not torch.equal(a.classifier.weight, b.classifier.weight)  # the seed's own 19-class classifier
    assert a.init_report.kept == ["classifier.bias", "classifier.weight"]
    with pytest.raises(ValueError, match="missing keys"):  # a BN head cannot take the GroupNorm head's file
        build_model("small", init_weights=st["path"])
    # the STM encoder reads only the backbone, whatever head the file holds
    from bench.models.weights import load_backbone

    bn = build_model("small")
    report = load_backbone(bn, st["path"])
    assert torch.equal(bn.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])
    assert "context.reduce.0.weight" in report.kept
    # the optional keys at their defaults are the recipe without them: the same file, not retrained
    plain = ensure_pretrained(tmp_path, "plain", TINY)
    again = ensure_pretrained(tmp_path, "plain", {**TINY, "keep": "backbone", "head_norm": "bn"})
    assert plain["regenerated"] and not again["regenerated"]
    for bad, key in (({"keep": "head"}, "keep"), ({"head_norm": "ln"}, "head_norm"), ({"kep": 1}, "kep")):
        with pytest.raises(ValueError, match=key):
            check_recipe({**TINY, **bad})


def test_a_file_missing_part_of_a_head_module_is_refused(tmp_path):
    src = build_model("small", num_classes=19)
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("classifier.")}
    del state["fuse.0.0.weight"]  # whole modules may be absent (fresh init), a module in part may not
    torch.save(state, tmp_path / "part.pt")
    with pytest.raises(ValueError, match="fuse.0.0.weight"):
        build_model("small", init_weights=tmp_path / "part.pt")


def test_stage_key_holds_the_init_files_hash(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"one")
    plain = Stage("x.train", "train", lambda p, ctx: {}, {"lr": 0.1, "init_weights": None})
    with_file = Stage("x.train", "train", lambda p, ctx: {}, {"lr": 0.1, "init_weights": str(f)})
    assert init_file_hashes(plain.params) == {}
    k1 = stage_key(with_file, {}, {}, 0, {})
    f.write_bytes(b"two, a rebuilt file at the same path")
    k2 = stage_key(with_file, {}, {}, 0, {})
    assert k1 != k2 and stage_key(plain, {}, {}, 0, {}) != k1
    assert init_file_hashes(with_file.params) == {"init_weights": hashlib.sha256(f.read_bytes()).hexdigest()}


def test_suite_pretrain_section_is_checked_and_trains_into_its_root(tmp_path, capsys):
    from bench.suite_runner import SuiteError, ensure_minicity_pretraining

    with pytest.raises(SuiteError, match="root"):
        ensure_minicity_pretraining({"rot": str(tmp_path)})
    with pytest.raises(SuiteError, match="itres"):
        ensure_minicity_pretraining({"root": str(tmp_path), "recipe": {"itres": 3}})
    with pytest.raises(SuiteError, match="minicity.pretrain.recipe: .*keep="):
        ensure_minicity_pretraining({"root": str(tmp_path), "recipe": {"keep": "everything"}})
    ensure_minicity_pretraining({"root": str(tmp_path), "name": "w", "recipe": {k: TINY[k] for k in
                                                                              ("iters", "images", "size")}})
    assert (tmp_path / "w.pt").is_file() and "written to" in capsys.readouterr().out



def test_bismap_stm_backbone_encoder_is_the_pretrained_suite_model(tmp_path):
    from types import SimpleNamespace

    from methods.bismap.stm import stm_encoder

    src = build_model("small", num_classes=len(KINDS))
    prefixes = ("stem.", "layer1.", "layer2.", "layer3.", "layer4.")
    torch.save({k: v for k, v in src.state_dict().items() if k.startswith(prefixes)}, tmp_path / "bb.pt")
    data = SimpleNamespace(transform=SimpleNamespace(normalize="imagenet"))
    ctx = SimpleNamespace(device=torch.device("cpu"), dataset=lambda domain, plain=False: data,
                          load_model=lambda name: pytest.fail("the warm-up encoder must not be used"))
    p = {"encoders": ["backbone", "warmup"], "encoder_weights": str(tmp_path / "bb.pt"), "model": "small"}
    encode, norm, name = stm_encoder(p, ctx)
    x = torch.randn(1, 3, 32, 64)
    src.eval()
    with torch.no_grad():
        assert name == "backbone" and norm == "imagenet"
        assert torch.allclose(encode(x), src(x).features["layer4"])


def test_makers_hold_the_file_lock_so_a_second_process_waits(tmp_path):
    # bench data minicity and a run (or two runs) starting together: each maker takes the lock itself, so no
    # caller can forget it; a holder keeps the other waiting until it releases
    import threading

    from bench.data.minicity import ensure_minicity
    from bench.fsio import file_lock

    ensure_pretrained(tmp_path, "tiny", TINY)
    counts = {"gta5": 1, "synthia": 0, "cityscapes_train": 1, "cityscapes_val": 1}
    jobs = {"pretrain": (tmp_path / ".tiny.lock", lambda: ensure_pretrained(tmp_path, "tiny", TINY)),
            "minicity": (tmp_path / ".mc.lock", lambda: ensure_minicity(tmp_path / "mc", size=(64, 32),
                                                                         counts=counts, processes=1))}
    for name, (lock, job) in jobs.items():
        with file_lock(lock):
            t = threading.Thread(target=job)
            t.start()
            t.join(1.0)
            assert t.is_alive(), f"{name}: ran while another process held {lock.name}"
        t.join(60)
        assert not t.is_alive()
    assert (tmp_path / "mc" / "minicity.json").is_file()
