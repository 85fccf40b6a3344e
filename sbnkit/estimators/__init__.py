"""Gradient estimators behind one registry: ``get(name, **options)``, ``names()``.

Every estimator has ``loss(model, x, y, loss_fn=None)``; ``.backward()`` on its result leaves the
estimate of ``∇ mean_i E_z[loss_i]`` in ``.grad``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UserError
from . import adf, exact, local, psa, score
from .base import Estimator, check_batch, cross_entropy

_REGISTRY: dict[str, Callable[..., Estimator]] = {
    "st": local.st,
    "hard_st": local.hard_st,
    "det_st": local.det_st,
    "concrete": local.concrete,
    "mean": local.mean,
    "exact": exact.exact,
    "psa": psa.psa,
    "reinforce": score.reinforce,
    "arm": score.arm,
    "adf": adf.adf,
    "local_reparam": adf.local_reparam,
}


def names() -> list[str]:
    """The registered estimator names."""
    return sorted(_REGISTRY)


def get(name: str, **options) -> Estimator:
    """The estimator ``name`` built with ``options`` (e.g. ``get("concrete", tau=0.1)``)."""
    if name not in _REGISTRY:
        raise UserError(f"unknown estimator {name!r}; known estimators: {', '.join(names())}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as exc:
        raise UserError(f"bad options for estimator {name!r}: {exc}") from None


__all__ = ["Estimator", "check_batch", "cross_entropy", "get", "names"]
