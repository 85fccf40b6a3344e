"""AdaSTE (Le, Høier, Lin, Zach, CVPR 2022): forward ``w*(θ)``, adaptive straight-through backward.

:class:`AdaSTEWeight` is the parametrization: in training its forward is ``w*(θ)``, the minimiser
of a double-well inner objective (:func:`~sbnkit.optim.functional.adaste_forward`), and its
backward multiplies ``∂ℓ/∂w`` by ``ρ(θ, g)`` (:func:`~sbnkit.optim.functional.adaste_factor`);
``β`` is annealed at the start of every epoch as ``β ← min(β r, 1/α)``. In evaluation (or in
weight mode ``"mode"``) the weights are ``sign θ``. On the CPU the forward and backward run the
bit-identical compiled forms of :mod:`~sbnkit.optim.compiled`.

:class:`AdaSTE` is the latent update: ``m ← β_m m + (1 - β_m)(ĝ + kl_weight θ)`` and
``θ ← θ - lr m / (1 - β_m^t)``, with ``ĝ = N² ρg`` for ``rule="code"`` (the published code
multiplies by the training-set size twice) and ``ĝ = N ρg`` for ``rule="corrected"``.

The default rule is ``"code"``: the published hyperparameters (lr 3e-4, ``N`` = 450,000 on CIFAR,
``β`` schedule, ``±10`` initialisation) were tuned with it, so recipes that reuse them reproduce the
published method; ``"corrected"`` (symmetric, no gates or cap, ``N`` once) changes the gradient
scale by a factor ``N`` and needs its own learning rate, to be measured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ..units import sign
from ..weights import LatentWeight, WeightMode, check_weight_mode, straight_through
from . import _checks, compiled
from .functional import ADASTE_RULES, AdaSTERule

__all__ = ["AdaSTE", "AdaSTEWeight"]


class _AdaSTEFunction(torch.autograd.Function):
    """``w*(θ)`` forward, ``ρ(θ, g) · g`` backward (compiled on the CPU, :mod:`.compiled`)."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, alpha: float, beta: float, rule: str) -> torch.Tensor:
        ctx.save_for_backward(theta)
        ctx.hyper = (alpha, beta, rule)
        return compiled.adaste_forward(theta, alpha, beta)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (theta,) = ctx.saved_tensors
        return compiled.adaste_grad(theta, grad, *ctx.hyper), None, None, None


class AdaSTEWeight(LatentWeight):
    """The AdaSTE parametrization ``θ -> w*(θ)`` (see the module docstring).

    ``alpha`` (> 0) sets the double-well minima ``±(1+α)``; ``beta`` (> 0) is the initial
    perturbation/well weight, multiplied by ``beta_rate`` (≥ 1) at each :meth:`epoch_start` and
    capped at ``1/α``; ``rule`` selects :func:`~sbnkit.optim.functional.adaste_factor`'s rule;
    ``init`` (> 0): registered on a float weight ``w0`` the latent starts at ``init · sign(w0)``
    (the published ``±λ_init``, random signs from the random init). Raises ``UserError`` for a
    bad value. ``β`` is a buffer, so checkpoints keep the annealing state.
    """

    def __init__(
        self,
        alpha: float = 0.01,
        beta: float = 0.01,
        beta_rate: float = 1.05,
        rule: AdaSTERule = "code",
        init: float = 10.0,
        mode: WeightMode = "sample",
    ) -> None:
        super().__init__()
        self.alpha = _checks.positive("alpha", alpha)
        beta = _checks.positive("beta", beta)
        self.beta_rate = _checks.at_least("beta_rate", beta_rate, 1.0)
        self.rule = _checks.choice("rule", rule, ADASTE_RULES)
        self.init = _checks.positive("init", init)
        self.mode = check_weight_mode(mode)
        self.register_buffer("beta", torch.tensor(min(beta, 1.0 / self.alpha), dtype=torch.float64))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        if self.training and self.mode != "mode":
            return _AdaSTEFunction.apply(theta, self.alpha, float(self.beta), self.rule)
        return straight_through(theta, sign)

    def right_inverse(self, w0: torch.Tensor) -> torch.Tensor:
        return self.init * sign(w0.detach())

    def epoch_start(self) -> None:
        """``β ← min(β · beta_rate, 1/α)`` (the published code anneals before each epoch)."""
        self.beta.fill_(min(float(self.beta) * self.beta_rate, 1.0 / self.alpha))

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={float(self.beta):.6g}, beta_rate={self.beta_rate}, "
            f"rule={self.rule}, mode={self.mode}"
        )


class AdaSTE(torch.optim.Optimizer):
    """AdaSTE's latent update (see the module docstring); use with :class:`AdaSTEWeight`.

    ``lr`` > 0; ``momentum`` ``β_m`` in ``[0, 1)``; ``train_size`` ≥ 1 training examples times
    ``train_scale`` > 0 gives ``N``; ``kl_weight`` ≥ 0 weighs the KL-to-uniform term ``θ``;
    ``rule`` (``"code"``: ``N²``, ``"corrected"``: ``N``). Raises ``UserError`` for bad values.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 3e-4,
        momentum: float = 0.9,
        *,
        train_size: float,
        train_scale: float = 1.0,
        kl_weight: float = 1.0,
        rule: AdaSTERule = "code",
    ) -> None:
        defaults = dict(
            lr=_checks.positive("lr", lr),
            momentum=_checks.in_range("momentum", momentum, 0.0, 1.0),
            train_size=_checks.at_least("train_size", train_size, 1.0),
            train_scale=_checks.positive("train_scale", train_scale),
            kl_weight=_checks.at_least("kl_weight", kl_weight, 0.0),
            rule=_checks.choice("rule", rule, ADASTE_RULES),
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every latent with a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            n = group["train_size"] * group["train_scale"]
            scale = n * n if group["rule"] == "code" else n
            m, kl = group["momentum"], group["kl_weight"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                state["step"] += 1
                buf = torch.mul(p.grad, scale).add_(torch.mul(p, kl))
                exp_avg = state["exp_avg"].mul_(m).add_(buf, alpha=1.0 - m)
                p.sub_(torch.mul(exp_avg, group["lr"], out=buf).div_(1.0 - m ** state["step"]))
        return loss
