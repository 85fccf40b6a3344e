"""Local estimators: they only set every unit's rule and call ``model(x)``.

They therefore work inside any PyTorch architecture that uses :class:`~sbnkit.units.BinaryUnit`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..units import Rule, using_rule
from .base import Estimator, LossFn, mean_loss


class LocalEstimator(Estimator):
    """Forward the model with one unit rule (st, det_st, hard_st, concrete, mean), backprop."""

    def __init__(self, name: str, rule: Rule) -> None:
        self.name = name
        self.rule = rule

    def surrogate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> torch.Tensor:
        with using_rule(model, self.rule):
            logits = model(x)
        return mean_loss(loss_fn(logits, y), x.shape[0])


def st(proxy: str = "noise") -> LocalEstimator:
    """Principled ST: sampled forward, backward ``2 p(a)`` (``proxy`` overrides it)."""
    return LocalEstimator("st", Rule("st", proxy))


def hard_st() -> LocalEstimator:
    """The PSA paper's Hard ST: sampled forward, backward ``1[|a| <= 1]``."""
    return LocalEstimator("hard_st", Rule("st", "htanh"))


def det_st(proxy: str = "htanh", beta: float = 5.0) -> LocalEstimator:
    """Deterministic ST: forward ``sign(a)``, backward through ``proxy`` (Hubara: htanh)."""
    return LocalEstimator("det_st", Rule("det_st", proxy, beta=beta))


def concrete(tau: float = 1.0) -> LocalEstimator:
    """Concrete relaxation ``tanh((a - z)/(2 tau))`` with the pathwise gradient."""
    return LocalEstimator("concrete", Rule("concrete", tau=tau))


def mean() -> LocalEstimator:
    """The deterministic network of means ``E[x|a]`` (AP1), exact gradient of that surrogate."""
    return LocalEstimator("mean", Rule("mean"))
