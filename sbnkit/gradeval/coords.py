"""The coordinates in which gradients are measured: the ``±1``-state weights of sbnkit, or the
PSA authors' 0/1-state weights ``W01 = 2W``, ``b01 = b - W·1`` of every layer reading binary units
(the paper's figures are drawn in the latter)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch

from ..errors import UserError
from ..network import SBN
from .netfile import layers

__all__ = ["PARAMS", "Param", "check_param", "grad_01", "reparam_grads"]

Param = Literal["01", "pm1"]
PARAMS: tuple[Param, ...] = get_args(Param)


def check_param(param: str) -> None:
    """Raise :class:`UserError` unless ``param`` is one of :data:`PARAMS`."""
    if param not in PARAMS:
        raise UserError(f"unknown parametrization {param!r}; use one of {', '.join(PARAMS)}")


def grad_01(gw: torch.Tensor, gb: torch.Tensor) -> list[torch.Tensor]:
    """``[∂/∂W01, ∂/∂b01]`` from ``∂/∂W [..., out, in]`` and ``∂/∂b [..., out]`` of a layer
    reading ±1 units: with ``W = W01/2``, ``b = b01 + W01·1/2`` they are
    ``(∂/∂W + ∂/∂b 1ᵀ)/2`` and ``∂/∂b``."""
    return [0.5 * (gw + gb[..., None]), gb]


def reparam_grads(grads: Sequence[torch.Tensor], model: SBN, param: Param) -> list[torch.Tensor]:
    """Per-group gradients ``[..., P_k]`` (``[W.flatten(), b]`` of the ±1 model) w.r.t. the
    weights of parametrization ``param``; the first layer reads the real input and is kept.

    Raises :class:`UserError` for ``"01"`` on a model other than a plain SBN MLP.
    """
    if param == "pm1":
        return list(grads)
    out = [grads[0]]
    for v, op in zip(grads[1:], layers(model)[1:], strict=True):
        n = op.weight.numel()
        gw, gb = grad_01(v[..., :n].unflatten(-1, op.weight.shape), v[..., n:])
        out.append(torch.cat([gw.flatten(-2), gb], dim=-1))
    return out
