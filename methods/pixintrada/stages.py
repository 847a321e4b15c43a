"""PixIntraDA's stages: Stage I (G_inter, ``methods.pixintrada.inter``) → per round: class thresholds t_k over
target train (fit) → easy/hard split and pseudo-labels (label) → G trained on target images only (train). Round 2
(T=1) re-splits with the round-1 model and adds CRST's KLD. The equations live in ``methods.pixintrada.equations``.

The label stage writes, per target image at the file's native resolution (so the training dataset resizes, scales,
crops and flips them exactly like a ground-truth label): ``labels/`` the Eq. 3 pseudo-labels (255 = hard, so the
hard mask M of Eq. 2 is ``label == 255``) and ``index/`` the continuous index Z of Eq. 7 coded as
round(254·Z) (255 only where a crop pads). Neither depends on the variant, so PLA and CTS share one label stage;
the thresholds do not depend on α, so the α sweep shares one fit stage. ``threshold_scheme: ias`` (Table 6)
replaces the fit stage and Eq. 2–3 by IAST's per-image selector (``methods.ias``): its labels are the easy pixels.
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np
import torch

from bench.data.labels import CLASS_NAMES, IGNORE, NUM_CLASSES
from methods import ias
from methods.adversarial import level_weights, output_space_discriminators, upsampled_softmax
from methods.base import Method, Paper, Stage
from methods.pixintrada import equations as px
from methods.pixintrada.config import STUDIES, TABLES, Config
from methods.pixintrada.inter import ground_truth_lookup, inter_stages, start_from, target_probabilities, to_native
from methods.training import Parts, schedule_params, stage_result, train_segmenter

VERSION = "1"
Z_SCALE, NO_INDEX = 254, 255  # Z ∈ [0, 1] stored as round(254·Z); 255 = crop padding (no pixel)
VARIANTS, INITS, KLD_ON = ("pla", "cts"), ("imagenet", "inter"), ("easy", "all")
SCHEMES, IAS_KEYS = ("median", "ias"), ("alpha", "beta", "gamma", "init", "cap")


# ------------------------------------------------------------------------------------------------ fit
def fit_thresholds(p: dict, ctx) -> dict:
    """Stage ``pixintrada.thresholds``: t_k (§4.1 below Eq. 2) of the upstream model over every target-train
    image, streamed through a :class:`~methods.pixintrada.equations.ThresholdAccumulator`."""
    model = ctx.load_model("model").to(ctx.device)
    acc = px.ThresholdAccumulator(NUM_CLASSES, p["bins"], p["cap"])
    ds = ctx.dataset("target_train", plain=True, labels=False)
    for _, probs, _ in target_probabilities(model, ds, ctx.device, p["split_size"]):
        acc.update(probs)
    t = acc.thresholds()
    torch.save(t, ctx.out_dir / "thresholds.pt")
    counts = acc.counts.sum(1)
    return {"classes_predicted": int((counts > 0).sum()),
            **{f"t_k/{name}": float(t[c]) for c, name in enumerate(CLASS_NAMES) if counts[c] > 0}}


# ---------------------------------------------------------------------------------------------- label
def label_split(p: dict, ctx) -> dict:
    """Stage ``pixintrada.label``: Eq. 2–3 (hard mask, pseudo-labels) and Eq. 7 (Z) for every target-train image
    with the upstream model and thresholds; Prop. (Eq. 4) and, where the target has labels, the precision of the
    easy pixels' labels — diagnostics, never fed back."""
    from PIL import Image

    from bench.pseudo import LabelStats, label_path, save_label

    ias_scheme = p.get("scheme") == "ias"
    if ias_scheme:
        alpha, selector = None, ias.IASSelector(NUM_CLASSES, *(p[k] for k in IAS_KEYS))
    else:
        alpha = px.resolve_alpha(p["alpha"], ctx.dataset_specs["source"]["name"])
        t = torch.load(ctx.inputs["thresholds"] / "thresholds.pt", weights_only=True)
    model = ctx.load_model("model").to(ctx.device)
    ds = ctx.dataset("target_train", plain=True, labels=False)
    gt = ground_truth_lookup(ctx, ds)
    stats, easy, total, z_sum = LabelStats(), 0, 0, 0.0
    (ctx.out_dir / "index").mkdir(parents=True, exist_ok=True)
    for i, probs, native in target_probabilities(model, ds, ctx.device, p["split_size"]):
        if ias_scheme:
            pseudo = selector(probs[0])[None]
            hard = pseudo == IGNORE
        else:
            hard, pseudo = px.split_easy_hard(probs, t.to(probs), alpha, skip_unpredicted=p["skip_unpredicted"])
        z = px.continuous_index(probs, hard)
        easy += int((~hard).sum())
        total += hard.numel()
        z_sum += float(z[hard].sum())
        label = to_native(pseudo[0].to(torch.uint8).cpu().numpy(), native)
        save_label(ctx.out_dir / "labels", i, label)
        code = torch.round(z[0] * Z_SCALE).to(torch.uint8).cpu().numpy()
        Image.fromarray(to_native(code, native)).save(label_path(ctx.out_dir / "index", i))
        stats.update(label, gt(i))
    hard_px = total - easy
    extra = {"ias_final_thresholds": selector.theta.tolist()} if ias_scheme else {"alpha": alpha}
    return {**extra, "prop": easy / total, "hard_z_mean": z_sum / hard_px if hard_px else 0.0,
            **stats.summary("pl_")}


# ---------------------------------------------------------------------------------------------- train
class PseudoWithIndex(torch.utils.data.Dataset):
    """Target images with their pseudo-labels and Z under one random transform: ``label`` (255 = hard or padding),
    ``z`` float in [0, 1] and ``valid`` (False on crop padding)."""

    def __init__(self, labels_ds, index_ds) -> None:
        self.a, self.b = labels_ds, index_ds

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, key):
        x, code = self.a[key], self.b[key]["label"]  # same key → same scale/crop/flip (seeded per item)
        valid = code != NO_INDEX
        z = torch.where(valid, code.float() / Z_SCALE, torch.zeros((), dtype=torch.float32))
        return {"image": x["image"], "label": x["label"], "z": z, "valid": valid, "name": x["name"]}


def pixel_losses(model, discriminators: dict, p: dict):
    """Eq. 9: G minimises Eq. 5 (easy pixels) + β·(Eq. 6 or Eq. 8, hard pixels) per output level, + the KLD in
    round 2; each D minimises its side of Eq. 6 / Eq. 8 on the detached, upsampled softmax."""
    red = p["adv_reduction"]

    def losses(batch, it):
        b = batch["target_train"]
        out = model(b["image"])
        pseudo, valid = b["label"], b["valid"]
        hard = (pseudo == IGNORE) & valid
        seg = {"ce": px.partial_ce_loss(out.logits, pseudo)}
        if out.aux is not None and p["aux_weight"] > 0:
            seg["ce_aux"] = p["aux_weight"] * px.partial_ce_loss(out.aux, pseudo)
        if p["kld_weight"] > 0:
            mask = (pseudo != IGNORE) if p["kld_on"] == "easy" else valid
            seg["kld"] = p["kld_weight"] * px.kld_regulariser(out.logits, mask)
        disc = {}
        size = b["image"].shape[-2:]
        for level, d in discriminators.items():
            prob = upsampled_softmax(out.logits if level == "main" else out.aux, size)
            beta = p["beta_main"] if level == "main" else p["beta_aux"]
            d_g, d_d = d(prob).float(), d(prob.detach()).float()
            if p["variant"] == "pla":
                seg[f"adv_{level}"] = beta * px.pla_g_loss(d_g, hard, p["pla_form"], red)
                disc[f"d_{level}"] = px.pla_d_loss(d_d, hard, p["pla_form"], red, valid)
            else:
                seg[f"adv_{level}"] = beta * px.cts_g_loss(d_g, hard, p["d_activation"], red)
                disc[f"d_{level}"] = px.cts_d_loss(d_d, b["z"], p["d_activation"], red, valid)
        return {"segmenter": seg, "discriminator": disc}

    return losses


def train_intra(p: dict, ctx) -> dict:
    """Stage ``pixintrada.train``: G (from the init weights or the upstream ``init`` model) and two discriminators
    on target images only, with the label stage's pseudo-labels and Z."""
    from bench.pseudo import with_pseudo_labels

    def parts(model):
        discs, modules, optimizers = output_space_discriminators(p, level_weights(p, "beta_main", "beta_aux"))
        aug = {"scale": p["train_scale_range"], "crop": p["train_size"]}
        target = ctx.dataset("target_train", labels=False, options={k: v for k, v in aug.items() if v})
        index = with_pseudo_labels(target, ctx.inputs["labels"] / "index")
        index._lut = np.arange(256, dtype=np.uint8)  # Z codes are not trainIds: read them unmapped
        data = {"target_train": PseudoWithIndex(with_pseudo_labels(target, ctx.inputs["labels"] / "labels"), index)}
        return Parts(pixel_losses(model, discs, p), data, modules, optimizers)

    return stage_result(train_segmenter(p, ctx, parts, {"target_train": p["batch_size"]}))


# --------------------------------------------------------------------------------------------- stages
def check(cfg: Config) -> None:
    """Settings the stages cannot run with fail here, naming the key, before anything trains."""
    choices = {"variant": VARIANTS, "intra_init": INITS, "round2_init": ("round1",) + INITS, "kld_on": KLD_ON,
               "pla_form": ("pixel_bce", "log_sum"), "d_activation": ("sigmoid", "none"),
               "adv_reduction": ("mean", "sum")}
    for key, valid in choices.items():
        if getattr(cfg, key) not in valid:
            raise ValueError(f"pixintrada: {key}={getattr(cfg, key)!r}; valid: {valid}")
    if cfg.threshold_scheme not in SCHEMES:
        raise ValueError(f"pixintrada: threshold_scheme={cfg.threshold_scheme!r}; valid: {SCHEMES}")
    if cfg.rounds not in (0, 1, 2):
        raise ValueError(f"pixintrada: rounds={cfg.rounds!r}; valid: 0 (INTER), 1 (T=0), 2 (T=0 and T=1)")
    if cfg.intra_d_lr is not None and not cfg.intra_d_lr > 0:
        raise ValueError(f"pixintrada: intra_d_lr={cfg.intra_d_lr!r}: expected a learning rate > 0, or null for d_lr")
    if cfg.intra_d_channels is not None and not (cfg.intra_d_channels and all(
            isinstance(c, int) and c > 0 for c in cfg.intra_d_channels)):
        raise ValueError(f"pixintrada: intra_d_channels={cfg.intra_d_channels!r}: expected a list of widths > 0, or "
                         "null for d_channels")
    if cfg.alpha is not None and not 0 <= cfg.alpha <= 1:
        raise ValueError(f"pixintrada: alpha={cfg.alpha!r} outside [0, 1]")


def _round(cfg: Config, model: Stage, inter: Stage, init: str, iters: int, kld_weight: float) -> list[Stage]:
    """One round of Stage II from ``model``'s predictions: [thresholds, label, train]."""
    split = list(cfg.split_size) if cfg.split_size else None
    if cfg.threshold_scheme == "ias":  # Table 6: IAST's per-image thresholds replace t_k and α
        fit = None
        rule = {"scheme": "ias", "split_size": split, **{k: getattr(cfg, f"ias_{k}") for k in IAS_KEYS}}
        domains, up = ("target_train",), {"model": model}
    else:
        fit = Stage("pixintrada.thresholds", "fit", fit_thresholds,
                    {"bins": cfg.threshold_bins, "cap": cfg.threshold_cap, "split_size": split},
                    upstream={"model": model}, datasets=("target_train",), version=VERSION, seeded=False)
        rule = {"alpha": cfg.alpha, "skip_unpredicted": cfg.skip_unpredicted, "split_size": split}
        # α = None is resolved from the suite's source at run time, so the source's spec enters the key then
        domains = ("target_train",) if cfg.alpha is not None else ("source", "target_train")
        up = {"model": model, "thresholds": fit}
    label = Stage("pixintrada.label", "label", label_split, rule, upstream=up, datasets=domains, version=VERSION,
                  seeded=False)
    train = {"variant": cfg.variant, "pla_form": cfg.pla_form, "d_activation": cfg.d_activation,
             "adv_reduction": cfg.adv_reduction, "d_betas": list(cfg.d_betas),
             "d_lr": cfg.d_lr if cfg.intra_d_lr is None else cfg.intra_d_lr,
             "d_channels": list(cfg.d_channels if cfg.intra_d_channels is None else cfg.intra_d_channels),
             **schedule_params(cfg), "iters": iters,
             "aux_weight": cfg.aux_weight, "beta_main": cfg.beta_main, "beta_aux": cfg.beta_aux,
             "train_size": list(cfg.train_size) if cfg.train_size else None,
             "train_scale_range": list(cfg.train_scale_range) if cfg.train_scale_range else None,
             "kld_weight": kld_weight, "kld_on": cfg.kld_on, "model_options": dict(cfg.model_options)}
    start, upstream = start_from(cfg, init, {"inter": inter, "round1": model})
    train.update(start)
    upstream = {"labels": label, **upstream}
    return [*([fit] if fit else []), label, Stage("pixintrada.train", "train", train_intra, train, upstream=upstream,
                              datasets=("target_train",), version=VERSION)]


def stages(cfg: Config) -> list[Stage]:
    """Stage I, then ``rounds`` rounds of Stage II; the last stage's model is evaluated (G_inter when rounds=0)."""
    check(cfg)
    out = inter_stages(cfg)
    inter = model = out[-1]
    for r in range(cfg.rounds):
        first = r == 0
        init = cfg.intra_init if first else cfg.round2_init
        iters = cfg.iters if first or cfg.round2_iters is None else cfg.round2_iters
        kld = 0.0 if first or not cfg.kld else float(cfg.kld_weight)
        out += _round(cfg, model, inter, init, iters, kld)
        model = out[-1]
    return out


METHOD = Method("pixintrada", Config, stages, paper=Paper("pixintrada", "PixIntraDA"), tables=TABLES,
                studies=STUDIES, eval_protocol=attrgetter("eval_protocol"))
