"""``bench.evaluate``: the confusion matrix spans the classes of the labels evaluated, not a fixed 19."""

import numpy as np
import pytest
import torch

from bench.evaluate import evaluate
from bench.metrics import ConfusionMatrix, EvaluationError


class LabelledImages(torch.utils.data.Dataset):
    """Random images and trainId labels (some pixels ignored); ``num_classes`` is stated only when given."""

    def __init__(self, num_classes: int, n: int = 3, size=(6, 8), state=True, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, *size, generator=g)
        self.labels = torch.randint(0, num_classes, (n, *size), generator=g)
        self.labels[:, 0, :2] = 255
        if state:
            self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "name": f"im{i}"}


def pixel_classifier(num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, num_classes, 1)


def reference_matrix(model, ds, num_classes: int) -> np.ndarray:
    """The matrix counted by hand: numpy, one image at a time."""
    mat = np.zeros((num_classes, num_classes), np.int64)
    with torch.no_grad():
        for i in range(len(ds)):
            pred = model(ds.images[i][None]).argmax(1)[0].numpy().ravel()
            gt = ds.labels[i].numpy().ravel()
            keep = gt != 255
            np.add.at(mat, (gt[keep], pred[keep]), 1)
    return mat


@pytest.mark.parametrize("num_classes", [5, 21])
def test_a_dataset_of_another_class_count_gets_its_own_matrix(num_classes):
    ds, model = LabelledImages(num_classes), pixel_classifier(num_classes)
    out = evaluate(model, ds, protocol="B", subsets=())
    assert out["confusion"].shape == (num_classes, num_classes)
    assert (out["confusion"] == reference_matrix(model, ds, num_classes)).all()
    assert out["confusion_per_image"].shape == (len(ds), num_classes, num_classes)
    assert out["pixels"] == int((ds.labels != 255).sum())


def test_the_19_classes_and_their_16_13_subsets_are_unchanged():
    """A dataset that does not state its classes is the 19 Cityscapes trainIds, as before (SYNTHIA: 16 and 13 of
    them, from the same 19-class matrix)."""
    ds, model = LabelledImages(19, state=False), pixel_classifier(19)
    out = evaluate(model, ds, protocol="B", subsets=("19", "16", "13"))
    cm = ConfusionMatrix(19)
    with torch.no_grad():
        for i in range(len(ds)):
            cm.update(model(ds.images[i][None]).argmax(1), ds.labels[i][None])
    expected = cm.summary(("19", "16", "13"))
    assert out["confusion"].shape == (19, 19)
    assert {k: out[k] for k in expected} == expected


def test_a_network_with_another_class_count_is_refused():
    with pytest.raises(EvaluationError, match="predicts 19 classes; the labels have 5"):
        evaluate(pixel_classifier(19), LabelledImages(5), protocol="B", subsets=())
