"""Binary-weight learning methods: parametrizations, optimizers and their registry.

A method is a weight parametrization (a :class:`~sbnkit.weights.LatentWeight`, registered on
``nn.Linear`` / ``nn.Conv2d`` weights) plus a ``torch.optim.Optimizer`` for its latents; real
parameters (BatchNorm, biases, real heads) go to any other optimizer. :func:`get` returns a
:class:`Method`; :func:`names` lists them:

============== ============================ =============================================
name           parametrization              optimizer
============== ============================ =============================================
binaryconnect  BernoulliWeight (sign, clip) :class:`BinaryConnect` (Adam + clip to ±1)
md             BernoulliWeight              Adam or SGD on the latents (mirror descent)
md_tanh_s      :class:`TanhWeight`          Adam
bayesbinn      :class:`BayesBiNNWeight`     :class:`BayesBiNN`
adaste         :class:`AdaSTEWeight`        :class:`AdaSTE`
bop            :class:`SignWeight`          :class:`Bop`
============== ============================ =============================================

Per-epoch and per-step schedules are hooks (:class:`Schedules`). Functional forms live in
:mod:`sbnkit.optim.functional` (the reference); AdaSTE and BayesBiNN run their bit-identical
compiled CPU forms, :mod:`sbnkit.optim.compiled`.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn

from ..errors import UserError
from ..weights import BernoulliWeight, LatentWeight, WeightMode, make_binary
from . import functional
from ._checks import at_least, choice, in_range, positive
from .adaste import AdaSTE, AdaSTEWeight
from .bayesbinn import BayesBiNN, BayesBiNNWeight, share_sample_generator
from .binaryconnect import BinaryConnect
from .bop import Bop, SignWeight
from .md_tanh_s import TanhWeight
from .schedule import Schedules

__all__ = [
    "BASES",
    "METHODS",
    "MIRRORS",
    "AdaSTE",
    "AdaSTEWeight",
    "BayesBiNN",
    "BayesBiNNWeight",
    "Base",
    "BinaryConnect",
    "Bop",
    "Method",
    "Mirror",
    "Schedules",
    "SignWeight",
    "TanhWeight",
    "attach",
    "binaryconnect_weight",
    "functional",
    "get",
    "md_optimizer",
    "md_weight",
    "names",
    "share_sample_generator",
    "tanh_optimizer",
]

Mirror = Literal["tanh", "clip"]
Base = Literal["adam", "sgd"]
MIRRORS = {"tanh": ("logistic", 0.5), "clip": ("uniform", 1.0)}
BASES: tuple[str, ...] = get_args(Base)


def md_weight(
    mirror: Mirror = "tanh",
    mode: WeightMode = "sample",
    clip: float | None = None,
    init_scale: float = 1.0,
) -> BernoulliWeight:
    """Bernoulli weights for mirror descent: ``mirror`` ``"tanh"`` (logistic noise of scale ½,
    ``E[w] = tanh η``) or ``"clip"`` (uniform noise on ``[-1, 1]``, ``E[w] = clip(η, -1, 1)``).
    Raises :class:`UserError` for an unknown mirror or mode, or a bad ``clip``."""
    noise, scale = MIRRORS[choice("mirror", mirror, tuple(MIRRORS))]
    return BernoulliWeight(noise, scale, mode, clip, init_scale)


def md_optimizer(
    params: Iterable[torch.Tensor] | Iterable[dict],
    lr: float = 0.01,
    base: Base = "adam",
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Adam (``base="adam"``) or SGD on Bernoulli latents; ``weight_decay`` is the latent weight
    decay, i.e. the KL to the uniform prior. Raises ``UserError`` for bad values."""
    positive("lr", lr)
    at_least("weight_decay", weight_decay, 0.0)
    if choice("base", base, BASES) == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    in_range("momentum", momentum, 0.0, 1.0)
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )


def tanh_optimizer(
    params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 1e-3, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Adam on MD-tanh-S latents (the published recipe). Raises ``UserError`` for bad values."""
    return md_optimizer(params, lr, "adam", weight_decay=weight_decay)


def binaryconnect_weight(init_scale: float = 0.5) -> BernoulliWeight:
    """BinaryConnect weights: ``sign η`` forward, identity backward, latents clipped to ``[-1, 1]``
    (uniform noise, so weight mode ``"sample"`` is stochastic BinaryConnect). Raises
    :class:`UserError` for a bad ``init_scale``."""
    return BernoulliWeight("uniform", 1.0, "mode", 1.0, init_scale)


def _defaults(factory: Callable[..., Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``{key: default}`` of ``factory``'s parameters ``keys``, read from its signature."""
    params = inspect.signature(factory).parameters
    return {k: params[k].default for k in keys}


@dataclass(frozen=True)
class Method:
    """A binary-weight method: its parametrization and optimizer factories and their options.

    ``weight_keys`` / ``optim_keys`` name the keyword options that the method exposes of the two
    factories; :attr:`weight_options` / :attr:`optim_options` map them to their defaults, read
    from the factories' signatures (the one place they are written). A key in both (AdaSTE's
    ``rule``) goes to both. :attr:`required` are the optimizer's keywords without a default.
    """

    name: str
    summary: str
    parametrization: Callable[..., LatentWeight]
    optimizer: Callable[..., torch.optim.Optimizer]
    weight_keys: tuple[str, ...] = ()
    optim_keys: tuple[str, ...] = ()
    weight_options: dict[str, Any] = field(init=False)
    optim_options: dict[str, Any] = field(init=False)
    required: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        params = inspect.signature(self.optimizer).parameters.values()
        required = tuple(
            p.name
            for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
        )
        object.__setattr__(
            self, "weight_options", _defaults(self.parametrization, self.weight_keys)
        )
        object.__setattr__(self, "optim_options", _defaults(self.optimizer, self.optim_keys))
        object.__setattr__(self, "required", required)

    def split(self, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``options`` as ``(parametrization options, optimizer options)``.

        Raises :class:`UserError` for a key that neither takes (naming a close match).
        """
        known = [*self.weight_options, *self.optim_options, *self.required]
        for key in options:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
                hint = f"did you mean {close[0]}?" if close else f"valid: {', '.join(known)}"
                raise UserError(f"unknown option {key} for method {self.name!r}; {hint}")
        weight = {k: v for k, v in options.items() if k in self.weight_options}
        optim = {k: v for k, v in options.items() if k in self.optim_options or k in self.required}
        return weight, optim

    def make_parametrization(self, **options) -> LatentWeight:
        """A new parametrization with ``options`` (defaults for the rest)."""
        return self.parametrization(**{**self.weight_options, **options})

    def make_optimizer(self, params: Iterable[torch.Tensor] | Iterable[dict], **options):
        """The optimizer of the latents ``params`` with ``options`` (defaults for the rest).

        Raises :class:`UserError` if a required option (``train_size``) is missing.
        """
        missing = [k for k in self.required if k not in options]
        if missing:
            raise UserError(f"method {self.name!r} needs {', '.join(missing)}")
        return self.optimizer(params, **{**self.optim_options, **options})

    def check(self, options: dict[str, Any]) -> None:
        """Build both halves on a dummy tensor: raises :class:`UserError` naming a bad option."""
        weight, optim = self.split(options)
        self.make_parametrization(**weight)
        dummy = {k: 1 for k in self.required if k not in optim}
        self.make_optimizer([torch.zeros(1, requires_grad=True)], **optim, **dummy)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "binaryconnect",
            "sign forward, identity straight-through, Adam, latents clipped to [-1, 1]",
            binaryconnect_weight,
            BinaryConnect,
            ("init_scale",),
            ("lr", "weight_decay", "clip"),
        ),
        Method(
            "md",
            "Bernoulli weights, any optimizer on the latents (mirror descent)",
            md_weight,
            md_optimizer,
            ("mirror", "mode", "clip", "init_scale"),
            ("lr", "base", "momentum", "nesterov", "weight_decay"),
        ),
        Method(
            "md_tanh_s",
            "w = tanh(beta theta), full straight-through, beta annealed per step, Adam",
            TanhWeight,
            tanh_optimizer,
            ("beta", "beta_scale", "beta_interval", "beta_max"),
            ("lr", "weight_decay"),
        ),
        Method(
            "bayesbinn",
            "Bayesian learning rule for Bernoulli weights with relaxed samples",
            BayesBiNNWeight,
            BayesBiNN,
            ("temperature", "init"),
            ("lr", "momentum", "train_scale", "prior", "kl_weight"),
        ),
        Method(
            "adaste",
            "adaptive straight-through: forward w*(theta), backward rho(theta, g) g",
            AdaSTEWeight,
            AdaSTE,
            ("alpha", "beta", "beta_rate", "rule", "init"),
            ("lr", "momentum", "train_scale", "kl_weight", "rule"),
        ),
        Method(
            "bop",
            "binary optimizer: flip w where the gradient average agrees with w beyond a threshold",
            SignWeight,
            Bop,
            (),
            ("lr", "threshold"),
        ),
    )
}


def names() -> list[str]:
    """The registered method names."""
    return list(METHODS)


def get(name: str) -> Method:
    """The :class:`Method` called ``name``; raises :class:`UserError` for an unknown name."""
    if name not in METHODS:
        raise UserError(f"unknown binary-weight method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def attach(
    model: nn.Module,
    method: str,
    modules: Iterable[nn.Module] | None = None,
    **options,
) -> nn.Module:
    """Register ``method``'s parametrization (with ``options``) on the weight of every
    ``nn.Linear`` / ``nn.Conv2d`` in ``modules`` (default: all of ``model``'s that have no
    parametrization yet), in place; returns ``model``. Raises :class:`UserError` for bad options.
    """
    spec = get(method)
    targets = modules
    if targets is None:
        targets = [
            m
            for m in model.modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))
            and not nn.utils.parametrize.is_parametrized(m, "weight")
        ]
    for m in list(targets):
        make_binary(m, spec.make_parametrization(**options))
    return model
