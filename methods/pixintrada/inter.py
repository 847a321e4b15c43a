"""Stage I of PixIntraDA and of the IntraDA baseline: the inter-domain model G_inter, and the helpers both methods'
later stages use to read it over the target set.

G_inter is AdaptSegNet's multi-level output-space adversarial training (``methods.adversarial``) on a translated
source: the GPA stage's mirror of the source tree (default), a user tree (the paper: BDL's CycleGAN GTA5), the
plain source, or a ready checkpoint imported as is (the paper's SYNTHIA model, BDL's). Both methods build the stage
from the same ``InterConfig`` fields, so equal settings give the same stage and one cache entry.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch

from methods import adversarial
from methods.base import Stage, make_config
from methods.pixintrada.config import TRANSLATIONS, InterConfig
from methods.training import schedule_params

VERSION = "1"


def adaptsegnet_config(cfg: InterConfig) -> adversarial.Config:
    """Stage I's AdaptSegNet settings from the ``inter_*`` fields (vanilla GAN, as AdaptSegNet's paper)."""
    return make_config(adversarial.Config, {
        "model": cfg.model, "model_options": dict(cfg.model_options), "init_weights": cfg.init_weights,
        **schedule_params(cfg, "inter_"), "aux_weight": cfg.inter_aux_weight, "lambda_adv_main": cfg.inter_adv_main,
        "lambda_adv_aux": cfg.inter_adv_aux, "d_lr": cfg.d_lr, "d_channels": tuple(cfg.d_channels), "gan": "vanilla"})


def import_inter(p: dict, ctx) -> dict:
    """Stage ``pixintrada.import_inter``: a ready G_inter checkpoint (a full state dict of the model, ``native``
    format) stored as a train stage's output, so later stages load it like any trained model."""
    from bench.models import build_model
    from bench.paths import resolve_root
    from bench.train import MODEL_FILE

    path = resolve_root(p["weights"])
    if not path.is_file():
        raise FileNotFoundError(f"inter_weights {p['weights']!r}: {path} is not a file")
    model = build_model(p["model"], init_weights=path, init_format="native", **p["model_options"])
    torch.save({"segmenter": model.state_dict()}, ctx.out_dir / MODEL_FILE)
    ctx.save_model_spec("segmenter", p["model"], dict(p["model_options"]))
    return {"imported": str(p["weights"])}


def inter_stages(cfg: InterConfig) -> list[Stage]:
    """Stage I as stages, the model stage last: [GPA source,] AdaptSegNet — or the imported checkpoint."""
    if cfg.inter_weights:
        params = {"weights": str(cfg.inter_weights), "model": cfg.model, "model_options": dict(cfg.model_options)}
        return [Stage("pixintrada.import_inter", "data", import_inter, params, version=VERSION, seeded=False,
                      gpu=0.0)]
    if cfg.translation not in TRANSLATIONS:
        raise ValueError(f"translation={cfg.translation!r}; valid: {TRANSLATIONS}")
    acfg = adaptsegnet_config(cfg)
    if cfg.translation == "gpa":
        from methods.gpa import gpa_stage

        tree = gpa_stage()
        return [tree, adversarial.train_stage(acfg, source_tree=tree)]
    if cfg.translation == "user_tree":
        if not cfg.translated_root:
            raise ValueError("translation='user_tree' needs translated_root (a translated source tree)")
        return [adversarial.train_stage(acfg, source_root=cfg.translated_root)]
    return [adversarial.train_stage(acfg)]


def start_from(cfg, init: str, models: dict) -> tuple[dict, dict]:
    """How a Stage II train stage starts G, as (params, upstream): from the model and init file for "imagenet"
    (``intra_init_weights``, None = ``init_weights``), else from the upstream ``init`` stage ``models[init]``."""
    if init == "imagenet":
        return {"model": cfg.model, "init_weights": cfg.intra_init_weights or cfg.init_weights}, {}
    return {}, {"init": models[init]}


# ------------------------------------------------------------------------------------------ reading G_inter
@torch.no_grad()
def target_probabilities(model, dataset, device, split_size=None) -> Iterator[tuple[int, torch.Tensor, tuple]]:
    """``(index, probs [1, C, h, w], native (H, W))`` for every image of ``dataset`` (plain: no augmentation), the
    model in eval mode: softmax of the logits bilinearly upsampled to ``split_size`` (W×H), or to the model's input
    size when None (§5.1: G's output is upsampled to the input before the softmax)."""
    from PIL import Image

    from bench.pseudo import upsample

    model.eval()
    for i in range(len(dataset)):
        x = dataset[i]["image"][None].to(device)
        size = tuple(x.shape[-2:]) if split_size is None else (int(split_size[1]), int(split_size[0]))
        probs = torch.softmax(upsample(model(x).logits.float(), size), 1)
        yield i, probs, Image.open(dataset.samples[i].image).size[::-1]


def to_native(arr, native: tuple):
    """A uint8 map ``[h, w]`` resized (nearest, as the datasets resize labels) to the image file's (H, W)."""
    from bench.data.transforms import resize_label

    return resize_label(arr, (native[1], native[0]))


def ground_truth_lookup(ctx, dataset):
    """``index -> trainId label [H, W] or None``: target-train ground truth where the suite has it, for the
    pseudo-label precision diagnostics only."""
    gt = ctx.ground_truth("target_train")
    by_name = {s.name: i for i, s in enumerate(gt.samples)} if gt is not None else {}

    def lookup(i: int):
        j = by_name.get(dataset.samples[i].name)
        return gt.raw(j)[1] if j is not None else None

    return lookup


def subset(dataset, indices):
    """A copy of ``dataset`` (same transform, seed and label source) over the samples at ``indices``."""
    out = copy.copy(dataset)
    out.samples = [dataset.samples[i] for i in indices]
    return out
