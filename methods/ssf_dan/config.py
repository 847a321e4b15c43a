"""SSF-DAN's settings with their provenance, and its Table 4 variants as data (``methods.ssf_dan.equations``
holds what they compute)."""

from __future__ import annotations

from dataclasses import dataclass

from methods.base import PaperTable, Study, param
from methods.training import ADAPTSEGNET, ADAPTSEGNET_NOTES, schedule


# ------------------------------------------------------------------------------------------------ variants
@dataclass(frozen=True)
class Variant:
    """What one Table 4 row switches on. ``classwise``: None | "soft" (Chen et al.'s soft maps on unseparated
    features) | "ssd" (separated features); ``rho``: "progressive" (Eq. 7) | "fixed" (ρ = ρ_upper throughout,
    Fig. 4) | "none" (no confidence filtering, ρ = 1)."""

    classwise: str | None
    global_align: bool
    rho: str
    car: bool


SWITCHES: dict[str, Variant] = {  # the `ablation` setting → what it switches on (Table 4, Fig. 4)
    "global": Variant(None, True, "none", False),
    "soft": Variant("soft", False, "none", False),
    "soft_global": Variant("soft", True, "none", False),
    "ssd_dagger": Variant("ssd", False, "none", False),  # SS-D†: SS-D without the progressive confidence
    "ssd_dagger_global": Variant("ssd", True, "none", False),
    "ssd": Variant("ssd", False, "progressive", False),
    "ssd_car": Variant("ssd", False, "progressive", True),  # the full method
    "fixed_rho": Variant("ssd", False, "fixed", False),  # Fig. 4: "our SS-D" with ρ fixed at ρ_upper
}

# Table 4 (results/paper/ssf_dan_t4_ablation.csv) in printed order: our variant → (printed row, overrides).
TABLES = {
    "t4": PaperTable("ssf_dan", 4, {
        # the paper's first row at SSF-DAN's own schedule: the harness's source_only row trains another one
        "delta0": ("without adaptation", {"delta": 0}),
        "global": ("global", {"ablation": "global"}),
        "soft": ('"soft" class-wise', {"ablation": "soft"}),
        "soft_global": ('"soft" class-wise + global', {"ablation": "soft_global"}),
        "ssd_dagger": ("SS-D†", {"ablation": "ssd_dagger"}),
        "ssd_dagger_global": ("SS-D† + global", {"ablation": "ssd_dagger_global"}),
        "ssd": ("SS-D", {"ablation": "ssd"}),
        "": ("SS-D + CA-R", {}),
    }, benchmark="gta5_cityscapes", baseline=("source_only", "without adaptation")),
}


# §4.2 states the optimiser (SGD, Nesterov, weight decay 1e-4); it is silent on the length and the batch: AdaptSegNet's
SSFSchedule = schedule(**{**ADAPTSEGNET, "weight_decay": 1e-4},
                       sources=dict.fromkeys(("iters", "horizon", "batch_size"), "inferred"),
                       notes={**ADAPTSEGNET_NOTES, "power": "poly decay"})


@dataclass
class Config(SSFSchedule):
    # segmenter (§3.5, §4.2)
    model: str = param("deeplabv2_r101", "paper", "DeepLab-v2 R101 (§3.5)")
    model_options: dict = param({"bn_mode": "frozen_affine", "aux": True}, "code",
                                "AdaptSegNet's DeeplabMulti layout: layer3 aux head (layer5), ASPP-v2 with all four "
                                "branches (6/12/18/24) summed. The released eval model has AdaptSegNet's 2-branch "
                                "bug; set aspp_two_branch: true to reproduce it")
    init_weights: str | None = param(None, "harness", "local DeepLab init; paper says ImageNet, AdaptSegNet used COCO")
    feature_name: str = param("layer4", "paper", "F = the last feature map (2048-d, stride 8); MiniCity: small net's")
    feature_channels: int = param(2048, "paper", "SS-D input channels = F's channels (MiniCity overrides)")
    nesterov: bool = param(True, "paper", "SGD with Nesterov acceleration")
    aux_weight: float = param(0.1, "inferred", "paper silent on layer5; AdaptSegNet trains it with 0.1·CE (0 = off)")
    crop: tuple | None = param(None, "inferred", "AdaptSegNet: whole images resized by the suite, no crop")
    # SS-D (§3.5) and its optimiser (§4.2)
    d_widths: tuple = param((1024, 512, 256, 128), "paper", "kernels 1,3,3,3,3; LeakyReLU 0.2; stride 1 'same' "
                            "padding inferred")
    d_negative_slope: float = param(0.2, "paper")
    d_lr: float = param(1e-4, "paper", "Adam")
    d_betas: tuple = param((0.9, 0.99), "inferred", "paper: 'momentum 0.9'; β2 from AdaptSegNet")
    d_power: float = param(0.9, "paper", "same poly as the segmenter")
    d_loss_scale: float = param(0.5, "inferred", "Eq. 5 summed over both domains ×½, as AdaptSegNet")
    d_fast: bool = param(True, "harness", "grouped-conv fast path (equal to the per-class loop)")
    # losses (Eq. 1, 4, 5)
    delta: float = param(0.001, "paper", "δ, adversarial weight; 0.0005 for Cross-City (suite override)")
    adv_reduction: str = param("mean", "inferred", "Eq. 4-5 are sums over cells; mean over all cells (weight-0 "
                               "cells included), like AdaptSegNet's BCE, so δ keeps its scale")
    adv_output: str = param("sum", "paper", "sum: class logits summed to one channel (text, Fig. 2); "
                            "per_class: Eq. 4's Σ_c of per-class BCE")
    source_masks: str = param("prediction", "paper", "M_s = one-hot of P_s (§3.3); 'gt' = source labels")
    pcs_on_source: bool = param(False, "inferred", "Eq. 8's filtering applied to the target only (notation "
                                "ambiguous); only with source_masks='prediction'")
    mode_ignore_votes: bool = param(True, "inferred", "filtered pixels count as a class in the mode downsampling, "
                                    "so a cell of mostly filtered pixels is dropped")
    # progressive confidence (Eq. 7-8) and CA-R (Eq. 9)
    rho_upper: float = param(0.8, "paper", "best in Fig. 4")
    rho_horizon: int | None = param(None, "inferred", "ε, 'the total iteration step' (None = iters)")
    car_missing_weight: float = param(1.0, "inferred", "R_s weight of a source class no kept target pixel "
                                      "has (τ undefined); 1 = unweighted")
    # Table 4 / Fig. 4
    ablation: str = param("ssd_car", "paper", f"Table 4 variant: {', '.join(SWITCHES)}")
    global_delta: float = param(0.001, "inferred", "weight of the global feature D term in the '+ global' rows")

    def __post_init__(self) -> None:
        choices = {"ablation": tuple(SWITCHES), "adv_reduction": ("mean", "sum"),
                   "adv_output": ("sum", "per_class"), "source_masks": ("prediction", "gt")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"ssf_dan.Config.{name}: {getattr(self, name)!r}; valid: {valid}")
        if not 0.0 <= self.rho_upper <= 1.0:
            raise ValueError(f"ssf_dan.Config.rho_upper: expected 0..1, got {self.rho_upper}")
        if self.pcs_on_source and self.source_masks == "gt":
            raise ValueError("ssf_dan.Config.pcs_on_source: confidence filtering needs source_masks='prediction'")


def variant(cfg: Config) -> Variant:
    """The components the config's ``ablation`` switches on."""
    return SWITCHES[cfg.ablation]


STUDIES = {
    "ssf_rho_upper": Study("ssf_dan", "rho_upper", (0.2, 0.4, 0.6, 0.8, 1.0), note="SSF-DAN Fig. 4 (progressive)"),
    "ssf_fixed_rho": Study("ssf_dan", "rho_upper", (0.2, 0.4, 0.6, 0.8, 1.0), {"ablation": "fixed_rho"},
                           note="SSF-DAN Fig. 4 (ρ fixed at the value throughout)"),
    "ssf_delta": Study("ssf_dan", "delta", (0.0002, 0.0005, 0.001, 0.002, 0.005), note="SSF-DAN's adversarial weight"),
}
