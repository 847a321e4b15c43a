"""Label maps and per-image confusion matrices made in tests, with scikit-learn as the independent reference."""

import numpy as np
from sklearn.metrics import confusion_matrix, jaccard_score

C = 19


def random_maps(rng, n=6, shape=(8, 10), classes=C, ignore=0.1):
    gt = rng.integers(0, classes, (n, *shape))
    gt[rng.random(gt.shape) < ignore] = 255
    return gt


def per_image_sklearn(pred, gt, classes=C):
    """One matrix per image with scikit-learn (ignore pixels dropped): the independent reference."""
    out = []
    for p, g in zip(pred, gt):
        keep = g != 255
        out.append(confusion_matrix(g[keep], p[keep], labels=np.arange(classes)))
    return np.stack(out)


def miou_sklearn(pred, gt, classes=C):
    """mIoU in % of all pixels pooled (= of the summed matrix) with scikit-learn's Jaccard, over the classes present
    in the ground truth or the prediction."""
    keep = gt != 255
    g, p = gt[keep], pred[keep]
    present = np.union1d(np.unique(g), np.unique(p))
    return 100 * jaccard_score(g, p, labels=present, average="macro")


def noisy(rng, gt, error):
    """Predictions that copy the ground truth except on a random ``error`` fraction of pixels."""
    pred = np.where(gt == 255, 0, gt)
    flip = rng.random(gt.shape) < error
    return np.where(flip, rng.integers(0, C, gt.shape), pred)
