"""The 2-D toy classification set of the PSA gradient-accuracy experiment (Shekhovtsov,
Yanush & Flach 2020)."""

from __future__ import annotations

import math

import torch

from ..errors import UserError

__all__ = ["make_toy"]


def _uniform(
    n: int, low: float, high: float, gen: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, dtype=dtype)


def make_toy(
    n_per_class: int = 100, seed: int = 1, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X [2n, 2], y [2n])`` with ``y = +1`` for the first ``n`` points and ``-1`` for the rest.

    Class +1: ``x1 ~ U(-π/2, π/2)``, ``x2 ~ U(0, 1)``. Class -1: ``(x1, x2) ~ U(-π/2, π/2) ×
    U(-1, 1)`` rejection-sampled to keep ``x2 < cos(x1)``. The classes overlap where
    ``0 <= x2 < cos(x1)``, so no classifier is perfect. Raises :class:`UserError` unless
    ``n_per_class`` is a positive integer.
    """
    if not isinstance(n_per_class, int) or n_per_class < 1:
        raise UserError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    gen = torch.Generator().manual_seed(int(seed))
    half = math.pi / 2
    pos = torch.stack(
        [
            _uniform(n_per_class, -half, half, gen, dtype),
            _uniform(n_per_class, 0.0, 1.0, gen, dtype),
        ],
        dim=1,
    )
    kept: list[torch.Tensor] = []
    count = 0
    while count < n_per_class:
        cand = torch.stack(
            [
                _uniform(n_per_class, -half, half, gen, dtype),
                _uniform(n_per_class, -1.0, 1.0, gen, dtype),
            ],
            dim=1,
        )
        cand = cand[cand[:, 1] < torch.cos(cand[:, 0])]
        kept.append(cand)
        count += cand.shape[0]
    neg = torch.cat(kept)[:n_per_class]
    X = torch.cat([pos, neg])
    y = torch.cat([torch.ones(n_per_class, dtype=dtype), -torch.ones(n_per_class, dtype=dtype)])
    return X, y
