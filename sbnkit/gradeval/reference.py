"""The reference gradient of a study: exact enumeration when the state count allows it, else the
mean of many independent samples of an unbiased estimator, with its own noise (see
:mod:`.stats` for how the errors are corrected for it)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .. import estimators
from ..estimators.base import LossFn
from ..network import SBN, Stage
from ..noise import Logistic
from ..persample import flat_grads

__all__ = ["REFERENCE_CHOICES", "ReferenceChoice", "exact_gradient", "sampled_reference_spec"]

ReferenceChoice = Literal["auto", "exact", "arm", "reinforce"]
REFERENCE_CHOICES: tuple[ReferenceChoice, ...] = ("auto", "exact", "arm", "reinforce")


def exact_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss_fn: LossFn,
    max_states: int = 2**20,
) -> tuple[float, list[torch.Tensor]]:
    """``(exact mean expected loss, exact gradient per group)`` by enumeration (forward
    filtering, :mod:`sbnkit.estimators.exact`). Raises :class:`UserError` when the model needs
    more than ``max_states`` states per example."""
    model.zero_grad(set_to_none=True)
    loss = estimators.get("exact", max_states=max_states).loss(model, x, y, loss_fn)
    loss.backward()
    grads = [g.clone() for g in flat_grads(model)]
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def sampled_reference_spec(
    model: SBN, choice: ReferenceChoice
) -> tuple[Literal["arm", "reinforce"], dict[str, object]]:
    """The unbiased estimator of a sampled reference: ``arm`` (the default when every unit has
    logistic noise, which ARM needs) or REINFORCE with its running-mean baseline."""
    logistic = all(isinstance(s.unit.noise, Logistic) for s in model.stages if isinstance(s, Stage))
    if choice == "arm" or (choice == "auto" and logistic):
        return "arm", {}
    return "reinforce", {"baseline": True}
