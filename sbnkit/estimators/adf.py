"""Moment-propagation estimators: ADF (the PSA paper's "AP2") and the local reparameterization.

Each stage maps input means ``m`` and variances ``v`` (the real input: ``m = x``, ``v = 0``) to
pre-activation moments under independence, with ``E[w]``, ``E[w²]`` the weight moments (real
weights: ``W``, ``W²``; sampled Bernoulli weights: ``2 F_w(η) - 1`` and ``1``, differentiable in
``η``)::

    μ = op(m; E[w]) + b,   ν = op(v; E[w²]) + op(m²; E[w²] - E[w]²)

and a norm scales them per channel: ``μ ← norm(μ)``, ``ν ← g² ν`` (``g = stage.norm_gain``, a
constant). The binary unit ``x = sign(a - z)`` with noise variance ``V_z`` then has

* ``adf``: ``p = F(μ · sqrt(V_z / (ν + V_z)))`` (``a - z`` treated as the unit's noise rescaled
  to variance ``ν + V_z``; exact for Gaussian noise, the PSA paper's logistic approximation
  ``σ(μ sqrt(V_S / (ν + V_S)))``, ``V_S = π²/3``, for logistic noise of scale 1);
* ``local_reparam``: ``a = μ + sqrt(ν) ε``, ``ε ~ N(0, 1)`` per unit and example, ``p = F(a)``;

and passes on the mean ``2p - 1`` and the variance ``4 p (1 - p)``. The head's logits have moments
``(μ_L, ν_L)`` by the same rule (the binarisation is *not* applied to them); by default ``adf``
takes the loss at the mean logits ``μ_L`` (deterministic) and ``local_reparam`` at a sample
``μ_L + sqrt(ν_L) ε`` (option ``output``). Both are biased surrogates of the SBN's expected loss.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import nn

from ..errors import UserError
from ..network import Head, Stage, along
from ..noise import Logistic, Noise, Normal, Triangular, Uniform
from .base import Estimator, LossFn, mean_loss, register
from .walk import op_with_weight, path_modules, sampled_bernoulli

__all__ = ["ADF", "OUTPUTS", "LocalReparam", "MomentPropagation", "Output", "noise_variance"]


def noise_variance(noise: Noise) -> float:
    """The variance of a unit's injected noise. Raises :class:`UserError` for a noise of
    unknown variance."""
    if isinstance(noise, Logistic):
        return noise.scale**2 * math.pi**2 / 3.0
    if isinstance(noise, Normal):
        return noise.std**2
    if isinstance(noise, Uniform):
        return noise.half_width**2 / 3.0
    if isinstance(noise, Triangular):
        return noise.half_width**2 / 6.0
    raise UserError(f"moment propagation does not know the variance of noise {noise!r}")


def _weight_moments(op: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E[w], E[w²])`` of ``op``'s weight."""
    bern = sampled_bernoulli(op)
    if bern is None:
        w = op.weight
        return w, w * w
    mean = bern.noise.mean_fn(op.parametrizations.weight.original)
    return mean, torch.ones_like(mean)


def _moments(op: nn.Module, m: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``op``'s output for independent inputs with moments ``(m, v)``."""
    mean_w, sq_w = _weight_moments(op)
    mu = op_with_weight(op, m, mean_w)
    var = op_with_weight(op, v, sq_w, bias=False)
    if sampled_bernoulli(op) is not None:
        var = var + op_with_weight(op, m * m, sq_w - mean_w * mean_w, bias=False)
    return mu, var


def _head_moments(
    head: Head, m: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if head.pool == "avg" and m.dim() > 2:
        positions = m[0, 0].numel()
        m, v = head.features(m), head.features(v) / positions
    else:
        m, v = m.flatten(1), v.flatten(1)
    return _moments(head.linear, m, v)


Output = Literal["mean", "sample"]
OUTPUTS: tuple[str, ...] = get_args(Output)


class MomentPropagation(Estimator):
    """The base of ADF and the local reparameterization (see the module docstring).

    :attr:`sample_units`: sample each pre-activation from ``N(μ, ν)``; ``output``: the loss at
    the mean logits (``mean``) or at a Gaussian sample of them (``sample``). Raises
    :class:`UserError` for an unknown ``output``.
    """

    sample_units: bool = False

    def __init__(self, output: Output) -> None:
        if output not in OUTPUTS:
            raise UserError(f"unknown {self.name} output {output!r}; known: {', '.join(OUTPUTS)}")
        self.output = output

    def surrogate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> torch.Tensor:
        sbn, mods = path_modules(model, self.name)
        m, v = x, torch.zeros_like(x)
        for mod in mods:
            if not isinstance(mod, Stage):
                m, v = mod(m), mod(v)
                continue
            mu, var = _moments(mod.op, m, v)
            if mod.norm is not None:
                gain = mod.norm_gain(mu)
                mu = mod.norm(mu)
                var = var * along(gain * gain, 1, var.dim())
            noise = mod.unit.noise
            if self.sample_units:
                p = noise.cdf(mu + self._std(var) * torch.randn_like(mu))
            else:
                vz = noise_variance(noise)
                p = noise.cdf(mu * torch.sqrt(vz / (var + vz)))
            m, v = 2.0 * p - 1.0, 4.0 * p * (1.0 - p)
        mu, var = _head_moments(sbn.head, m, v)
        logits = mu + self._std(var) * torch.randn_like(mu) if self.output == "sample" else mu
        return mean_loss(loss_fn(logits, y), x.shape[0])

    @staticmethod
    def _std(var: torch.Tensor) -> torch.Tensor:
        """``sqrt(var)`` with a finite gradient at ``var = 0``."""
        return torch.sqrt(var.clamp_min(torch.finfo(var.dtype).tiny))


@register("adf")
class ADF(MomentPropagation):
    """ADF / AP2: deterministic moment propagation; ``output="sample"`` samples the logits.
    Raises :class:`UserError` for an unknown ``output``."""

    def __init__(self, output: Output = "mean") -> None:
        super().__init__(output)


@register("local_reparam")
class LocalReparam(MomentPropagation):
    """The local reparameterization: sampled pre-activations, propagated unit moments. Raises
    :class:`UserError` for an unknown ``output``."""

    sample_units = True

    def __init__(self, output: Output = "sample") -> None:
        super().__init__(output)
