"""Error statistics of sampled gradient estimates against a reference gradient.

For single-sample estimates ``ĝ_1 … ĝ_N`` of ``g`` and ``M``-sample averages ``ĝ_M`` over
``⌊N/M⌋`` disjoint trials: the relative RMSE ``sqrt(mean ||ĝ_M - g||² / ||g||²)`` with the
delta-method standard error of its log, the cosine ``cos(ĝ_M, g)`` (mean, 15 % and 85 % quantiles),
and the split of the single-sample error into squared bias and variance.

**A noisy reference.** When ``g`` is itself the mean ``ḡ`` of ``M_ref`` independent unbiased
samples (no exact gradient), with ``V_ref = tr Cov`` of one reference sample,
``E ||ĝ_M - ḡ||² = ||bias||² + V_est/M + V_ref/M_ref``: the last term is the reference's own
error, ``ref_noise = V_ref/M_ref``, and is subtracted from every squared error; the squared norm
in the denominators is estimated without bias as ``||ḡ||² - ref_noise``, and the cosine divides by
that norm (its numerator ``ĝ·ḡ`` is already unbiased). With an exact reference ``ref_noise = 0``
and nothing changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import UserError

__all__ = [
    "M_GRID",
    "SLOPE_MIN_TRIALS",
    "BiasVariance",
    "Curve",
    "Slope",
    "bias_variance",
    "gradient_metrics",
    "loglog_slope",
    "m_grid",
    "pow2_grid",
    "reference_noise",
    "relative_bias",
]

M_GRID = tuple(m * 10**k for k in range(4) for m in range(1, 10))
SLOPE_MIN_TRIALS = 20


@dataclass
class Curve:
    """Per number ``M`` of averaged samples: trials, relative RMSE (and the standard error of its
    log, ``None`` where undefined), cosine mean and 15 %/85 % quantiles."""

    M: list[int]
    trials: list[int]
    rmse: list[float]
    rmse_se: list[float | None]
    cos_mean: list[float]
    cos_q15: list[float]
    cos_q85: list[float]


@dataclass
class Slope:
    """The log-log slope of the RMSE from ``M = 1`` to ``M`` with its standard error."""

    M: int | None
    slope: float | None
    se: float | None


@dataclass
class BiasVariance:
    """The single-sample squared error split: ``bias2 = ||E ĝ - g||² / ||g||²`` and
    ``variance = tr Cov(ĝ) / ||g||²`` (so ``rmse(M)² ≈ bias2 + variance / M``)."""

    bias2: float
    variance: float


def m_grid(n_samples: int) -> list[int]:
    """The paper's numbers of averaged samples ``M`` (:data:`M_GRID`) that allow a trial."""
    return [m for m in M_GRID if m <= n_samples]


def pow2_grid(n_samples: int) -> list[int]:
    """``M = 1, 2, 4, …`` up to ``n_samples``."""
    return [2**k for k in range(n_samples.bit_length()) if 2**k <= n_samples]


def reference_noise(samples: torch.Tensor) -> float:
    """``V_ref / M_ref``: the expected squared error of the mean of ``samples`` ``[M_ref, P]``
    (unbiased sample variances; 0 for a single sample)."""
    n = samples.shape[0]
    return float(samples.var(0).sum()) / n if n > 1 else 0.0


def _norm2(g: torch.Tensor, ref_noise: float) -> float:
    g2 = float(g.dot(g)) - ref_noise
    if not g2 > 0.0:
        raise UserError(
            "the reference gradient of a layer is zero (or below its own noise); relative "
            "errors are undefined: use more reference samples or an exact reference"
        )
    return g2


def gradient_metrics(
    est: torch.Tensor, g: torch.Tensor, ms: Sequence[int], *, ref_noise: float = 0.0
) -> Curve:
    """:class:`Curve` of the estimates ``est`` ``[N, P]`` against ``g`` ``[P]``; trial ``t`` of
    ``M`` averages rows ``tM .. tM + M - 1``. ``ref_noise``: see the module docstring.

    Raises :class:`UserError` when ``||g||² - ref_noise`` is not positive.
    """
    g2 = _norm2(g, ref_noise)
    gnorm = math.sqrt(g2)
    res = Curve([], [], [], [], [], [], [])
    levels = torch.tensor([0.15, 0.85], dtype=est.dtype)
    for m in ms:
        t = est.shape[0] // m
        means = est[: t * m].reshape(t, m, -1).mean(1)
        err = ((means - g).pow(2).sum(1) - ref_noise) / g2
        mse = float(err.mean())
        cos = means @ g / (means.norm(dim=1).clamp_min(1e-300) * gnorm)
        q15, q85 = torch.quantile(cos, levels).tolist()
        res.M.append(m)
        res.trials.append(t)
        res.rmse.append(math.sqrt(max(mse, 0.0)))
        res.rmse_se.append(
            0.5 * float(err.std()) / (mse * math.sqrt(t)) if t > 1 and mse > 0 else None
        )
        res.cos_mean.append(float(cos.mean()))
        res.cos_q15.append(q15)
        res.cos_q85.append(q85)
    return res


def bias_variance(est: torch.Tensor, g: torch.Tensor, *, ref_noise: float = 0.0) -> BiasVariance:
    """:class:`BiasVariance` from all rows of ``est``: ``||mean - g||² - tr(Cov)/N - ref_noise``
    (clamped at 0) and ``tr(Cov)``, both over ``||g||² - ref_noise``.

    Raises :class:`UserError` when ``||g||² - ref_noise`` is not positive.
    """
    n = est.shape[0]
    g2 = _norm2(g, ref_noise)
    sq = float((est.mean(0) - g).pow(2).sum())
    var = float(est.var(0).sum()) if n > 1 else 0.0
    return BiasVariance(max(sq - var / n - ref_noise, 0.0) / g2, var / g2)


def relative_bias(est: torch.Tensor, g: torch.Tensor, *, ref_noise: float = 0.0) -> float:
    """``||E ĝ - g|| / ||g||``: the square root of :func:`bias_variance`'s ``bias2``."""
    return math.sqrt(bias_variance(est, g, ref_noise=ref_noise).bias2)


def loglog_slope(metrics: Curve, min_trials: int = SLOPE_MIN_TRIALS) -> Slope:
    """The slope of ``log rmse`` from ``M = 1`` to the largest ``M`` with ``min_trials`` trials,
    with a conservative standard error ``sqrt(se_1² + se_M²) / log M`` (the two RMSEs share
    samples, which only correlates them positively). ``None`` entries where undefined."""
    ok = [i for i, t in enumerate(metrics.trials) if t >= min_trials and metrics.M[i] > 1]
    if not ok or metrics.rmse[0] == 0.0 or metrics.rmse[ok[-1]] == 0.0:
        return Slope(None, None, None)
    i = ok[-1]
    m, se1, sem = metrics.M[i], metrics.rmse_se[0], metrics.rmse_se[i]
    slope = math.log(metrics.rmse[i] / metrics.rmse[0]) / math.log(m)
    se = None if se1 is None or sem is None else math.hypot(se1, sem) / math.log(m)
    return Slope(m, slope, se)
