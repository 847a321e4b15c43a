"""Evaluate a segmenter on a labelled dataset under a named protocol: one confusion matrix, named results."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from bench.metrics import ConfusionMatrix
from bench.protocols import get_protocol


@torch.no_grad()
def evaluate(model, dataset, protocol: str = "B", subsets=("19",), device="cpu", batch_size: int = 1,
             num_workers: int = 0, amp_dtype=None, progress=None, **settings) -> dict:
    """Run ``model`` over every item of ``dataset`` (native resolution) and return ``ConfusionMatrix.summary``.

    Batching is only possible when all items share one size. ``progress(done, total)`` is optional.
    """
    predict = get_protocol(protocol, **settings)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(19, device=device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    done = 0
    try:
        for batch in loader:
            x = batch["image"].to(device)
            label = batch["label"].to(device)
            with torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype,
                                enabled=amp_dtype is not None):
                logits = predict(model, x, tuple(label.shape[-2:]))
            cm.update(logits.argmax(1), label, name=batch["name"][0])
            done += x.shape[0]
            if progress:
                progress(done, len(dataset))
    finally:
        model.train(was_training)
    out = cm.summary(subsets)
    out["protocol"] = protocol
    out["confusion"] = cm.numpy()
    return out
