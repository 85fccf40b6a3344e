"""Bop (Helwegen et al., NeurIPS 2019, "Latent weights do not exist"): flip binary weights directly.

The weights are stored as ``±1`` (:class:`SignWeight`, identity straight-through backward), and
:class:`Bop` keeps an exponential moving average ``m ← (1 - γ) m + γ g`` of their gradient and
flips ``w ← -w`` wherever ``|m| > τ`` and ``sign(m) = sign(w)`` (flipping then lowers the loss to
first order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ..units import sign
from ..weights import LatentWeight, WeightMode, check_weight_mode, straight_through
from . import _checks

__all__ = ["Bop", "SignWeight"]


class SignWeight(LatentWeight):
    """Weights stored as ``±1`` themselves: forward ``sign(w)`` in every mode, identity backward.

    Registered on a float weight ``w0`` the stored weights start at ``sign(w0)``.
    """

    def __init__(self, mode: WeightMode = "mode") -> None:
        super().__init__()
        self.mode = check_weight_mode(mode)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return straight_through(w, sign)

    def right_inverse(self, w0: torch.Tensor) -> torch.Tensor:
        return sign(w0.detach())


class Bop(torch.optim.Optimizer):
    """The Bop optimizer of ``±1`` weights (see the module docstring).

    ``lr`` is the adaptivity rate ``γ`` in ``(0, 1]`` (named ``lr`` so that learning-rate
    schedules decay it, as the paper decays ``γ``); ``threshold`` ``τ`` ≥ 0. Raises ``UserError``
    for bad values.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-4,
        threshold: float = 1e-8,
    ) -> None:
        _checks.positive("lr", lr)
        defaults = dict(
            lr=_checks.in_range("lr", lr, 0.0, 1.0, high_open=False),
            threshold=_checks.at_least("threshold", threshold, 0.0),
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Update the gradient averages and flip; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            gamma, tau = group["lr"], group["threshold"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                m.mul_(1.0 - gamma).add_(p.grad, alpha=gamma)
                # sign(w) = +1 (as in units.sign) stays unless m > τ; -1 flips if m < -τ
                up = (m > tau).logical_not_().logical_and_(p >= 0).logical_or_(m < -tau)
                p.copy_(up).mul_(2.0).sub_(1.0)
        return loss
