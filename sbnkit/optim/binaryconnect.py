"""BinaryConnect (Courbariaux, Bengio, David, NeurIPS 2015) with Adam on the latents.

The weights are ``sign η`` with the identity straight-through backward (a
:class:`~sbnkit.weights.BernoulliWeight` in mode ``"mode"`` with uniform noise, whose ``"sample"``
mode is stochastic BinaryConnect), and the latents are projected to ``[-clip, clip]`` after every
step. Adam is the variant of BayesBiNN's "STE-Adam" baseline (Meng et al., 2020).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from . import _checks

__all__ = ["BinaryConnect"]


class BinaryConnect(torch.optim.Adam):
    """Adam on the latents followed by clipping them to ``[-clip, clip]`` (``clip`` > 0).

    ``lr`` > 0, ``betas``, ``eps`` and ``weight_decay`` ≥ 0 as in ``torch.optim.Adam``. Raises
    ``UserError`` for bad values.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        clip: float = 1.0,
    ) -> None:
        _checks.positive("lr", lr)
        _checks.at_least("weight_decay", weight_decay, 0.0)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.defaults["clip"] = _checks.positive("clip", clip)
        for group in self.param_groups:
            group.setdefault("clip", self.defaults["clip"])

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """An Adam step, then the projection; returns ``closure()`` if given."""
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.clamp_(-group["clip"], group["clip"])
        return loss
