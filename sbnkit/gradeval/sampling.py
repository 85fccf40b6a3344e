"""Drawing a method's single-sample gradient estimates (in seeded parts, optionally in worker
processes) and timing one sample of it."""

from __future__ import annotations

import statistics
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import estimators
from ..errors import UserError
from ..estimators.base import LossFn
from ..persample import MissedGradient, sample_gradients

__all__ = ["PART_SAMPLES", "Drawn", "MethodSpec", "draw", "method_seed", "probe", "time_per_sample"]

PART_SAMPLES = 2500


@dataclass(frozen=True)
class MethodSpec:
    """A method to sample: its label (which seeds it), registry name and options."""

    label: str
    estimator: str
    options: dict[str, Any]


@dataclass
class Drawn:
    """A method's estimates per group ``[N, P_k]``, the mean of its loss values and the wall and
    CPU seconds of drawing them."""

    grads: list[torch.Tensor]
    loss_value_mean: float
    time_s: float
    cpu_s: float


def method_seed(seed: int, name: str, part: int) -> int:
    """The seed of part ``part`` of a method's samples; independent of the other methods."""
    return (int(seed) * 1_000_003 + zlib.crc32(f"{name}/{part}".encode())) % 2**63


def _task(task: tuple) -> tuple[list[torch.Tensor], float, float, float]:
    """``(per-group estimates, mean loss value, wall s, CPU s)`` of one part of one method."""
    model, x, y, spec, n_samples, seed, chunk_rows, loss_fn = task
    torch.manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    est = estimators.get(spec.estimator, **spec.options)
    grads, value = sample_gradients(
        model, est, x, y, n_samples, loss_fn=loss_fn, chunk_rows=chunk_rows
    )
    return grads, value, time.perf_counter() - t0, time.process_time() - c0


def draw(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    specs: Sequence[MethodSpec],
    *,
    n_samples: int,
    seed: int,
    loss_fn: LossFn,
    chunk_rows: int = 200_000,
    pool: Executor | None = None,
) -> Iterator[tuple[MethodSpec, Drawn]]:
    """Each method's ``n_samples`` estimates, in order, drawn in parts of at most
    :data:`PART_SAMPLES` with their own seeds, so the results do not depend on ``pool`` (a
    process pool running all parts in parallel, or ``None`` to run them here).

    Raises what :func:`~sbnkit.persample.sample_gradients` raises.
    """
    sizes = [min(PART_SAMPLES, n_samples - i) for i in range(0, n_samples, PART_SAMPLES)]
    tasks = [
        (model, x, y, spec, n, method_seed(seed, spec.label, part), chunk_rows, loss_fn)
        for spec in specs
        for part, n in enumerate(sizes)
    ]
    outs = iter(pool.map(_task, tasks) if pool is not None else map(_task, tasks))
    for spec in specs:
        parts = [next(outs) for _ in sizes]
        grads = [torch.cat(gs) for gs in zip(*(p[0] for p in parts), strict=True)]
        loss = sum(p[1] * n for p, n in zip(parts, sizes, strict=True)) / n_samples
        yield spec, Drawn(grads, loss, sum(p[2] for p in parts), sum(p[3] for p in parts))


def probe(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: MethodSpec, *, loss_fn: LossFn
) -> str | None:
    """``None`` if per-sample estimates of ``spec`` can be drawn on ``model`` (tried on two
    samples of the first two points), else the one-line reason."""
    try:
        est = estimators.get(spec.estimator, **spec.options)
        sample_gradients(model, est, x[:2], y[:2], 2, loss_fn=loss_fn)
    except (UserError, MissedGradient) as exc:
        return str(exc)
    finally:
        model.zero_grad(set_to_none=True)
    return None


def time_per_sample(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: MethodSpec,
    *,
    loss_fn: LossFn,
    repeats: int = 3,
    seed: int = 0,
) -> float:
    """The median wall seconds of one plain ``loss(model, x, y).backward()`` of ``spec`` (one
    sample of the gradient, as in training), after one warm-up call. Raises
    :class:`UserError` when the estimator refuses the model."""
    torch.manual_seed(seed)
    est = estimators.get(spec.estimator, **spec.options)
    times = []
    for k in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        est.loss(model, x, y, loss_fn).backward()
        if k:
            times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return statistics.median(times)
