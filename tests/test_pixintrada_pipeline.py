"""PixIntraDA's stages (methods/pixintrada/stages.py): the stage graph, what shares a cache key (Stage I with
AdaptSegNet and IntraDA, labels across PLA/CTS, thresholds across α), the unchanged AdaptSegNet keys, the Z coding,
padding in the discriminator losses, and one run of PixIntraDA and IntraDA on a tiny MiniCity."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures import tiny_minicity_suite, write_suite

from bench.stage_keys import plan_stages
from methods import adversarial, intrada
from methods.base import make_config
from methods.pixintrada import equations as px
from methods.pixintrada import stages as pp
from methods.pixintrada.config import TABLES
from methods.pixintrada.inter import adaptsegnet_config

FPS = {d: {"spec": {"name": d}, "fingerprint": "f" + d} for d in ("source", "target_train", "target_val")}
TRAIN = {"amp": "auto", "device": "cpu"}  # keys record the device: pinned keys must not depend on the machine


def _key(stage, seed=0) -> str:
    return plan_stages([stage], seed, FPS, TRAIN)[-1].key


# ------------------------------------------------------------------------------------------ graph
def test_default_graph_two_rounds_in_order_with_their_links():
    cfg = px.Config()
    st = pp.stages(cfg)
    assert [s.name for s in st] == ["gpa.source", "adaptsegnet.train"] + 2 * [
        "pixintrada.thresholds", "pixintrada.label", "pixintrada.train"]
    gpa, inter, fit1, lab1, tr1, fit2, lab2, tr2 = st
    assert inter.upstream == {"source_tree": gpa}
    assert fit1.upstream == {"model": inter} and lab1.upstream == {"model": inter, "thresholds": fit1}
    assert tr1.upstream == {"labels": lab1}  # round 1 from the init weights (intra_init=imagenet)
    assert fit2.upstream == {"model": tr1} and lab2.upstream == {"model": tr1, "thresholds": fit2}
    assert tr2.upstream == {"labels": lab2, "init": tr1}  # round2_init=round1
    assert (tr1.params["kld_weight"], tr2.params["kld_weight"]) == (0.0, 0.1)
    assert tr1.params["lr"] == 2.4e-4 and tr1.params["batch_size"] == 4 and tr1.params["variant"] == "cts"
    # Stage I carries AdaptSegNet's recipe from the inter_* fields
    assert (inter.params["lr"], inter.params["iters"], inter.params["lambda_adv_aux"]) == (2.5e-4, 150_000, 2e-4)
    # α = None is resolved from the suite's source, so the source's spec is part of the label stage's key
    assert lab1.datasets == ("source", "target_train")
    assert pp.stages(px.Config(alpha=0.7))[3].datasets == ("target_train",)


def test_existing_adaptsegnet_keys_unchanged():
    # recorded from the code before Stage I learned to read a translated source tree (re-recorded when keys began
    # to record the runtime: torch threads, device, channels-last, issue 20; and when MiniCity's rows moved to a
    # frozen-BN/GroupNorm net and λ_adv 0.02, and to 1600 iterations, issue 15: the minicity key only)
    assert _key(adversarial.stages(adversarial.Config())[-1]) == "adaptsegnet-train-08a8be616b525e52"
    from bench.suite_runner import load_suite

    # without the generic-pretraining file (its hash would enter the key only where the file exists)
    cfg = make_config(adversarial.Config, load_suite("minicity", ["methods.adaptsegnet.init_weights=null"])
                      ["methods"]["adaptsegnet"])
    assert _key(adversarial.stages(cfg)[-1]) == "adaptsegnet-train-29829b1f3d513f80"


def test_translation_options():
    plain = pp.stages(px.Config(translation="none", rounds=0))
    acfg = adaptsegnet_config(px.Config())
    assert [s.name for s in plain] == ["adaptsegnet.train"]
    assert _key(plain[-1]) == _key(adversarial.stages(acfg)[-1])  # = the adaptsegnet row's stage
    user = pp.stages(px.Config(translation="user_tree", translated_root="datasets/bdl_gta5", rounds=0))
    assert user[-1].params["source_root"] == "datasets/bdl_gta5" and not user[-1].upstream
    imported = pp.stages(px.Config(inter_weights="w/bdl.pth", rounds=1))
    assert imported[0].name == "pixintrada.import_inter" and imported[1].upstream["model"] is imported[0]
    assert _key(imported[1], 0) == _key(imported[1], 1)  # a fixed checkpoint: its thresholds do not depend on the seed
    with pytest.raises(ValueError, match="translated_root"):
        pp.stages(px.Config(translation="user_tree"))
    with pytest.raises(ValueError, match="translation"):
        pp.stages(px.Config(translation="cyclegan"))


def test_imported_inter_checkpoint_loads_as_a_trained_model(tmp_path):
    from bench.models import build_model
    from bench.stage_exec import StageContext, load_model
    from methods.pixintrada.inter import import_inter

    torch.manual_seed(3)
    released = build_model("small")
    torch.save(released.state_dict(), tmp_path / "bdl.pth")
    out = tmp_path / "stage"
    out.mkdir()
    import_inter({"weights": str(tmp_path / "bdl.pth"), "model": "small", "model_options": {}},
                 StageContext(out, 0, {}, {}))
    loaded = load_model(out)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), released.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="inter_weights"):
        import_inter({"weights": str(tmp_path / "none.pth"), "model": "small", "model_options": {}},
                     StageContext(out, 0, {}, {}))


@pytest.mark.parametrize("key,value", [("variant", "both"), ("intra_init", "coco"), ("kld_on", "hard"),
                                       ("threshold_scheme", "otsu"), ("rounds", 3), ("alpha", 1.5),
                                       ("intra_d_lr", 0.0), ("intra_d_channels", []), ("intra_d_channels", [8, 0])])
def test_bad_setting_names_its_key(key, value):
    with pytest.raises(ValueError, match=key):
        pp.stages(px.Config(**{key: value}))


def test_intra_d_lr_sets_stage_two_only_and_unset_keeps_every_key():
    base, same, fast = (pp.stages(px.Config(**o)) for o in ({}, {"intra_d_lr": 1e-4}, {"intra_d_lr": 1e-2}))
    assert [_key(s) for s in same] == [_key(s) for s in base]  # = d_lr: the default's keys stay
    assert [_key(s) for s in fast][:4] == [_key(s) for s in base][:4]  # Stage I and round 1's labels shared
    trains = [s for s in fast if s.name == "pixintrada.train"]
    assert [s.params["d_lr"] for s in trains] == [1e-2, 1e-2] and fast[1].params["d_lr"] == 1e-4
    assert _key(fast[4]) != _key(base[4])
    narrow = pp.stages(px.Config(intra_d_channels=(16, 32)))
    assert [_key(s) for s in narrow][:4] == [_key(s) for s in base][:4] and _key(narrow[4]) != _key(base[4])
    assert narrow[4].params["d_channels"] == [16, 32] and list(narrow[1].params["d_channels"]) == [64, 128, 256, 512]
    assert [_key(s) for s in pp.stages(px.Config(intra_d_channels=px.Config().d_channels))] == [_key(s) for s in base]


TABLE3 = {**TABLES["t3"].variants(), "": {}}  # Table 3's rows as the config declares them


def test_table3_variants_share_their_prefixes():
    finals = {v: pp.stages(px.Config(**o)) for v, o in TABLE3.items()}
    keys = {v: [_key(s) for s in st] for v, st in finals.items()}
    assert finals["inter"][-1].name == "adaptsegnet.train"
    assert keys["pla"][:4] == keys["cts"][:4] and keys["pla"][4] != keys["cts"][4]  # one label stage for both
    assert keys["t1"][:5] == keys["cts"] and keys[""][:7] == keys["t1"][:7] and keys[""][7] != keys["t1"][7]
    # α changes the labels but not the thresholds; α = 0 (Prop. = 1) is accepted
    a70, a0 = pp.stages(px.Config(alpha=0.7, rounds=1)), pp.stages(px.Config(alpha=0.0, rounds=1))
    assert _key(a70[2]) == keys["cts"][2] and _key(a70[3]) != keys["cts"][3] != _key(a0[3])


def test_ias_scheme_replaces_the_threshold_stage_and_keeps_stage_one():
    """Table 6: IAST's selector labels from G_inter directly (no t_k fit, no α); Stage I is the median run's."""
    median, ias_run = pp.stages(px.Config(rounds=1)), pp.stages(px.Config(rounds=1, threshold_scheme="ias"))
    assert [s.name for s in ias_run] == ["gpa.source", "adaptsegnet.train", "pixintrada.label", "pixintrada.train"]
    label = ias_run[2]
    assert label.upstream == {"model": ias_run[1]} and label.datasets == ("target_train",)
    assert label.params["scheme"] == "ias" and "alpha" in label.params and label.params["alpha"] == 0.2  # IAS α
    assert [_key(s) for s in ias_run[:2]] == [_key(s) for s in median[:2]]
    other = pp.stages(px.Config(rounds=1, threshold_scheme="ias", ias_gamma=4.0))
    assert _key(other[2]) != _key(label) and _key(pp.stages(px.Config(rounds=1, threshold_scheme="ias",
                                                                         alpha=0.7))[2]) == _key(label)


def test_intrada_shares_stage_one_with_pixintrada():
    values = {"model": "small", "model_options": {}, "inter_iters": 7, "d_channels": (8, 8, 8, 8)}
    pix = pp.stages(make_config(px.Config, values))
    intra = intrada.stages(make_config(intrada.Config, values))
    assert [s.name for s in intra] == ["gpa.source", "adaptsegnet.train", "intrada.rank", "intrada.train"]
    assert [_key(s) for s in intra[:2]] == [_key(s) for s in pix[:2]]
    assert intra[2].upstream == {"model": intra[1]}
    other = intrada.stages(make_config(intrada.Config, {**values, "inter_iters": 8}))
    assert _key(other[1]) != _key(pix[1])


# ------------------------------------------------------------------------------------------ data and losses
def test_index_codes_decode_to_z_and_padding():
    class Fake:
        def __init__(self, label):
            self.label = torch.tensor(label)

        def __len__(self):
            return 1

        def __getitem__(self, key):
            return {"image": torch.zeros(3, 1, 3), "label": self.label, "name": "a"}

    item = pp.PseudoWithIndex(Fake([[3, 255, 255]]), Fake([[0, 127, 255]]))[0]
    assert item["valid"].tolist() == [[True, True, False]]
    assert item["z"].tolist() == [[0.0, pytest.approx(0.5), 0.0]]
    hard = (item["label"] == 255) & item["valid"]
    assert hard.tolist() == [[False, True, False]]  # the padded pixel is not hard


def test_padding_costs_nothing_in_the_discriminator_losses():
    d = torch.zeros(1, 1, 1, 3)  # D = σ(0) = 0.5 everywhere
    hard = torch.tensor([[[True, False, False]]])
    valid = torch.tensor([[[True, True, False]]])
    # per pixel BCE = ln 2 on the two valid pixels, 0 on padding; 'mean' still ÷ N·H·W = 3
    assert px.pla_d_loss(d, hard, valid=valid).item() == pytest.approx(2 * 0.6931472 / 3, abs=1e-6)
    z = torch.tensor([[[0.5, 0.0, 0.0]]])
    assert px.cts_d_loss(d, z, valid=valid).item() == pytest.approx(0.25 / 3, abs=1e-7)  # (0.5−0)² at pixel 2 only
    # log_sum: the easy term sums pixel 2 only: −log(1−0.5) − log(0.5) = 2 ln 2
    assert px.pla_d_loss(d, hard, form="log_sum", valid=valid).item() == pytest.approx(2 * 0.6931472, abs=1e-6)
    with pytest.raises(ValueError, match="valid"):
        px.pla_d_loss(d, hard, valid=torch.ones(1, 2, 3, dtype=torch.bool))


class PixelNet(torch.nn.Module):
    """A per-pixel linear segmenter (2 classes) with the SegOutput fields the losses read."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)

    def forward(self, x):
        logits = self.conv(x)
        return type("Out", (), {"logits": logits, "aux": None})()


@pytest.mark.parametrize("variant", ["pla", "cts"])
def test_pixel_losses_compose_eq9_and_route_gradients(variant):
    torch.manual_seed(0)
    g, d = PixelNet(), torch.nn.Conv2d(2, 1, 1)
    x = torch.randn(1, 1, 2, 2)
    label = torch.tensor([[[0, 255], [1, 255]]])
    valid = torch.tensor([[[True, True], [True, False]]])
    batch = {"target_train": {"image": x, "label": label, "valid": valid,
                              "z": torch.tensor([[[0.0, 0.4], [0.0, 0.0]]])}}
    p = {"adv_reduction": "mean", "aux_weight": 0.0, "kld_weight": 0.5, "kld_on": "easy", "beta_main": 0.01,
         "beta_aux": 0.0, "variant": variant, "d_activation": "sigmoid", "pla_form": "pixel_bce"}
    out = pp.pixel_losses(g, {"main": d}, p)(batch, 0)
    probs = torch.softmax(g(x).logits, 1)
    hard = torch.tensor([[[False, True], [False, False]]])
    assert out["segmenter"]["ce"].item() == pytest.approx(px.partial_ce_loss(g(x).logits, label).item())
    if variant == "cts":
        g_adv, d_adv = px.cts_g_loss(d(probs), hard), px.cts_d_loss(d(probs), batch["target_train"]["z"], valid=valid)
    else:
        g_adv, d_adv = px.pla_g_loss(d(probs), hard), px.pla_d_loss(d(probs), hard, valid=valid)
    assert out["segmenter"]["adv_main"].item() == pytest.approx(0.01 * g_adv.item())
    assert out["discriminator"]["d_main"].item() == pytest.approx(d_adv.item())
    assert out["segmenter"]["kld"].item() == pytest.approx(0.5 * px.kld_regulariser(g(x).logits, label != 255).item())
    # gradient check: the generator's adversarial term moves G's output at the hard pixel only (the padded one
    # at (1, 1) and the easy ones get none), and D's term gives G nothing (it sees detached probabilities)
    x.requires_grad_(True)
    out = pp.pixel_losses(g, {"main": d}, p)(batch, 0)
    gx = torch.autograd.grad(out["segmenter"]["adv_main"], x, retain_graph=True)[0][0, 0]
    assert gx[0, 1] != 0 and gx[0, 0] == 0 and gx[1, 0] == 0 and gx[1, 1] == 0
    assert torch.autograd.grad(out["discriminator"]["d_main"], x, allow_unused=True)[0] is None


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    suite = tiny_minicity_suite(tmp, {"gta5": 4, "synthia": 2, "cityscapes_train": 6, "cityscapes_val": 2})
    shared = {"model": "small", "model_options": {}, "inter_iters": 2, "inter_horizon": None, "inter_batch_size": 2,
              "inter_lr": 0.01, "inter_aux_weight": 0.0, "d_channels": [8, 8, 8, 8], "iters": 2, "horizon": None,
              "batch_size": 2, "lr": 0.01, "aux_weight": 0.0, "train_size": [64, 32], "train_scale_range": [0.5, 1.0]}
    suite["methods"] = {"pixintrada": {**shared, "variants": {"ias": {"rounds": 1, "threshold_scheme": "ias"}}},
                        "intrada": {**shared, "easy_fraction": 0.5}}
    return write_suite(suite, tmp / "tiny.yaml"), tmp / "results"


@pytest.mark.slow
def test_pixintrada_and_intrada_run_on_tiny_minicity(tiny_suite):
    """Two rounds of PixIntraDA (CTS, KLD in round 2; random scale 0.5–1 pads the crops) and IntraDA, in-process."""
    from bench.suite_runner import run_suite

    path, results = tiny_suite
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's cores are shared: one thread avoids oversubscription stalls
    try:
        out = run_suite(str(path), results_root=results, executor="local")
    finally:
        torch.set_num_threads(threads)
    oc = list(out["outcomes"].values())
    assert {o.status for o in oc} == {"done"}
    names = sorted(o.name for o in oc)
    assert names == sorted(["gpa.source", "adaptsegnet.train", "intrada.rank", "intrada.train", "eval", "eval"]
                           + 2 * ["pixintrada.thresholds", "pixintrada.label", "pixintrada.train"]  # one Stage I
                           + ["pixintrada.label", "pixintrada.train", "eval"])  # the IAS variant (Table 6)
    labels = [o.result for o in oc if o.name == "pixintrada.label"]
    (ias_labels,) = [r for r in labels if "ias_final_thresholds" in r]
    assert len(ias_labels["ias_final_thresholds"]) == 19 and 0 <= ias_labels["prop"] <= 1
    labels.remove(ias_labels)
    assert all(r["alpha"] == 0.85 and 0 <= r["prop"] <= 1 and 0 <= r["pl_precision"] <= 1 for r in labels)
    assert all(r["pl_ratio"] == pytest.approx(r["prop"], abs=0.05) for r in labels)  # native ≈ split resolution
    (train,) = [o.result for o in oc if o.name == "intrada.train"]
    assert (train["easy_images"], train["hard_images"]) == (3, 3) and 0 <= train["pl_precision"] <= 1
    (rank,) = [o for o in oc if o.name == "intrada.rank"]
    ranking = json.loads((results / "cache" / rank.key / "ranking.json").read_text())
    assert all(0 < s <= n for s, n in zip(ranking["scored"], ranking["pixels"]))  # void pixels are not scored
    assert sum(ranking["hits"]) <= sum(ranking["scored"])
    assert all(o.result["iterations"] == 2 for o in oc if o.name == "pixintrada.train")
    assert {(r["method"], r["variant"]) for r in out["results"]} == {("pixintrada", ""), ("pixintrada", "ias"),
                                                                     ("intrada", "")}
