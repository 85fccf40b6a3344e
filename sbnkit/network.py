"""The layered stochastic binary network: stages of (op, norm, binary unit), then a real head.

Local estimators only switch the units' rule and call ``model(x)``, so they work with any module
that contains :class:`~sbnkit.units.BinaryUnit` s. Path estimators (PSA, REINFORCE, ARM, exact, ADF)
walk :attr:`SBN.stages` in order; for each :class:`Stage` they use ``op`` (``nn.Linear`` or
``nn.Conv2d``, possibly with Bernoulli weights), :meth:`Stage.norm_gain` and ``unit.noise``. Any
other module between stages (pooling, dropout) is run by ``forward`` but refused by path
estimators.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

from .errors import UserError
from .units import BinaryUnit

__all__ = [
    "POOLS",
    "SBN",
    "ChannelAffine",
    "Head",
    "Pool",
    "Stage",
    "along",
    "check_batch_tensor",
]

Pool = Literal["flatten", "avg"]
POOLS: tuple[str, ...] = get_args(Pool)


def along(v: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """The vector ``v`` shaped to broadcast along ``axis`` of an ``ndim``-dimensional tensor
    (``axis=1``: the channels of ``[B, C, ...]``; ``axis=0``: the output rows of a weight)."""
    return v.view([-1 if d == axis else 1 for d in range(ndim)])


def check_batch_tensor(model: nn.Module, x: torch.Tensor) -> None:
    """Raise :class:`UserError` unless ``x`` is a non-empty, finite floating-point batch on the
    device and of the dtype of ``model``'s parameters that its BatchNorm layers (in training
    mode) can normalise."""
    if not isinstance(x, torch.Tensor):
        raise UserError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise UserError(f"the batch is empty (shape {list(x.shape)}); pass at least one example")
    if not x.is_floating_point():
        raise UserError(f"input must be floating point, got {x.dtype}")
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is not None and x.device != param.device:
        raise UserError(
            f"input is on {x.device} but the model is on {param.device}; move one of them, "
            f"e.g. x.to({str(param.device)!r})"
        )
    dtype = x.dtype if param is None else param.dtype
    if x.dtype != dtype:
        raise UserError(
            f"input is {x.dtype} but the model is {dtype}; convert one of them, e.g. "
            f"x.to({dtype}) or model.to({x.dtype})"
        )
    if not bool(torch.isfinite(x).all()):
        raise UserError("input contains NaN or Inf; clean or normalise the data first")
    if x.shape[0] == 1 and any(
        isinstance(m, nn.BatchNorm1d) and m.training for m in model.modules()
    ):
        raise UserError(
            "BatchNorm in training mode needs at least 2 examples per batch, got 1; pass a "
            "larger batch or call model.eval()"
        )


class ChannelAffine(nn.Module):
    """Per-channel ``γ · t + β`` (channel dim 1), for use between an op and a unit."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * along(self.weight, 1, t.dim()) + along(self.bias, 1, t.dim())


class Stage(nn.Module):
    """``x -> unit(norm(op(x)))`` with ``op`` a Linear or Conv2d and ``norm`` optional (BatchNorm
    or :class:`ChannelAffine`). Raises :class:`UserError` for another op or norm."""

    def __init__(
        self, op: nn.Linear | nn.Conv2d, unit: BinaryUnit, norm: nn.Module | None = None
    ) -> None:
        super().__init__()
        if not isinstance(op, (nn.Linear, nn.Conv2d)):
            raise UserError(f"a stage's op must be nn.Linear or nn.Conv2d, not {type(op).__name__}")
        if norm is not None and not isinstance(
            norm, (ChannelAffine, nn.BatchNorm1d, nn.BatchNorm2d)
        ):
            raise UserError(f"a stage's norm must be BatchNorm or ChannelAffine, not {norm!r}")
        self.op = op
        self.norm = norm
        self.unit = unit

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """``a = norm(op(x))``."""
        t = self.op(x)
        return t if self.norm is None else self.norm(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(self.preactivation(x))

    def norm_gain(self, t: torch.Tensor) -> torch.Tensor:
        """Per-channel ``∂a/∂t`` of the norm at op output ``t``, detached (statistics constant).

        BatchNorm in training mode uses the batch variance of ``t``, as its forward does.
        """
        n = self.norm
        t = t.detach()
        if n is None:
            return torch.ones(t.shape[1], dtype=t.dtype, device=t.device)
        if isinstance(n, ChannelAffine):
            return n.weight.detach()
        if n.training or n.running_var is None:
            dims = [d for d in range(t.dim()) if d != 1]
            var = t.var(dim=dims, unbiased=False)
        else:
            var = n.running_var
        gain = torch.rsqrt(var + n.eps)
        return gain * n.weight.detach() if n.affine else gain


class Head(nn.Module):
    """The real output layer: ``flatten`` or global ``avg`` pooling, then a Linear. Raises
    :class:`UserError` for an unknown ``pool``."""

    def __init__(self, linear: nn.Linear, pool: Pool = "flatten") -> None:
        super().__init__()
        if pool not in POOLS:
            raise UserError(f"unknown head pooling {pool!r}; known: {', '.join(POOLS)}")
        self.linear = linear
        self.pool = pool

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input as a ``[B, features]`` matrix."""
        if self.pool == "avg" and x.dim() > 2:
            return x.mean(dim=tuple(range(2, x.dim())))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


class SBN(nn.Module):
    """A stochastic binary network: ``stages`` then ``head``, for inputs ``[B, *input_shape]``."""

    def __init__(self, stages: Sequence[nn.Module], head: Head, input_shape: Sequence[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.head = head
        self.input_shape = tuple(int(s) for s in input_shape)

    @property
    def ops(self) -> list[nn.Module]:
        """The weighted layers in order: each :class:`Stage`'s op, then the head's Linear."""
        return [s.op for s in self.stages if isinstance(s, Stage)] + [self.head.linear]

    @property
    def num_outputs(self) -> int:
        """The number of outputs (classes) of the head."""
        return self.head.linear.out_features

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`UserError` unless ``x`` is a ``[B, *input_shape]`` batch that
        :func:`check_batch_tensor` accepts."""
        if not isinstance(x, torch.Tensor):
            raise UserError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            want = ", ".join(["B", *map(str, self.input_shape)])
            raise UserError(
                f"input has shape {list(x.shape)} but the model expects [{want}]; "
                "reshape the batch to match the model"
            )
        check_batch_tensor(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)
