"""BiSMAP's source transferability map (STM, §3.4, Eq. 7–9) as a fit stage, and the dataset that hands each
source crop its weights. Equations live in ``methods.bismap.equations``.

As the code (``source_transferability_map.py``): every image is resized to 256×128, an encoder Ê maps it to
a feature grid avg-pooled to 4×4 cells; K-means (J = 40) on target cells gives the prototypes A_j; a source
cell's D is its distance to the nearest prototype (Eq. 7); the per-pixel weight (Eq. 9) uses the cell's D
(nearest-upsampled to the image) and the pixel's GT class entropy e'_c (Eq. 8), and is stored as an 8-bit PNG
(round(255·w)) that the train stages read under the same geometric transform as the label.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.data.transforms import normalize, resize_label
from bench.stage_cache import RESULT
from methods.bismap import equations as bm
from methods.bismap.labels import source_tree

WEIGHT_DIR = "weights"
_IDENTITY_LUT = np.arange(256, dtype=np.uint8)


def _imagenet_r101(path: str, device):
    """torchvision's ResNet-101 from a local ImageNet state dict, up to layer4 (stride 32), on ``device``."""
    import torchvision

    from bench.paths import resolve_root

    net = torchvision.models.resnet101(weights=None)
    state = torch.load(resolve_root(path), map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if [k for k in missing if not k.startswith("fc.")] or unexpected:
        raise ValueError(f"stm_encoder_weights {path}: not a torchvision ResNet-101 state dict (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]})")
    return torch.nn.Sequential(*list(net.children())[:-2]).to(device).eval()


def stm_encoder(p: dict, ctx):
    """(features fn: normalised [N,3,H,W] → [N,D,h,w], its input normalisation, name): the first of
    ``p["encoders"]`` available here. SimCLRv2 R152 has no loader (its selective-kernel checkpoint is not a
    torchvision layout); "imagenet_r101" needs ``stm_encoder_weights``; "backbone" (the suite's model built from
    ``stm_encoder_weights``, e.g. MiniCity's generic pretraining: its layer4) too; "warmup" (the warm-up model's
    layer4, the suite's normalisation) always is."""
    for name in p["encoders"]:
        if name == "imagenet_r101" and p["encoder_weights"]:
            return _imagenet_r101(p["encoder_weights"], ctx.device), "imagenet", name
        if name == "backbone" and p["encoder_weights"]:  # the suite's own model, pretrained off both domains
            from bench.models import build_model
            from bench.models.weights import load_backbone
            from bench.paths import resolve_root

            model = build_model(p["model"])  # only its backbone is read, so the file's head layout is no matter
            load_backbone(model, resolve_root(p["encoder_weights"]))
            model = model.to(ctx.device).eval()
            norm = ctx.dataset("source", plain=True).transform.normalize
            return (lambda x, net=model: net(x).features["layer4"]), norm, name
        if name == "warmup":
            model = ctx.load_model("warmup").to(ctx.device).eval()
            norm = ctx.dataset("source", plain=True).transform.normalize
            return (lambda x, net=model: net(x).features["layer4"]), norm, name
    raise ValueError(f"stm_encoders {p['encoders']}: none available (simclrv2_r152 cannot be loaded; "
                     "imagenet_r101 needs stm_encoder_weights; add 'warmup')")


@torch.no_grad()
def _cells(encode, norm: str, image: np.ndarray, p: dict, device) -> torch.Tensor:
    """One image's [gh, gw, D] cell features: resized to ``input_size`` (bilinear), encoded, avg-pooled."""
    small = np.asarray(Image.fromarray(image).resize(tuple(p["input_size"]), Image.BILINEAR))
    f = encode(normalize(small, norm)[None].to(device)).float()
    return F.adaptive_avg_pool2d(f, tuple(p["grid"]))[0].permute(1, 2, 0).cpu()


@torch.no_grad()
def build_stm(p: dict, ctx) -> dict:
    """Stage ``bismap.stm``: target prototypes (K-means on target cells), d_mean over the source cells
    (dataset mean, or the code's EMA 0.99 in file order), e_c (the warm-up model's mean entropy per
    pseudo-labelled target class, or the code's constants), and one weight PNG per source image (Eq. 9)."""
    from sklearn.cluster import KMeans

    encode, norm, name = stm_encoder(p, ctx)
    src = ctx.dataset("source", plain=True, root=source_tree(ctx))
    tgt = ctx.dataset("target_train", plain=True, labels=False)
    dev = ctx.device
    cells = torch.cat([_cells(encode, norm, tgt.raw(i)[0], p, dev).flatten(0, 1) for i in range(len(tgt))])
    if cells.shape[0] < p["clusters"]:
        raise ValueError(f"stm_clusters: {p['clusters']} clusters but only {cells.shape[0]} target cells")
    if cells.shape[0] > p["kmeans_samples"]:
        pick = np.random.default_rng(p["kmeans_seed"]).choice(cells.shape[0], p["kmeans_samples"], replace=False)
        cells = cells[torch.from_numpy(np.sort(pick))]
    km = KMeans(p["clusters"], n_init=1, random_state=p["kmeans_seed"]).fit(cells.double().numpy())
    protos = torch.from_numpy(km.cluster_centers_).float()
    dist = []
    for i in range(len(src)):
        c = _cells(encode, norm, src.raw(i)[0], p, dev)
        dist.append(bm.prototype_distance(c.flatten(0, 1), protos).reshape(c.shape[:2]))
    if p["d_mean"] == "dataset":
        d_mean = float(torch.stack(dist).double().mean())
    else:  # the code: an EMA 0.99 of per-image means, started at the first image
        d_mean = float(dist[0].double().mean())
        for d in dist[1:]:
            d_mean = 0.99 * d_mean + 0.01 * float(d.double().mean())
    entropy = _class_entropy(p, ctx)
    out = ctx.out_dir / WEIGHT_DIR
    out.mkdir(parents=True, exist_ok=True)
    total = count = 0.0
    for i, d in enumerate(dist):
        image, label = src.raw(i)
        if label.shape != image.shape[:2]:
            label = resize_label(label, (image.shape[1], image.shape[0]))
        d_full = F.interpolate(d[None, None], size=label.shape, mode="nearest")[0, 0]
        lab = torch.from_numpy(label.astype(np.int64))
        w = bm.source_transferability(d_full, d_mean, entropy, lab)
        Image.fromarray((w * 255).round().to(torch.uint8).numpy()).save(out / f"{i:06d}.png")
        valid = lab != 255
        total += float(w[valid].sum())
        count += float(valid.sum())
    torch.save({"prototypes": protos, "d_mean": d_mean, "class_entropy": entropy}, ctx.out_dir / "stm.pt")
    return {"stm_encoder": name, "stm_d_mean": d_mean, "stm_weight_mean": total / max(count, 1.0),
            "stm_target_cells": int(cells.shape[0]),
            "stm_class_entropy_norm": bm.normalised_class_entropy(entropy).tolist()}


def no_label_hint(label_dir) -> str:
    """Why a MAPs label stage labelled nothing and what to set, from its recorded threshold and score quantiles
    (``label_target``); a generic hint for a stage cached before the quantiles were recorded."""
    fix = ("δ is in the log-density units of the network's own features (the paper's δ = 0–100 fit DeepLab-v2 "
           "on GTA5/SYNTHIA): set methods.bismap.delta_override in those units (a study: `bench sweep "
           "bismap_delta SUITE delta_override=a,b,c`), or choose δ by label share with methods.bismap.pl_ratio_target "
           "(study `bismap_ratio`)")
    try:
        result = json.loads((Path(label_dir) / RESULT).read_text())
    except (OSError, ValueError):
        return fix
    q = {k: result.get(f"pl_score_q{k}") for k in (0, 5, 50, 95, 100)}
    delta = result.get("threshold")
    if delta is None or None in q.values():
        return fix
    return (f"δ = {delta:g}, while the target pixels' max log-density lies in [{q[0]:.2f}, {q[100]:.2f}] "
            f"(5 / 50 / 95 %: {q[5]:.2f} / {q[50]:.2f} / {q[95]:.2f}); {fix}")


def _class_entropy(p: dict, ctx) -> torch.Tensor:
    if p["entropy"] == "pseudo_labels":
        e = torch.load(ctx.inputs["labels"] / "class_entropy.pt", weights_only=True).double()
        if not torch.isfinite(e).any():
            raise ValueError("stm_entropy 'pseudo_labels': the MAPs label stage labelled no target pixel, so e_c is "
                             f"undefined: {no_label_hint(ctx.inputs['labels'])}")
        return e
    source = ctx.dataset_specs["source"]["name"]
    table = {"gta5": p["entropy_gta5_code"], "synthia": p["entropy_synthia_code"]}
    if source not in table:
        raise ValueError(f"stm_entropy 'code': no constants for source {source!r}; valid: {sorted(table)}")
    return torch.tensor(table[source], dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- train
def with_weights(dataset, weight_dir):
    """A copy of ``dataset`` whose "label" is the STM PNG (0–255, read unmapped) of each image."""
    out = type(dataset).__new__(type(dataset))
    out.__dict__.update(dataset.__dict__)
    out.samples = [dataclasses.replace(s, label=weight_dir / f"{i:06d}.png") for i, s in enumerate(dataset.samples)]
    out._read_label, out._lut = (lambda path: np.asarray(Image.open(path))), _IDENTITY_LUT
    return out


class Weighted(torch.utils.data.Dataset):
    """Source items with their STM weight map under the same random transform (same key → same crop/flip)."""

    def __init__(self, dataset, weight_dir) -> None:
        self.ds, self.w = dataset, with_weights(dataset, weight_dir)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key):
        item = self.ds[key]
        return {**item, "weight": self.w[key]["label"].float() / 255.0}
