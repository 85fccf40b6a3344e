"""Injected noise distributions of stochastic binary units.

A unit is ``x = sign(a - z)`` with ``z`` drawn from a symmetric density ``p`` with CDF ``F``, so
``P(x = +1 | a) = F(a)`` and ``E[x | a] = 2 F(a) - 1``. Each noise gives ``cdf``, ``pdf``,
``log_cdf`` (stable ``log F``) and ``sample``. Every function stays finite for any finite input.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from .errors import UserError

__all__ = [
    "NOISES",
    "NOISE_NAMES",
    "Logistic",
    "Noise",
    "NoiseName",
    "Normal",
    "Triangular",
    "Uniform",
    "get",
]

NoiseName = Literal["logistic", "uniform", "triangular", "normal"]
NOISE_NAMES: tuple[str, ...] = get_args(NoiseName)


class Noise:
    """A symmetric noise distribution with a scale parameter."""

    name: str = ""

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pdf(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_cdf(self, t: torch.Tensor) -> torch.Tensor:
        """``log F(t)``; subclasses override it where a stabler form exists."""
        return torch.log(self.cdf(t).clamp_min(torch.finfo(t.dtype).tiny))

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, like: torch.Tensor) -> torch.Tensor:
        """A tensor of i.i.d. noise with the shape, dtype and device of ``like``."""
        eps = torch.finfo(like.dtype).eps
        u = torch.rand_like(like).clamp_(eps, 1.0 - eps)
        return self.icdf(u)

    def sample_sign(self, a: torch.Tensor) -> torch.Tensor:
        """A sample of ``sign(a - z)`` with no gradient, drawn as ``+1`` iff ``u < F(a)``,
        ``u ~ U[0, 1)``: the same law as subtracting a noise draw, with one uniform and one
        ``F`` evaluation instead of an inverse CDF."""
        return (torch.rand_like(a) < self.cdf(a)).to(a.dtype) * 2.0 - 1.0

    def mean_fn(self, a: torch.Tensor) -> torch.Tensor:
        """``E[sign(a - z)] = 2 F(a) - 1``: the unit's conditional mean (its ST proxy)."""
        return 2.0 * self.cdf(a) - 1.0

    def mean_grad(self, a: torch.Tensor) -> torch.Tensor:
        """``d/da E[sign(a - z)] = 2 p(a)``: the principled ST backward factor."""
        return 2.0 * self.pdf(a)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _check_scale(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"noise {name} must be a positive finite number, got {value!r}")
    return value


class Logistic(Noise):
    """Logistic noise, ``F(t) = sigmoid(t / scale)``; proxy ``tanh(a / (2 scale))``."""

    name = "logistic"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = _check_scale("scale", scale)

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(t / self.scale)

    def pdf(self, t: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(t / self.scale)
        return s * (1.0 - s) / self.scale

    def log_cdf(self, t: torch.Tensor) -> torch.Tensor:
        return -F.softplus(-t / self.scale)

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        return self.scale * (torch.log(u) - torch.log1p(-u))


class Uniform(Noise):
    """Uniform noise on ``[-half_width, half_width]``; proxy ``clip(a / half_width, -1, 1)``."""

    name = "uniform"

    def __init__(self, half_width: float = 1.0) -> None:
        self.half_width = _check_scale("half_width", half_width)

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        return ((t / self.half_width + 1.0) / 2.0).clamp(0.0, 1.0)

    def pdf(self, t: torch.Tensor) -> torch.Tensor:
        return (t.abs() <= self.half_width).to(t.dtype) / (2.0 * self.half_width)

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        return self.half_width * (2.0 * u - 1.0)


class Triangular(Noise):
    """Triangular noise, ``p(t) = (1 - |t|/c)_+ / c``; with ``c = 1`` the proxy is ApproxSign."""

    name = "triangular"

    def __init__(self, half_width: float = 1.0) -> None:
        self.half_width = _check_scale("half_width", half_width)

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        r = (t / self.half_width).clamp(-1.0, 1.0)
        return torch.where(r < 0, 0.5 * (1.0 + r) ** 2, 1.0 - 0.5 * (1.0 - r) ** 2)

    def pdf(self, t: torch.Tensor) -> torch.Tensor:
        return (1.0 - (t / self.half_width).abs()).clamp_min(0.0) / self.half_width

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        lower = torch.sqrt(2.0 * u) - 1.0
        upper = 1.0 - torch.sqrt(2.0 * (1.0 - u))
        return self.half_width * torch.where(u < 0.5, lower, upper)


class Normal(Noise):
    """Gaussian noise ``N(0, std^2)``; proxy ``erf(a / (sqrt(2) std))``."""

    name = "normal"

    def __init__(self, std: float = 1.0) -> None:
        self.std = _check_scale("std", std)

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        return torch.special.ndtr(t / self.std)

    def pdf(self, t: torch.Tensor) -> torch.Tensor:
        r = t / self.std
        return torch.exp(-0.5 * r * r) / (self.std * math.sqrt(2.0 * math.pi))

    def log_cdf(self, t: torch.Tensor) -> torch.Tensor:
        # log Φ(r) ≈ -r²/2 overflows float32 below r ≈ -2.6e19; clamping there keeps it finite.
        return torch.special.log_ndtr((t / self.std).clamp(-1e18, 1e18))

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        return self.std * torch.special.ndtri(u)


NOISES: dict[str, type[Noise]] = {
    "logistic": Logistic,
    "uniform": Uniform,
    "triangular": Triangular,
    "normal": Normal,
}


def get(name: NoiseName | Noise, scale: float = 1.0) -> Noise:
    """A noise by name (``logistic``, ``uniform``, ``triangular``, ``normal``) and scale;
    a :class:`Noise` is returned as it is. Raises :class:`UserError` for an unknown name or a
    scale that is not a positive finite number."""
    if isinstance(name, Noise):
        return name
    if name not in NOISES:
        raise UserError(f"unknown noise {name!r}; known noises: {', '.join(NOISES)}")
    return NOISES[name](scale)
