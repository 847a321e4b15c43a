"""IAST's instance adaptive selector (methods.ias) on hand-worked cases (arithmetic in the comments)."""

import numpy as np
import pytest
import torch

from bench.data.labels import IGNORE
from methods import ias


def t(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def test_linear_percentile_hand_cases():
    v = t([4.0, 1.0, 3.0, 2.0])  # sorted 1, 2, 3, 4
    assert float(ias.linear_percentile(v, 50)) == pytest.approx(2.5)  # rank 1.5
    assert float(ias.linear_percentile(v, 25)) == pytest.approx(1.75)  # rank 0.75
    assert float(ias.linear_percentile(v, 0)) == 1.0 and float(ias.linear_percentile(v, 100)) == 4.0
    assert float(ias.linear_percentile(t([0.3]), 91.4)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="values"):
        ias.linear_percentile(t([]), 50)
    with pytest.raises(ValueError, match="q"):
        ias.linear_percentile(v, 101)


def test_threshold_update_hand_case():
    """α 0.5, γ 1, β 0.5.
    class 0: θ 0.8 → q = 100·(1 − 0.5·0.8) = 60 of {0.8} ∪ {0.6, 0.7, 0.9, 1.0} = sorted 0.6 0.7 0.8 0.9 1.0 at
             rank 2.4 → 0.84; θ' = 0.5·0.8 + 0.5·0.84 = 0.82.
    class 1: no pixel predicted 1: ψ = θ = 0.5, unchanged.
    class 2: θ 1.0 → q 50 of {1.0, 1.0, 1.0} = 1.0; θ' = 1.0 ≥ 1 → cap 0.999."""
    conf = t([[0.6, 0.7], [0.9, 1.0], [1.0, 1.0]])
    pred = torch.tensor([[0, 0], [0, 0], [2, 2]])
    out = ias.ias_threshold_update(t([0.8, 0.5, 1.0]), conf, pred, alpha=0.5, beta=0.5, gamma=1.0)
    assert out.tolist() == pytest.approx([0.82, 0.5, 0.999])


def test_thresholds_carry_from_instance_to_instance():
    """α 0.5, γ 0 (q = 50 always), β 0.5, θ_0 = 0.8. Image 1: {0.8, 0.6} → 0.7, θ_1 = 0.75. Image 2:
    {0.75, 0.95} → 0.85, θ_2 = 0.5·0.75 + 0.5·0.85 = 0.8."""
    theta = t([0.8])
    theta = ias.ias_threshold_update(theta, t([0.6]), torch.tensor([0]), 0.5, 0.5, 0.0)
    assert float(theta[0]) == pytest.approx(0.75)
    theta = ias.ias_threshold_update(theta, t([0.95]), torch.tensor([0]), 0.5, 0.5, 0.0)
    assert float(theta[0]) == pytest.approx(0.8)


def test_code_defaults_match_numpy_percentile():
    """α 0.2, β 0.9, γ 8 (the IAST configs): ψ is numpy's percentile of [θ] + confidences at 100·(1 − 0.2·θ^8)."""
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1.0, 500)
    pred = rng.integers(0, 3, 500)
    theta = np.array([0.9, 0.7, 0.95])
    out = ias.ias_threshold_update(t(theta), t(conf), torch.from_numpy(pred))
    for c in range(3):
        psi = np.percentile(np.concatenate([[theta[c]], conf[pred == c]]), 100 * (1 - 0.2 * theta[c] ** 8))
        assert float(out[c]) == pytest.approx(0.9 * theta[c] + 0.1 * psi, abs=1e-12)


def test_pseudo_labels_keep_confidence_at_or_above_the_class_threshold():
    """θ = (0.85, 0.6): 0.9 ≥ 0.85 keeps class 0; 0.5 < 0.6 drops class 1; 0.85 ≥ 0.85 keeps (inclusive)."""
    lab = ias.ias_pseudo_labels(torch.tensor([0.9, 0.5, 0.85]), torch.tensor([0, 1, 0]), t([0.85, 0.6]))
    assert lab.tolist() == [0, IGNORE, 0]


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="prediction"):
        ias.ias_threshold_update(t([0.9]), t([0.5, 0.6]), torch.tensor([0]))
    with pytest.raises(ValueError, match="alpha"):
        ias.ias_threshold_update(t([0.9]), t([0.5]), torch.tensor([0]), alpha=0.0)
    with pytest.raises(ValueError, match="prediction"):
        ias.ias_pseudo_labels(t([0.9]), torch.tensor([3]), t([0.5, 0.5]))


def test_selector_labels_each_image_with_the_thresholds_it_produced():
    """α 0.5, γ 0 (ψ = the median), β 0.5, θ_0 = 0.8, two classes over two 1×2 images: each image is labelled with
    the θ its own update produced; a class absent from an image keeps its θ."""
    sel = ias.IASSelector(2, alpha=0.5, beta=0.5, gamma=0.0, init=0.8)
    # image 1: pixel conf 0.6 (class 0) and 0.76 (class 0): ψ_0 = median{0.8, 0.6, 0.76} = 0.76 → θ_0 = 0.78
    p1 = torch.tensor([[[0.6, 0.76]], [[0.4, 0.24]]], dtype=torch.float64)
    assert sel(p1).tolist() == [[255, 255]]  # 0.6 and 0.76 < 0.78
    assert sel.theta.tolist() == pytest.approx([0.78, 0.8])
    # image 2: class 1 at 0.9 → ψ_1 = median{0.8, 0.9} = 0.85 → θ_1 = 0.825; class 0 at 0.8 → ψ_0 = 0.79 → 0.785
    p2 = torch.tensor([[[0.1, 0.8]], [[0.9, 0.2]]], dtype=torch.float64)
    assert sel(p2).tolist() == [[1, 0]]  # 0.9 ≥ 0.825, 0.8 ≥ 0.785
    assert sel.theta.tolist() == pytest.approx([0.785, 0.825])
    # image 3: only class 1 present, at 0.81 < θ_1' = 0.5·0.825 + 0.5·0.8175 → unlabelled; class 0 keeps 0.785
    assert sel(torch.tensor([[[0.19]], [[0.81]]], dtype=torch.float64)).tolist() == [[255]]
    assert sel.theta.tolist() == pytest.approx([0.785, 0.82125])
