"""Surrogate losses between predicted class distributions and Monte-Carlo frequency targets.

- Jensen-Shannon divergence (Accelerated Smoothing): JS(p, q) = KL(p||m)/2 + KL(q||m)/2 with
  m = (p + q)/2. Symmetric, 0 iff p = q, bounded by ln 2, finite even where targets are 0.
- Soft-label cross-entropy (RRISE), for comparison: -sum_k q_k log p_k.
Both take logits [B,K] and targets [B,K] (rows sum to 1) and return the batch mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _kl_to_mixture(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.special.xlogy(p, p).sum(1) - torch.special.xlogy(p, m).sum(1)


def js_divergence(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    p = F.softmax(logits, dim=1)
    m = 0.5 * (p + targets)
    return (0.5 * _kl_to_mixture(p, m) + 0.5 * _kl_to_mixture(targets, m)).mean()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


LOSSES = {"js": js_divergence, "ce": soft_cross_entropy}
