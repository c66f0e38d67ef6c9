"""Surrogate losses between predicted class distributions and Monte-Carlo frequency targets.

- Jensen-Shannon divergence (Accelerated Smoothing): JS(p, q) = KL(p||m)/2 + KL(q||m)/2 with
  m = (p + q)/2. Symmetric, 0 iff p = q, bounded by ln 2, finite even where targets are 0.
- Soft-label cross-entropy (RRISE), for comparison: -sum_k q_k log p_k.
- Probit cross-entropy (`ce_probit`): soft-label CE plus a squared error on the scale the radius
  lives on, Phi^-1 of the top class's frequency. CE weighs an error by how rare the outcome is in
  probability units, so p_A = 0.97 against 0.99 costs almost nothing, yet it is 0.12 sigma of
  radius; on the probit scale the same error costs (1.88 - 2.33)^2. The target's frequency is
  smoothed, (k + 1/2) / (N + 1), so all-N counts stay finite (Phi^-1 of 1 is infinite).
- Censored probit CE (`ce_probit_censored`): the same at full probit weight, where all-votes
  targets only bound p_top from below (the probe head's loss, `exporter.probes`).
All take logits [B,K] and targets [B,K] (rows sum to 1) and return the batch mean; the probit
term also needs N per row, passed as targets' extra last column by the surrogate stage.
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


PROBIT_WEIGHT = 0.1  # CE is ~0.3-1.5 per image; a probit error of 1 (a third of the range) ~ 0.1


def _probit_errors(logits: torch.Tensor, targets_and_n: torch.Tensor):
    """(frequencies [B,K], Phi^-1 p_top - Phi^-1 q_top [B], top class's raw frequency [B])."""
    targets, n = targets_and_n[:, :-1], targets_and_n[:, -1]
    top = targets.argmax(1, keepdim=True)
    q_raw = targets.gather(1, top).squeeze(1)
    q = (q_raw * n + 0.5) / (n + 1.0)
    p = F.softmax(logits, dim=1).gather(1, top).squeeze(1).clamp(1e-6, 1 - 1e-6)
    return targets, torch.special.ndtri(p) - torch.special.ndtri(q), q_raw


def probit_cross_entropy(logits: torch.Tensor, targets_and_n: torch.Tensor) -> torch.Tensor:
    """Soft-label CE on frequencies + PROBIT_WEIGHT * (Phi^-1 p_top - Phi^-1 q_top)^2, where
    `targets_and_n` is [B, K+1]: the frequencies, then each row's number of draws N."""
    targets, error, _ = _probit_errors(logits, targets_and_n)
    return soft_cross_entropy(logits, targets) + PROBIT_WEIGHT * error.square().mean()


def censored_probit_cross_entropy(logits: torch.Tensor, targets_and_n: torch.Tensor):
    """Soft-label CE + (Phi^-1 p_top - Phi^-1 q_top)^2 at full weight, where a target whose N
    draws all named one class only says p_top >= q_top: predicting more costs nothing there.

    Why: N draws cannot tell 0.999 from 0.99999, and radii at r = 0.75 need p_A above 0.9995
    (n = 10,000); pulling every all-votes image down to (N + 1/2) / (N + 1) would cap the raw
    rule below that radius. The probe head (`exporter.probes`) trains with it."""
    targets, error, q_raw = _probit_errors(logits, targets_and_n)
    error = torch.where(q_raw >= 1.0, error.clamp(max=0.0), error)
    return soft_cross_entropy(logits, targets) + error.square().mean()


LOSSES = {
    "js": js_divergence,
    "ce": soft_cross_entropy,
    "ce_probit": probit_cross_entropy,
    "ce_probit_censored": censored_probit_cross_entropy,
}
# losses whose targets carry N as an extra last column
WITH_DRAW_COUNTS = {"ce_probit", "ce_probit_censored"}
