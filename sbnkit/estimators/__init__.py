"""Gradient estimators behind one registry: ``get(name, **options)``, ``names()``, ``options()``.

Every estimator has ``loss(model, x, y, loss_fn=None)``; ``.backward()`` on its result leaves the
estimate of ``∇ mean_i E_z[loss_i]`` in ``.grad``. Each is a class registered by
:func:`register`; its constructor's keywords are its options, with their defaults.
"""

from __future__ import annotations

from . import adf, exact, local, psa, score
from .adf import ADF, LocalReparam, MomentPropagation
from .base import (
    ESTIMATORS,
    Estimator,
    LossFn,
    check_batch,
    cross_entropy,
    get,
    names,
    options,
    register,
)
from .exact import Exact
from .local import ST, Concrete, DetST, HardST, LocalEstimator, Mean
from .psa import PSA
from .score import ARM, Reinforce

__all__ = [
    "ADF",
    "ARM",
    "ESTIMATORS",
    "PSA",
    "ST",
    "Concrete",
    "DetST",
    "Estimator",
    "Exact",
    "HardST",
    "LocalEstimator",
    "LocalReparam",
    "LossFn",
    "Mean",
    "MomentPropagation",
    "Reinforce",
    "adf",
    "check_batch",
    "cross_entropy",
    "exact",
    "get",
    "local",
    "names",
    "options",
    "psa",
    "register",
    "score",
]
