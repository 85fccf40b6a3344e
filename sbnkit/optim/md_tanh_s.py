"""MD-tanh-S (Ajanthan et al., AISTATS 2021, "Mirror descent view for neural network quantization").

:class:`TanhWeight`: in training the weights are ``w = tanh(βθ)`` with the "full"
straight-through backward (``∂ℓ/∂w`` passed to ``θ`` unchanged, no ``tanh'`` factor: mirror descent
with the tanh mirror map), ``β`` multiplied by ``beta_scale`` every ``beta_interval`` steps
(:meth:`~TanhWeight.step_end`, capped at ``beta_max``); in evaluation (or weight mode ``"mode"``)
the weights are ``sign θ``. The latents are updated by Adam (the published recipe).

The evaluated ``sign θ`` network is the trained ``tanh(βθ)`` network only where ``β|θ|`` is large:
a weight with ``β|θ| < 1`` (:meth:`~TanhWeight.unsaturated`) enters training at less than 0.76 of
its evaluation magnitude, and the BatchNorm running statistics are those of the training forward.
``β`` must therefore have grown enough by the end of training (the schedule must complete within
the run); the training loop logs the unsaturated fraction (``unsaturated_ratio``) and warns when
it is large.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..units import sign
from ..weights import LatentWeight, WeightMode, check_weight_mode, straight_through
from . import _checks

__all__ = ["TanhWeight"]


class TanhWeight(LatentWeight):
    """``θ -> tanh(βθ)`` with an annealed ``β`` (see the module docstring).

    ``beta`` > 0; ``beta_scale`` ≥ 1; ``beta_interval`` a positive integer number of steps;
    ``beta_max`` > 0. Registered on a float weight ``w0`` the latent starts at ``w0``. ``β`` and
    the step count are buffers (kept by checkpoints). Raises ``UserError`` for bad values.
    """

    def __init__(
        self,
        beta: float = 1.0,
        beta_scale: float = 1.2,
        beta_interval: int = 2000,
        beta_max: float = 1e35,
        mode: WeightMode = "sample",
    ) -> None:
        super().__init__()
        beta = _checks.positive("beta", beta)
        self.beta_scale = _checks.at_least("beta_scale", beta_scale, 1.0)
        if (
            isinstance(beta_interval, bool)
            or not isinstance(beta_interval, int)
            or beta_interval < 1
        ):
            raise UserError(f"beta_interval must be a positive integer, got {beta_interval!r}")
        self.beta_interval = beta_interval
        self.beta_max = _checks.positive("beta_max", beta_max)
        self.mode = check_weight_mode(mode)
        self.register_buffer("beta", torch.tensor(min(beta, self.beta_max), dtype=torch.float64))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        if self.training and self.mode != "mode":
            return straight_through(theta, self._soft)
        return straight_through(theta, sign)

    def _soft(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.mul(theta, float(self.beta)).tanh_()

    def right_inverse(self, w0: torch.Tensor) -> torch.Tensor:
        return w0.detach().clone()

    def unsaturated(self, latent: torch.Tensor) -> torch.Tensor:
        """``β|θ| < 1``: the weights whose training value ``|tanh(βθ)|`` is below ``tanh 1 ≈ 0.76``
        of their evaluation value ``|sign θ| = 1``."""
        return float(self.beta) * latent.abs() < 1.0

    def step_end(self) -> None:
        """Count a step; every ``beta_interval`` steps ``β ← min(β · beta_scale, beta_max)``."""
        self.steps += 1
        if int(self.steps) % self.beta_interval == 0:
            self.beta.fill_(min(float(self.beta) * self.beta_scale, self.beta_max))

    def extra_repr(self) -> str:
        return f"beta={float(self.beta):.6g}, beta_scale={self.beta_scale}, mode={self.mode}"
