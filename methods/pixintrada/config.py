"""PixIntraDA's settings (and Stage I's, shared with the IntraDA baseline): every value with its source. PixIntraDA
released no code, so a value is the paper's, our reading of it (inferred), or a harness setting — never "code".
The equations are in ``methods.pixintrada.equations``, the stages in ``methods.pixintrada.stages``.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods import ias
from methods.base import PaperTable, Study, param
from methods.fields import field_group
from methods.training import ADAPTSEGNET, ADAPTSEGNET_NOTES, schedule

# Paper Tables 5 and 8: the α that gave the best PLA+CTS per source (Prop. 0.67 GTA5, 0.66 SYNTHIA).
ALPHA_BY_SOURCE = {"gta5": 0.85, "synthia": 0.79}
TRANSLATIONS = ("gpa", "none", "user_tree")


# Stage I adopts AdaptSegNet [32] (§5.3): its paper's optimiser; its code's length and batch, PixIntraDA being silent
InterSchedule = schedule("inter_", **ADAPTSEGNET, note="AdaptSegNet [32]",
                         sources=dict.fromkeys(("iters", "horizon", "batch_size"), "inferred"),
                         notes={**ADAPTSEGNET_NOTES, "lr": "AdaptSegNet [32] paper, adopted by reference (§5.3)"})
# Stage II (§5.3); the length is unstated
IntraSchedule = schedule(**{**ADAPTSEGNET, "iters": 120_000, "batch_size": 4, "lr": 2.4e-4}, note="§5.3",
                         sources=dict.fromkeys(("iters", "horizon"), "inferred"),
                         notes={"iters": "unstated; IntraDA/ADVENT stop at 120k",
                                "horizon": "poly horizon as AdaptSegNet/ADVENT (None = iters)"})


def intra_init_fields(source: str, where: str) -> type:
    """Where Stage II's model G starts (PixIntraDA's, and IntraDA's intra stage): ``intra_init`` imagenet — the
    file ``intra_init_weights``, None = init_weights — or inter (G_inter). ``where``: the source's own words."""
    return field_group({"init": str, "init_weights": str | None}, "intra_", init="imagenet", init_weights=None,
                       source=source, sources={"init_weights": "harness"}, notes={
                           "init": f"G's init: imagenet ({where}) | inter (G_inter)",
                           "init_weights": "G's init file for intra_init=imagenet; None = init_weights (ADVENT/IntraDA:"
                                           " DeepLab_resnet_pretrained_imagenet.pth)"})


@dataclass
class InterConfig(InterSchedule):
    """Stage I, the inter-domain model G_inter: AdaptSegNet [32] multi-level output-space adversarial training on a
    style-translated source (§5.3). PixIntraDA and IntraDA both read these fields, so equal values give one stage."""

    translation: str = param("gpa", "harness",
                             "gpa | none | user_tree. The paper trained on BDL's CycleGAN-translated GTA5 "
                             "(= user_tree); gpa = the harness's own offline translation (methods.gpa); none = the "
                             "plain source, i.e. the adaptsegnet row's stage")
    translated_root: str | None = param(None, "harness",
                                        "user_tree: a translated source tree in the suite source's layout (images and "
                                        "labels: link the original label folder in); its path, not its content, "
                                        "enters the cache key")
    inter_weights: str | None = param(None, "harness",
                                      "a ready G_inter checkpoint in the model's init format (the paper used BDL's "
                                      "released SYNTHIA model); None = train Stage I here")
    model: str = param("deeplabv2_r101", "paper", "DeepLab-v2 R101 for G_inter and G (§5.1)")
    model_options: dict = param({"bn_mode": "frozen_affine", "aux": True}, "inferred",
                                "AdaptSegNet's DeeplabMulti: affine-frozen BN, layer3 aux head (§5.1: aux classifier "
                                "as [26, 32])")
    init_weights: str | None = param(None, "harness", "local path to the ImageNet DeepLab init")
    inter_aux_weight: float = param(0.1, "paper", "λ_seg of the aux head, AdaptSegNet [32]")
    inter_adv_main: float = param(0.001, "paper", "λ_adv main, AdaptSegNet [32]")
    inter_adv_aux: float = param(0.0002, "paper", "λ_adv aux, AdaptSegNet [32]")
    d_lr: float = param(1e-4, "paper", "Adam, both stages (§5.3 and [32])")
    d_channels: tuple = param((64, 128, 256, 512), "paper", "AdaptSegNet's D, both stages (§5.1 follows [26, 32])")


@dataclass
class Config(InterConfig, IntraSchedule, intra_init_fields("inferred", "§5.1 backbone, as IntraDA"),
             ias.config_fields("inferred", "Table 6's IAS [24], as IAST's code: ")):
    # ---- Pixel-level split (Eq. 2–3)
    alpha: float | None = param(None, "paper", "None = ALPHA_BY_SOURCE by the suite's source: 0.85 GTA5, 0.79 SYNTHIA "
                                               "(Tables 5, 8); 0 = every pixel easy (the Prop. = 1 endpoint)")
    threshold_cap: float = param(0.9, "paper", "t_k = min(median, 0.9) (§4.1, BDL's rule)")
    threshold_scheme: str = param("median", "paper", "median (Eq. 2–3 with t_k) | ias (Table 6: IAST's per-image "
                                  "thresholds label the easy pixels; unselected pixels are hard)")
    threshold_bins: int = param(10_000, "inferred", "streaming median histogram: bin width 1e-4, error ≤ 5e-5")
    skip_unpredicted: bool = param(True, "inferred",
                                   "t_k = 0 (class never predicted) would make every pixel easy under Eq. 2; "
                                   "such a class is left out of Eq. 2–3")
    split_size: tuple | None = param(None, "inferred",
                                     "W×H at which G_inter's probabilities give t_k, M, Z; None = G_inter's input, the "
                                     "suite's target resize (1024×512 in the Cityscapes suites, as BDL)")
    # ---- Stage II: intra-domain model G on target images only (§4.2, §5.3)
    variant: str = param("cts", "paper", "pla (Eq. 6) | cts (Eq. 8, the final method)")
    pla_form: str = param("pixel_bce", "inferred",
                          "Eq. 6 prints −log of per-image pixel sums ('log_sum'); read as per-pixel BCE")
    d_activation: str = param("sigmoid", "inferred", "cts: D's output activation (Z ∈ [0,1]): sigmoid | none")
    adv_reduction: str = param("mean", "inferred",
                               "adversarial sums ÷ N·H·W ('mean', the scale of AdaptSegNet's λ) or ÷ N "
                               "('sum', literal)")
    d_betas: tuple = param((0.9, 0.99), "paper", "Stage II's Adam momenta (§5.3); Stage I: AdaptSegNet's, equal")
    intra_d_lr: float | None = param(None, "harness", "Stage II's D Adam lr; None = d_lr, the one lr §5.3 gives both "
                                     "stages (a small net's short rounds may need a faster D)")
    intra_d_channels: tuple | None = param(None, "harness",
                                           "Stage II's D widths; None = d_channels. Each width is one stride-2 conv "
                                           "(output stride 2^(len+1)): fewer let D place Z on small images")
    aux_weight: float = param(0.1, "paper", "λ_seg aux, 'same as [32]' (§5.3)")
    beta_main: float = param(0.001, "inferred", "β of Eq. 9, unstated; AdaptSegNet's λ_adv main")
    beta_aux: float = param(0.0002, "inferred", "β of the aux D; AdaptSegNet's λ_adv aux")
    train_size: tuple | None = param((1024, 512), "inferred",
                                     "W×H crop after the random scale (Cityscapes resized as [32]); None = no crop")
    train_scale_range: tuple | None = param((0.75, 1.25), "inferred",
                                            "'multi-scale training' (§5.3), range unstated; None = off. A scaled "
                                            "image smaller than the crop is padded; padding is neither easy nor hard")
    # ---- Rounds: T=0 and T=1 with CRST's KLD (§5.3, Table 3)
    rounds: int = param(2, "paper", "T=0 and T=1 (Table 3); 1 = T=0 only; 0 = no Stage II (INTER, the Prop. = 0 row)")
    round2_init: str = param("round1", "inferred", "round 2 starts from: round1 | imagenet | inter")
    round2_iters: int | None = param(None, "inferred", "round 2's iterations, unstated; None = iters")
    kld: bool = param(True, "paper", "KLD regulariser [52] in round 2 (Table 3 '+KLD')")
    kld_weight: float = param(0.1, "inferred", "unstated; CRST's mr_weight_kld (mrkld.sh)")
    kld_on: str = param("easy", "inferred", "pixels regularised: easy (CRST: pseudo-labelled) | all; main output only")
    # ---- Evaluation
    eval_protocol: str | None = param(None, "harness",
                                      "None = the suite's; paper: multi-scale testing (scales unstated); set ms to "
                                      "reproduce (the ms protocol's scales 0.5–1.5 with flip)")


def resolve_alpha(alpha: float | None, source: str) -> float:
    """α for a source domain: the override, else the paper's per-source value (Tables 5, 8)."""
    if alpha is not None:
        return float(alpha)
    if source not in ALPHA_BY_SOURCE:
        raise ValueError(f"source {source!r}: no paper α; valid: {sorted(ALPHA_BY_SOURCE)} or set Config.alpha")
    return ALPHA_BY_SOURCE[source]


# Ablation tables: our variant → (printed row, Config overrides); "intrada:" is the intrada method's base run.
_PLA, _CTS = {"rounds": 1, "variant": "pla"}, {"rounds": 1}
TABLES = {
    "t3": PaperTable("pixintrada", 3, {   # GTA5 → Cityscapes
        "inter": ("INTER", {"rounds": 0}), "pla": ("+PLA", _PLA), "cts": ("+CTS", _CTS),
        "t1": ("+T=1", {"kld": False}), "": ("+KLD", {}),
    }, base="inter", benchmark="gta5_cityscapes"),
    "t4": PaperTable("pixintrada", 4, {
        "inter": ("INTER", {"rounds": 0}), "intrada:": ("IntraDA", {}), "pla": ("PLA", _PLA),
        "cts": ("PLA + CTS", _CTS),
    }, base="inter", benchmark="gta5_cityscapes"),
    "t6": PaperTable("pixintrada", 6, {   # IAS [24] labels the easy pixels instead of α·t_k
        "inter": ("INTER", {"rounds": 0}), "pla_ias": ("PLA + IAS", {**_PLA, "threshold_scheme": "ias"}),
        "cts_ias": ("PLA + CTS + IAS", {**_CTS, "threshold_scheme": "ias"}),
    }, base="inter", benchmark="gta5_cityscapes"),
    "t7": PaperTable("pixintrada", 7, {   # SYNTHIA → Cityscapes; G_inter is BDL's model in the paper
        "inter": ("BDL", {"rounds": 0}), "pla": ("+ PLA", _PLA), "cts": ("+ CTS", _CTS),
        "t1": ("+ T=1", {"kld": False}), "": ("+ KLD", {}),
    }, base="inter", benchmark="synthia_cityscapes"),
}

STUDIES = {
    "pixintrada_alpha": Study("pixintrada", "alpha", (0.7, 0.85, 1.0), {"rounds": 1}, "pixintrada.label",
                              ("pixintrada", 5, "PLA + CTS", "alpha", "Prop.", 100.0),
                              "PixIntraDA Table 5 (PLA + CTS, one round as the table); ratio = the easy proportion "
                              "(Eq. 4); α = 0 is the Prop. = 1 end, INTER (rounds=0) the Prop. = 0 end. By Eq. 2–4 "
                              "Prop. falls as α rises; the paper's table pairs rising α with rising Prop. "
                              "(0.57/0.67/0.79), so its Prop. column beside ours is as printed", "prop",
                              {"synthia": ("pixintrada", 8, "PLA + CTS", "alpha", "Prop.", 100.0)}),
}
