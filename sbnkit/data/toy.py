"""The 2-D toy classification set of the PSA gradient-accuracy experiment (psa.md §5).

``n_per_class`` points per class:

* class +1 (label 1): ``x1 ~ U(-π/2, π/2)``, ``x2 ~ U(0, 1)``;
* class -1 (label 0): ``(x1, x2) ~ U(-π/2, π/2) × U(-1, 1)`` rejection-sampled to keep
  ``x2 < cos(x1)``.

The draw is fully determined by ``seed`` (the paper's data seed is 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import UserError


def toy2d(
    n_per_class: int = 100, seed: int = 1, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [2n, 2], y [2n])``: class +1 points first (label 1), then class -1 (label 0)."""
    if not isinstance(n_per_class, int) or n_per_class < 1:
        raise UserError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    rng = np.random.default_rng(seed)
    half = math.pi / 2
    pos = np.stack([rng.uniform(-half, half, n_per_class), rng.uniform(0.0, 1.0, n_per_class)], 1)
    neg = np.empty((0, 2))
    while len(neg) < n_per_class:
        cand = np.stack([rng.uniform(-half, half, n_per_class), rng.uniform(-1, 1, n_per_class)], 1)
        neg = np.concatenate([neg, cand[cand[:, 1] < np.cos(cand[:, 0])]])
    x = np.concatenate([pos, neg[:n_per_class]])
    y = np.concatenate([np.ones(n_per_class, np.int64), np.zeros(n_per_class, np.int64)])
    return torch.as_tensor(x, dtype=dtype), torch.as_tensor(y)
