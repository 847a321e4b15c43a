"""Loading pretrained initialisations from local files (nothing is ever downloaded).

Formats (``fmt``):

- ``"caffe_deeplab"``: the Caffe-converted DeepLab-v2 ResNet-101 init used by AdaptSegNet
  (``DeepLab_resnet_pretrained_init-f81d91e8.pth``, ImageNet + MS-COCO) and ADVENT
  (``DeepLab_resnet_pretrained_imagenet.pth``, ImageNet only) → ``DeepLabV2``. Keys are prefixed ``Scale.``;
  the prefix is stripped and every classifier key (``layer5``/``layer6``; the file's ``layer5`` is a
  21-class COCO head) is skipped, so the heads keep their fresh init, as both codes do. These weights expect
  **BGR** input, 0–255, minus the Caffe mean ``(104.008, 116.669, 122.675)``, no std division
  (``normalize(..., "caffe")`` in ``bench.data.transforms``).
- ``"torchvision"``: a torchvision ``resnet101`` state dict (``resnet101-63fe2227.pth`` = IMAGENET1K_V1, or
  the legacy ``resnet101-5d3b4d8f.pth`` CAG-UDA/ProDA use) → ``DeepLabV3Plus.backbone``; ``fc.*`` skipped.
  Expects RGB with ImageNet mean/std.
- ``"native"``: a full state dict of the very model (this harness's checkpoints, or released DeeplabMulti
  checkpoints such as SSF-DAN's, which share the names); an optional ``module.`` prefix is stripped. A file
  that holds exactly the model's backbone keys (``bench.pretrain``'s output: MiniCity's stand-in for an
  ImageNet backbone) loads the backbone only; the heads keep their fresh init, as with the ImageNet formats.

The two ResNet layouts have identical key names and shapes but put the stride in different convs, so a file
of one layout loads "fine" into the other and silently gives a different network; the loader therefore
refuses Caffe-prefixed files as ``torchvision`` and unprefixed ones as ``caffe_deeplab``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.models.deeplab_v2 import DeepLabV2
from bench.models.deeplab_v3plus import DeepLabV3Plus

FORMATS = ("caffe_deeplab", "torchvision", "native")

WHERE_TO_GET = {
    "caffe_deeplab": (
        "Get DeepLab_resnet_pretrained_init-f81d91e8.pth (ImageNet+COCO; AdaptSegNet README, "
        "vllab.ucmerced.edu/ytsai/CVPR18/) or DeepLab_resnet_pretrained_imagenet.pth (ImageNet only; ADVENT "
        "GitHub releases) on a machine with internet access"
    ),
    "torchvision": (
        "Get torchvision's ResNet-101 ImageNet weights (download.pytorch.org/models/resnet101-63fe2227.pth, "
        "or the legacy resnet101-5d3b4d8f.pth) on a machine with internet access"
    ),
    "native": "Point to a checkpoint written by this harness (or a released checkpoint of the same model)",
}
_HEAD_PREFIXES = ("layer5.", "layer6.")
_SHOW = 10


@dataclass
class InitReport:
    """What ``load_init`` did: model keys set from the file, file keys skipped, model keys left as is."""

    path: str
    fmt: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    normalization: str = ""

    def __str__(self) -> str:
        return (f"{self.path} ({self.fmt}): loaded {len(self.loaded)} tensors, skipped {len(self.skipped)} "
                f"file keys, kept {len(self.kept)} model keys; input normalisation '{self.normalization}'")


def warn_random_init(name: str) -> None:
    """Warn that an R101 model starts from random weights, so its numbers cannot match the papers'."""
    warnings.warn(
        f"{name}: no init weights given, the backbone is randomly initialised; results will not match the "
        "papers, which start from ImageNet (or ImageNet+COCO) inits. Pass init_weights=PATH with a local "
        "file (see reference/datasets.md §7).",
        UserWarning,
        stacklevel=3,
    )


def load_init(model: nn.Module, path: str | os.PathLike, fmt: str) -> InitReport:
    """Load a local pretrained file into ``model`` in place and return an ``InitReport``.

    Raises ``FileNotFoundError`` (naming the path and where to obtain the file) when it does not exist and
    ``ValueError`` when the file's layout does not fit the model (unexpected/missing keys, shape mismatches,
    wrong format for the model). On error the model is left untouched.
    """
    if fmt not in FORMATS:
        raise ValueError(f"init format {fmt!r}; valid: {FORMATS}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"init weights {path!r} ({fmt}) not found. {WHERE_TO_GET[fmt]}, copy it here and pass its local "
            "path; nothing is downloaded."
        )
    state = _read_state_dict(path)
    fresh: list[str] = []
    if fmt == "caffe_deeplab":
        mapped, skipped = _map_caffe(model, state, path)
        required = _backbone_keys(model)
    elif fmt == "torchvision":
        mapped, skipped = _map_torchvision(model, state, path)
        required = _backbone_keys(model)
    else:
        mapped, skipped = {_strip(k, "module."): v for k, v in state.items()}, []
        required = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
        if hasattr(model, "backbone_modules"):
            # A file of whole top-level modules holding the backbone (a backbone-only ImageNet stand-in, or one
            # with its head layers too): the modules it lacks keep their fresh init; a module it holds in part
            # is a layout error.
            given = {k.split(".", 1)[0] for k in mapped}
            required = sorted(set(_backbone_keys(model)) | {k for k in required if k.split(".", 1)[0] in given})
            back = {n for n, m in model.named_children() if any(m is b for b in model.backbone_modules())}
            if given - back:  # some head layers from the file: say which others stay fresh (after the check)
                fresh = sorted(n for n, m in model.named_children()
                               if n not in given and any(True for _ in m.parameters()))
    _check_layout(model, mapped, required, path, fmt)
    if fresh:
        warnings.warn(f"{path}: {fresh} not in the file, kept at their fresh init", UserWarning, stacklevel=3)
    merged = model.state_dict()
    merged.update(mapped)
    model.load_state_dict(merged, strict=True)
    kept = sorted(set(model.state_dict()) - set(mapped))
    norm = {"caffe_deeplab": "caffe", "torchvision": "imagenet"}.get(fmt, getattr(model, "normalization", ""))
    return InitReport(path, fmt, sorted(mapped), sorted(skipped), kept, norm)


def load_backbone(model: nn.Module, path: str | os.PathLike) -> InitReport:
    """Load only the backbone modules' weights of a native file into ``model`` (whose head may be built
    otherwise than the file's, e.g. with BN where the file's has GroupNorm); errors as ``load_init``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"init weights {path!r} not found; pass the local file the suite made or names")
    backbone = _backbone_keys(model)
    prefixes = tuple({k.split(".", 1)[0] + "." for k in backbone})
    mapped = {k: v for k, v in ((_strip(k, "module."), v) for k, v in _read_state_dict(path).items())
              if k.startswith(prefixes)}
    _check_layout(model, mapped, backbone, path, "native")
    model.load_state_dict({**model.state_dict(), **mapped}, strict=True)
    kept = sorted(set(model.state_dict()) - set(mapped))
    return InitReport(path, "native", sorted(mapped), [], kept, getattr(model, "normalization", ""))


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors: say which file, keep the cause
        raise ValueError(f"{path}: cannot be read as a PyTorch state dict ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model", "model_state"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict (name → tensor), got {type(obj).__name__}")
    return obj


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def _require(model: nn.Module, cls: type, fmt: str, path: str) -> None:
    if not isinstance(model, cls):
        raise ValueError(f"{path}: format {fmt!r} is an init for {cls.__name__}, not {type(model).__name__}")


def _map_caffe(model: nn.Module, state: dict, path: str) -> tuple[dict, list[str]]:
    _require(model, DeepLabV2, "caffe_deeplab", path)
    unprefixed = [k for k in state if not k.startswith("Scale.")]
    if unprefixed:
        hint = ""
        if "fc.weight" in state:
            hint = " ('fc.weight' suggests a torchvision ResNet: use fmt='torchvision')"
        raise ValueError(
            f"{path}: not a Caffe-converted DeepLab init: {len(unprefixed)} keys lack the 'Scale.' prefix, "
            f"e.g. {unprefixed[:3]}{hint}"
        )
    mapped, skipped = {}, []
    for k, v in state.items():
        name = k.split(".", 1)[1]
        if name.startswith(_HEAD_PREFIXES):  # the COCO classifier; heads keep their fresh init
            skipped.append(k)
        else:
            mapped[name] = v
    return mapped, skipped


def _map_torchvision(model: nn.Module, state: dict, path: str) -> tuple[dict, list[str]]:
    _require(model, DeepLabV3Plus, "torchvision", path)
    if any(k.startswith("Scale.") for k in state):
        raise ValueError(
            f"{path}: keys are prefixed 'Scale.', a Caffe DeepLab init (stride on the 1×1 conv); it does "
            "not fit the torchvision layout: use fmt='caffe_deeplab' with deeplabv2_r101"
        )
    mapped, skipped = {}, []
    for k, v in state.items():
        name = _strip(k, "module.")
        if name.startswith("fc."):
            skipped.append(k)
        else:
            mapped["backbone." + name] = v
    return mapped, skipped


def _backbone_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the model's backbone modules (what an ImageNet init must supply)."""
    names = {id(m): n for n, m in model.named_modules()}
    prefixes = tuple(names[id(m)] + "." for m in model.backbone_modules())
    return [k for k in model.state_dict() if k.startswith(prefixes) and not k.endswith("num_batches_tracked")]


def _check_layout(model: nn.Module, mapped: dict, required: list[str], path: str, fmt: str) -> None:
    target = model.state_dict()
    unexpected = sorted(k for k in mapped if k not in target)
    missing = sorted(k for k in required if k not in mapped)
    shapes = sorted(
        f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)}"
        for k in mapped
        if k in target and mapped[k].shape != target[k].shape
    )
    found = (("unexpected keys", unexpected), ("missing keys", missing), ("shape mismatches", shapes))
    problems = [(label, items) for label, items in found if items]
    if problems:
        lines = [f"  {len(items)} {label}: {items[:_SHOW]}{' ...' if len(items) > _SHOW else ''}"
                 for label, items in problems]
        raise ValueError(f"{path}: layout does not match {type(model).__name__} for format {fmt!r}:\n"
                         + "\n".join(lines))
