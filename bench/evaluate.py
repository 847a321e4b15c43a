"""Evaluate a segmenter on a labelled dataset under a named protocol: one confusion matrix, named results, and
one confusion matrix per image (for ``bench.stats``' paired bootstrap)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from bench.data.labels import NUM_CLASSES
from bench.metrics import PER_IMAGE_FILE, ConfusionMatrix, EvaluationError, class_argmax, save_per_image
from bench.protocols import get_protocol


def label_classes(dataset) -> int:
    """How many classes ``dataset``'s labels index: its ``num_classes``, else the 19 Cityscapes train classes (every
    loader of ``bench.data`` maps its labels to those trainIds; SYNTHIA's 16 and 13 are subsets of them)."""
    return int(getattr(dataset, "num_classes", NUM_CLASSES))


def _check_classes(logits: torch.Tensor, num_classes: int) -> None:
    """A network with another number of outputs would predict ids of another label space: stop, do not score."""
    if logits.shape[1] != num_classes:
        raise EvaluationError(f"the network predicts {logits.shape[1]} classes; the labels have {num_classes}")


@torch.no_grad()
def evaluate(model, dataset, protocol: str = "B", subsets=("19",), device="cpu", batch_size: int = 1,
             num_workers: int = 0, amp_dtype=None, progress=None, per_image: bool = True, **settings) -> dict:
    """Run ``model`` over every item of ``dataset`` (native resolution) and return ``ConfusionMatrix.summary``,
    plus ``confusion`` (``[C, C]``), ``confusion_per_image`` (``[N, C, C]``) and ``image_names`` (arrays, not
    metrics: a caller stores them; ``per_image=False`` leaves the last two out).

    The matrix spans the dataset's classes (``label_classes``); ``subsets`` name classes of it. Batching is only
    possible when all items share one size. ``progress(done, total)`` is optional.
    """
    predict = get_protocol(protocol, **settings)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(label_classes(dataset), device=device, per_image=per_image)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    done = 0
    try:
        for batch in loader:
            x = batch["image"].to(device)
            label = batch["label"].to(device)
            with torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype,
                                enabled=amp_dtype is not None):
                logits = predict(model, x, tuple(label.shape[-2:]))
            _check_classes(logits, cm.num_classes)
            cm.update(class_argmax(logits), label, name=list(batch["name"]))
            done += x.shape[0]
            if progress:
                progress(done, len(dataset))
    finally:
        model.train(was_training)
    out = cm.summary(subsets)
    out["protocol"] = protocol
    out["confusion"] = cm.numpy()
    if per_image:
        out["confusion_per_image"], out["image_names"] = cm.per_image(), cm.names
    return out


QUALITATIVE_IMAGES = 3  # the first N target-val images (sorted file order) get saved predictions


def run_eval(p: dict, ctx) -> dict:
    """Stage ``eval``: the upstream model's final iterate on the suite's ``target_val`` under protocol
    ``p["protocol"]``; saves the confusion matrix, one per image (``confusion_per_image.npz``, for the paired
    bootstrap of ``bench.stats``) and the predictions of the first few val images."""
    import numpy as np
    from PIL import Image

    from bench.protocols import get_protocol
    from bench.train import resolve_amp

    model = ctx.load_model("model").to(ctx.device)
    ds = ctx.dataset(p.get("domain", "target_val"))
    settings = dict(p.get("settings") or {})
    amp = resolve_amp(ctx.train.get("amp", "auto"), ctx.device)
    out = evaluate(model, ds, protocol=p["protocol"], subsets=tuple(p["subsets"]), device=ctx.device,
                   amp_dtype=amp, **settings)
    np.save(ctx.out_dir / "confusion.npy", out.pop("confusion"))
    save_per_image(ctx.out_dir / PER_IMAGE_FILE, out.pop("confusion_per_image"), out.pop("image_names"))
    predict = get_protocol(p["protocol"], **settings)
    qual = ctx.out_dir / "qualitative"
    qual.mkdir(exist_ok=True)
    model.eval()
    with torch.no_grad():
        for i in range(min(QUALITATIVE_IMAGES, len(ds))):
            item = ds[i]
            x = item["image"][None].to(ctx.device)
            pred = class_argmax(predict(model, x, tuple(item["label"].shape[-2:])))[0].to(torch.uint8).cpu().numpy()
            Image.fromarray(pred).save(qual / f"{i:02d}.png")
    out["images"] = len(ds)
    return out


def eval_stage(model_stage, evaluation: dict, domain: str = "target_val"):
    """The harness's evaluation stage for a method's final model (shared by every experiment that ends in
    the same model and protocol). ``domain``: another labelled split to score on (e.g. a sweep's held-out part
    of target train, for a selection that never sees target val)."""
    from methods.base import Stage

    ev = dict(evaluation)
    params = {"protocol": ev.pop("protocol", "B"), "subsets": list(ev.pop("subsets", ["19"])), "settings": ev}
    if domain != "target_val":  # only then: the usual eval keeps its key
        params["domain"] = domain
    return Stage("eval", "eval", run_eval, params, upstream={"model": model_stage}, datasets=(domain,),
                 version="1", gpu=model_stage.gpu)


def eval_elsewhere(planned_eval, domain: str):
    """The evaluation ``planned_eval`` (a planned eval stage) makes — same model, protocol, subsets and settings —
    on another labelled ``domain``, e.g. a sweep's held-out part of target train."""
    p = planned_eval.stage.params
    evaluation = {"protocol": p["protocol"], "subsets": list(p["subsets"]), **p["settings"]}
    return eval_stage(planned_eval.stage.upstream["model"], evaluation, domain)
