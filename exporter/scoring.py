"""Statistics of a set of certificates against labels and against Monte-Carlo, shared by the
evaluate and hybrid stages and the plot, so every number in a report is computed one way.

A certificate set is (pred [M], radius [M]) with pred = -1 where the rule abstained. Whether one
over-claims Monte-Carlo is `accsmooth.smoothing.overestimated`, the rule the server's audits use.
"""

from __future__ import annotations

import numpy as np

from accsmooth.smoothing import certified_accuracy


def accuracy_table(pred, radius, labels, radii) -> tuple[dict, dict]:
    """({"r": accuracy}, {"r": binomial standard error}) at each radius in `radii`."""
    table = {f"{r:g}": certified_accuracy(pred, radius, labels, r) for r in radii}
    stderr = {r: float(np.sqrt(a * (1 - a) / len(labels))) for r, a in table.items()}
    return table, stderr
