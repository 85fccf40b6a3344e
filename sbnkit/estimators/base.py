"""The estimator interface and registry, batch checks and the default per-example loss."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..network import SBN, check_batch_tensor

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "LossFn",
    "check_batch",
    "cross_entropy",
    "get",
    "mean_loss",
    "names",
    "options",
    "per_example",
    "register",
    "require_sbn",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example ``-log softmax(logits)[y]``."""
    return F.cross_entropy(logits, y, reduction="none")


def check_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None) -> None:
    """Raise :class:`UserError` for a malformed batch: wrong shape or dtype, empty, NaN/Inf,
    one example through training-mode BatchNorm, labels out of range."""
    if isinstance(model, SBN):
        model.check_input(x)
    else:
        check_batch_tensor(model, x)
    if not isinstance(y, torch.Tensor):
        raise UserError(f"targets must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise UserError(
            f"{x.shape[0]} inputs but targets of shape {list(y.shape)}; pass one target per input"
        )
    if loss_fn is None:
        if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise UserError(
                f"cross-entropy needs integer class labels of shape [B], got {y.dtype} "
                f"{list(y.shape)}; pass a loss_fn for other targets"
            )
        classes = model.num_outputs if isinstance(model, SBN) else None
        if y.numel() and (int(y.min()) < 0 or (classes is not None and int(y.max()) >= classes)):
            raise UserError(
                f"labels must lie in [0, {classes}), got range [{int(y.min())}, {int(y.max())}]"
            )
    elif not bool(torch.isfinite(y.double() if not y.is_floating_point() else y).all()):
        raise UserError("targets contain NaN or Inf")


def per_example(losses: torch.Tensor, batch: int) -> torch.Tensor:
    """``losses`` if it holds one loss per example (shape ``[batch]``), else a
    :class:`UserError` naming the shape ``loss_fn`` returned."""
    if losses.shape != (batch,):
        raise UserError(f"loss_fn returned shape {list(losses.shape)}; return one loss per example")
    return losses


def mean_loss(losses: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean of per-example losses (see :func:`per_example`); a scalar loss is returned as it
    is."""
    if losses.dim() == 0:
        return losses
    return per_example(losses, batch).mean()


class Estimator:
    """A gradient estimator of ``∇ mean_i E[loss_i]``.

    ``loss(model, x, y, loss_fn)`` returns a scalar whose ``.backward()`` leaves the estimate in
    the parameters' ``.grad``; its value is an estimate of the mean expected loss. ``loss_fn``
    maps ``(logits [B, K], y)`` to per-example losses ``[B]`` (default: cross-entropy).
    A subclass's constructor takes the estimator's options as keywords with their defaults:
    the one place they are written (:func:`get` and the config pass them on).
    """

    name: str = ""

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None = None
    ) -> torch.Tensor:
        """The surrogate loss of the batch ``(x, y)``. Raises :class:`UserError` for a
        malformed batch (see :func:`check_batch`) or a model the estimator cannot handle."""
        check_batch(model, x, y, loss_fn)
        return self.surrogate(model, x, y, loss_fn or cross_entropy)

    def surrogate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{self.name}({opts})"


def require_sbn(model: nn.Module, estimator: str) -> SBN:
    """``model`` if it is an :class:`SBN` (path estimators need its layered structure), else a
    :class:`UserError` naming ``estimator``."""
    if not isinstance(model, SBN):
        raise UserError(
            f"estimator {estimator!r} walks the layers of an sbnkit SBN (sbnkit.models.*), "
            f"but got {type(model).__name__}; use a local estimator such as 'st' for other models"
        )
    return model


ESTIMATORS: dict[str, type[Estimator]] = {}
"""The registered estimator classes by name (filled by :func:`register`)."""

E = TypeVar("E", bound=type[Estimator])


def register(name: str) -> Callable[[E], E]:
    """A class decorator that registers an :class:`Estimator` subclass as ``name`` (and sets
    its ``name``). Raises :class:`UserError` for a name already registered."""

    def decorate(cls: E) -> E:
        if name in ESTIMATORS:
            raise UserError(f"estimator {name!r} is already registered; pick another name")
        cls.name = name
        ESTIMATORS[name] = cls
        return cls

    return decorate


def names() -> list[str]:
    """The registered estimator names, sorted."""
    return sorted(ESTIMATORS)


def options(name: str) -> dict[str, Any]:
    """The options of estimator ``name`` with their defaults (its constructor's keywords).
    Raises :class:`UserError` for an unknown name."""
    if name not in ESTIMATORS:
        raise UserError(f"unknown estimator {name!r}; known estimators: {', '.join(names())}")
    params = inspect.signature(ESTIMATORS[name]).parameters.values()
    return {p.name: p.default for p in params}


def get(name: str, **opts: Any) -> Estimator:
    """The estimator ``name`` built with the options ``opts`` (e.g. ``get("concrete", tau=0.1)``;
    :func:`options` lists them). Raises :class:`UserError` for an unknown name, an unknown
    option (listing the known ones) or a bad value."""
    known = list(options(name))
    for key in opts:
        if key not in known:
            listed = f"known options: {', '.join(known)}" if known else "it takes no options"
            raise UserError(f"bad options for estimator {name!r}: unknown option {key!r}; {listed}")
    try:
        return ESTIMATORS[name](**opts)
    except TypeError as exc:
        raise UserError(f"bad options for estimator {name!r}: {exc}") from None
