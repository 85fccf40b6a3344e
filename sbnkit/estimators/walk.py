"""The stage walk shared by the path estimators (psa, reinforce, arm, exact, adf).

Path estimators need the layered structure of an :class:`~sbnkit.network.SBN`: they accept its
:class:`~sbnkit.network.Stage` s and ``nn.Flatten`` and refuse anything else, apply each op with an
explicit (e.g. sampled) weight, and find the ops whose Bernoulli weights are sampled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..network import SBN, Stage
from ..weights import BernoulliWeight
from .base import require_sbn

__all__ = ["apply_op", "op_with_weight", "path_modules", "sampled_bernoulli"]


def path_modules(model: nn.Module, estimator: str) -> tuple[SBN, list[nn.Module]]:
    """The SBN and its stages, refusing modules a path estimator cannot walk.

    Accepted: :class:`Stage` and ``nn.Flatten`` (which only reshapes). Raises
    :class:`UserError` for a model that is not an SBN or holds other modules.
    """
    sbn = require_sbn(model, estimator)
    mods = list(sbn.stages)
    for k, m in enumerate(mods):
        if not isinstance(m, (Stage, nn.Flatten)):
            raise UserError(
                f"estimator {estimator!r} walks Stage and nn.Flatten modules only, but "
                f"model.stages[{k}] is {type(m).__name__}; remove it or use a local estimator "
                "such as 'st'"
            )
    return sbn, mods


def sampled_bernoulli(op: nn.Module) -> BernoulliWeight | None:
    """``op``'s Bernoulli parametrization if its weight is sampled, else ``None``. Raises
    :class:`UserError` for a sampled weight with other parametrizations stacked on it."""
    if not nn.utils.parametrize.is_parametrized(op, "weight"):
        return None
    plist = list(op.parametrizations.weight)
    bern = [p for p in plist if isinstance(p, BernoulliWeight)]
    if not bern or bern[0].mode != "sample":
        return None
    if len(plist) != 1:
        names = [type(p).__name__ for p in plist]
        raise UserError(
            f"path estimators need a sampled weight with one BernoulliWeight parametrization, "
            f"got {names}; remove the others"
        )
    return bern[0]


def apply_op(
    op: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``op``'s map (a Linear, or a Conv2d with its stride, padding, dilation and groups) with
    an explicit ``weight`` and ``bias``. Raises :class:`UserError` for a conv padding mode
    other than zeros."""
    if isinstance(op, nn.Linear):
        return F.linear(x, weight, bias)
    if op.padding_mode != "zeros":
        raise UserError(
            f"path estimators need zero-padded convs, got padding_mode={op.padding_mode!r}"
        )
    return F.conv2d(x, weight, bias, op.stride, op.padding, op.dilation, op.groups)


def op_with_weight(
    op: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: bool = True
) -> torch.Tensor:
    """``op(x)`` (a Linear or Conv2d) with an explicit ``weight``, and its bias if ``bias``.
    Raises :class:`UserError` as :func:`apply_op` does."""
    return apply_op(op, x, weight, op.bias if bias else None)
