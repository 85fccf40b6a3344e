"""Local estimators: they only set every unit's rule and call ``model(x)``.

They therefore work inside any PyTorch architecture that uses :class:`~sbnkit.units.BinaryUnit`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..units import ProxyName, Rule, using_rule
from .base import Estimator, LossFn, mean_loss, register

__all__ = ["ST", "Concrete", "DetST", "HardST", "LocalEstimator", "Mean"]


class LocalEstimator(Estimator):
    """Forward the model with the units' rule :attr:`rule`, backprop (the base of st, det_st,
    hard_st, concrete, mean)."""

    rule: Rule

    def surrogate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> torch.Tensor:
        with using_rule(model, self.rule):
            logits = model(x)
        return mean_loss(loss_fn(logits, y), x.shape[0])


@register("st")
class ST(LocalEstimator):
    """Principled ST: sampled forward, backward ``2 p(a)`` (``proxy`` overrides it). Raises
    :class:`UserError` for an unknown proxy."""

    def __init__(self, proxy: ProxyName = "noise") -> None:
        self.rule = Rule("st", proxy)


@register("hard_st")
class HardST(LocalEstimator):
    """The PSA paper's Hard ST: sampled forward, backward ``1[|a| <= 1]``."""

    def __init__(self) -> None:
        self.rule = Rule("st", "htanh")


@register("det_st")
class DetST(LocalEstimator):
    """Deterministic ST: forward ``sign(a)``, backward through ``proxy`` (Hubara: htanh);
    ``beta`` is the swishsign proxy's. Raises :class:`UserError` for an unknown proxy."""

    def __init__(self, proxy: ProxyName = "htanh", beta: float = 5.0) -> None:
        self.rule = Rule("det_st", proxy, beta=beta)


@register("concrete")
class Concrete(LocalEstimator):
    """Concrete relaxation ``tanh((a - z)/(2 tau))`` with the pathwise gradient. Raises
    :class:`UserError` for a non-positive ``tau``."""

    def __init__(self, tau: float = 1.0) -> None:
        self.rule = Rule("concrete", tau=tau)


@register("mean")
class Mean(LocalEstimator):
    """The deterministic network of means ``E[x|a]`` (AP1), exact gradient of that surrogate."""

    def __init__(self) -> None:
        self.rule = Rule("mean")
