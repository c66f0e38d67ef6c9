"""The surrogate losses: JS divergence is zero iff equal, symmetric, bounded by ln 2."""

import math

import torch
import torch.nn.functional as F

from exporter.losses import js_divergence, soft_cross_entropy


def _random_targets(b=64, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.softmax(3 * torch.randn(b, k, generator=g), dim=1), g


def test_js_is_zero_when_prediction_equals_target():
    targets, _ = _random_targets()
    assert js_divergence(torch.log(targets), targets).item() < 1e-6


def test_js_is_positive_when_they_differ():
    targets, g = _random_targets()
    logits = torch.randn(64, 10, generator=g)
    assert js_divergence(logits, targets).item() > 1e-3


def test_js_is_symmetric():
    p, g = _random_targets(seed=1)
    q, _ = _random_targets(seed=2)
    assert math.isclose(
        js_divergence(torch.log(p), q).item(), js_divergence(torch.log(q), p).item(), rel_tol=1e-5
    )


def test_js_is_bounded_by_ln2_even_for_disjoint_supports():
    targets = F.one_hot(torch.zeros(8, dtype=torch.long), 10).float()  # all mass on class 0
    logits = torch.full((8, 10), -1e4)
    logits[:, 1] = 0.0  # all mass on class 1
    value = js_divergence(logits, targets).item()
    assert value <= math.log(2) + 1e-6
    assert value > math.log(2) - 1e-3


def test_js_is_finite_with_zero_targets_and_has_gradients():
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    logits = torch.zeros(2, 3, requires_grad=True)
    js_divergence(logits, targets).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_soft_cross_entropy_is_minimised_at_the_target():
    targets, _ = _random_targets()
    at_target = soft_cross_entropy(torch.log(targets), targets).item()
    elsewhere = soft_cross_entropy(torch.zeros(64, 10), targets).item()
    assert at_target < elsewhere
