"""BayesBiNN (Meng, Bachmann, Khan, ICML 2020): the Bayesian learning rule for Bernoulli weights.

The posterior is a mean-field Bernoulli with natural parameters ``λ`` (``P(w = +1) = σ(2λ)``,
mean ``μ = tanh λ``). :class:`BayesBiNNWeight` is the parametrization: in training it draws the
relaxed sample ``w = tanh((λ + δ)/τ)`` (:func:`~sbnkit.optim.functional.bayesbinn_sample`) and
passes ``∂ℓ/∂w`` to ``λ`` unchanged; it records the sample for the optimizer. In evaluation the
weights are the mode ``sign λ`` (weight mode ``"mode"``) or, for Monte-Carlo prediction, hard
samples ``w ~ Bernoulli(σ(2λ))`` (weight mode ``"sample"``, as in the ensemble evaluation).

:class:`BayesBiNN` is the update (:func:`~sbnkit.optim.functional.bayesbinn_update`) with
``N = train_size · train_scale``, momentum with bias correction, prior ``λ₀`` and KL weight.
The published code computes the mean ``μ`` of the scale ``s`` from the latent *before the
previous* update (one step late); here ``μ = tanh λ`` of the current latent, i.e. ``μ`` refreshed
after every update. On the CPU both run the bit-identical compiled forms of
:mod:`~sbnkit.optim.compiled`. The uniforms of the relaxed sample are Philox4x32-10's
(:mod:`~sbnkit.optim.philox`), keyed from a CPU generator (torch's default one unless set):
seeded, resumed from a checkpoint, the same on every device, and drawn in a fraction of
``torch.rand_like``'s time.

The update needs the sample, so under ``torchrun`` every rank must draw the same one: the
training loop gives every :class:`BayesBiNNWeight` one generator for the keys
(:func:`share_sample_generator`), seeded alike on every rank and saved in checkpoints, so that
two processes train like one with the same global batch (the units' noise stays per rank).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from .. import noise as noise_lib
from ..errors import UserError
from ..units import sign
from ..weights import LatentWeight, WeightMode, check_weight_mode, straight_through
from . import _checks, compiled, philox

__all__ = ["BayesBiNN", "BayesBiNNWeight", "share_sample_generator"]

# latent parameter -> (last relaxed sample, its temperature), written by the forward pass
_SAMPLES: WeakIdKeyDictionary = WeakIdKeyDictionary()


class BayesBiNNWeight(LatentWeight):
    """Relaxed Bernoulli weights of temperature ``temperature`` (> 0) (see the module docstring).

    ``init`` (> 0): registered on a float weight ``w0`` the latent starts at ``init · sign(w0)``
    (the published ``±λ_init = ±10``). ``mode``: ``"sample"`` (relaxed sample in training, hard
    sample in evaluation), ``"mode"`` (``sign λ``) or ``"mean"`` (``tanh λ``). Raises
    ``UserError`` for bad values. ``generator``: the CPU generator of the relaxed samples' keys
    (``None``: torch's default one).
    """

    def __init__(
        self, temperature: float = 1e-10, init: float = 10.0, mode: WeightMode = "sample"
    ) -> None:
        super().__init__()
        self.temperature = _checks.positive("temperature", temperature)
        self.init = _checks.positive("init", init)
        self.mode = check_weight_mode(mode)
        self.noise = noise_lib.get("logistic", 0.5)
        self.generator: torch.Generator | None = None

    def forward(self, lam: torch.Tensor) -> torch.Tensor:
        if self.mode == "sample" and self.training:
            w = straight_through(lam, self._relaxed_sample)
            _SAMPLES[lam] = (w.detach(), self.temperature)
            return w
        if self.mode == "mode":
            return straight_through(lam, sign)
        if self.mode == "mean":
            return straight_through(lam, torch.tanh)
        return straight_through(lam, self.noise.sample_sign)

    def _relaxed_sample(self, lam: torch.Tensor) -> torch.Tensor:
        latent = lam.detach()
        u = philox.uniform_like(latent, philox.draw_key(self.generator))
        return compiled.bayesbinn_sample(latent, u, self.temperature)

    def right_inverse(self, w0: torch.Tensor) -> torch.Tensor:
        return self.init * sign(w0.detach())

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, mode={self.mode}"


def share_sample_generator(model: nn.Module, generator: torch.Generator | None) -> int:
    """Draw the relaxed samples of every :class:`BayesBiNNWeight` in ``model`` from
    ``generator`` (a CPU generator; ``None``: torch's default one); returns how many there are."""
    weights = [m for m in model.modules() if isinstance(m, BayesBiNNWeight)]
    for w in weights:
        w.generator = generator
    return len(weights)


class BayesBiNN(torch.optim.Optimizer):
    """The BayesBiNN update of latents ``λ`` parametrized by :class:`BayesBiNNWeight`.

    ``lr`` > 0; ``momentum`` in ``[0, 1)``; ``train_size`` ≥ 1 times ``train_scale`` > 0 is
    ``N``; ``prior`` the prior natural parameter ``λ₀``; ``kl_weight`` ≥ 0. Each :meth:`step`
    uses the relaxed sample of the latest training forward pass (one sample per step) and
    raises ``UserError`` if a latent with a gradient has none. Raises ``UserError`` for bad
    values.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-4,
        momentum: float = 0.0,
        *,
        train_size: float,
        train_scale: float = 1.0,
        prior: float = 0.0,
        kl_weight: float = 1.0,
    ) -> None:
        defaults = dict(
            lr=_checks.positive("lr", lr),
            momentum=_checks.in_range("momentum", momentum, 0.0, 1.0),
            train_size=_checks.at_least("train_size", train_size, 1.0),
            train_scale=_checks.positive("train_scale", train_scale),
            prior=_checks.real("prior", prior),
            kl_weight=_checks.at_least("kl_weight", kl_weight, 0.0),
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
            for p in group["params"]:
                if p.grad is None:
                    continue
                recorded = _SAMPLES.pop(p, None)
                if recorded is None:
                    raise UserError(
                        "BayesBiNN.step found no relaxed sample for a latent: run the model's "
                        "forward in training mode with BayesBiNNWeight weights before each step"
                    )
                w, temperature = recorded
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                state["step"] += 1
                compiled.bayesbinn_update_(
                    p,
                    state["exp_avg"],
                    p.grad,
                    w,
                    state["step"],
                    lr=group["lr"],
                    momentum=group["momentum"],
                    temperature=temperature,
                    train_size=group["train_size"] * group["train_scale"],
                    prior=group["prior"],
                    kl_weight=group["kl_weight"],
                )
        return loss
