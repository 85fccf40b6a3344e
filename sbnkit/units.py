"""Stochastic binary units ``x = sign(a - z)`` and their local gradient rules.

States are ``±1`` and ``sign(0) := +1`` everywhere in sbnkit (a tie ``a == z`` gives ``+1``).

A *rule* says how one unit behaves in the forward and backward pass:

========== ===================================== ==============================================
rule       forward                               backward ``∂x/∂a``
========== ===================================== ==============================================
st         sample ``sign(a - z)``                ``proxy'(a)``; default proxy ``noise``: ``2 p(a)``
det_st     mode ``sign(a)`` (``z = 0``)          ``proxy'(a)``; default proxy ``htanh``
concrete   ``tanh((a - z) / (2 tau))``           pathwise (autograd)
mean       ``E[x | a] = 2 F(a) - 1``             pathwise (autograd)
========== ===================================== ==============================================

Proxies (the function whose derivative replaces that of ``sign``):

============ ============================================ ========================================
proxy        f(a)                                         f'(a)
============ ============================================ ========================================
noise        ``2 F(a) - 1`` (the unit's mean)             ``2 p(a)``; logistic(1): ``2σ(a)(1-σ(a))``
identity     ``a``                                        ``1``
htanh        ``clip(a, -1, 1)``                           ``1[|a| <= 1]``
tanh         ``tanh(a)``                                  ``1 - tanh(a)^2``
approxsign   ``2a - a|a|`` on ``[-1, 1]``, ``±1`` outside ``2 (1 - |a|)_+``
swishsign    ``2σ(βa)(1 + βa(1 - σ(βa))) - 1``            ``β (2 - βa tanh(βa/2)) / (1 + cosh(βa))``
============ ============================================ ========================================

With the ``noise`` proxy the ST backward is the principled one of Shekhovtsov & Yanush (2021,
ST for binary activations): choosing a proxy is choosing the injected noise. With logistic noise of
scale 1 it is the deep ST of the PSA paper.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from . import noise as noise_lib
from .errors import UserError

__all__ = [
    "PROXIES",
    "RULES",
    "BinaryUnit",
    "ProxyName",
    "Rule",
    "RuleKind",
    "SignWithProxy",
    "binary_units",
    "proxy_grad",
    "sign",
    "using_rule",
]

RuleKind = Literal["st", "det_st", "concrete", "mean"]
ProxyName = Literal["noise", "identity", "htanh", "tanh", "approxsign", "swishsign"]
RULES: tuple[str, ...] = get_args(RuleKind)
PROXIES: tuple[str, ...] = get_args(ProxyName)


def sign(t: torch.Tensor) -> torch.Tensor:
    """``±1`` with ``sign(0) = +1``, in the dtype of ``t``."""
    return (t >= 0).to(t.dtype).mul_(2.0).sub_(1.0)


def proxy_grad(
    name: ProxyName, a: torch.Tensor, noise: noise_lib.Noise, beta: float
) -> torch.Tensor:
    """The derivative ``f'(a)`` of the named proxy (see the module table). Raises
    :class:`UserError` for an unknown proxy."""
    if name == "noise":
        return noise.mean_grad(a)
    if name == "identity":
        return torch.ones_like(a)
    if name == "htanh":
        return (a.abs() <= 1.0).to(a.dtype)
    if name == "tanh":
        t = torch.tanh(a)
        return 1.0 - t * t
    if name == "approxsign":
        return 2.0 * (1.0 - a.abs()).clamp_min(0.0)
    if name == "swishsign":
        ba = beta * a
        return beta * (2.0 - ba * torch.tanh(0.5 * ba)) / (1.0 + torch.cosh(ba))
    raise UserError(f"unknown proxy {name!r}; known proxies: {', '.join(PROXIES)}")


class SignWithProxy(torch.autograd.Function):
    """Forward: the given ``±1`` states ``x`` (a sample or ``sign(a)``).

    Backward: ``grad · f'(a)``.
    """

    @staticmethod
    def forward(ctx, a, x, grad_fn):  # type: ignore[override]
        ctx.save_for_backward(a)
        ctx.grad_fn = grad_fn
        return x.clone()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (a,) = ctx.saved_tensors
        return grad_out * ctx.grad_fn(a), None, None


@dataclass(frozen=True)
class Rule:
    """How a unit computes its forward value and its backward factor. Raises
    :class:`UserError` for an unknown ``kind`` or ``proxy``, or a non-positive ``tau``."""

    kind: RuleKind = "st"
    proxy: ProxyName | None = None
    tau: float = 1.0
    beta: float = 5.0

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise UserError(f"unknown rule {self.kind!r}; known rules: {', '.join(RULES)}")
        if self.proxy is not None and self.proxy not in PROXIES:
            raise UserError(f"unknown proxy {self.proxy!r}; known proxies: {', '.join(PROXIES)}")
        if not self.tau > 0:
            raise UserError(f"concrete temperature tau must be positive, got {self.tau!r}")

    @property
    def resolved_proxy(self) -> str:
        """The proxy in force: ``noise`` for ``st``, ``htanh`` for ``det_st`` unless set."""
        if self.proxy is not None:
            return self.proxy
        return "htanh" if self.kind == "det_st" else "noise"


class BinaryUnit(nn.Module):
    """A layer of stochastic binary units ``x = sign(a - z)``, ``z ~ noise``, states ``±1``.

    ``rule`` (a :class:`Rule` or its kind) sets the forward/backward behaviour; estimators and
    evaluation switch it temporarily with :func:`using_rule`. Raises :class:`UserError` for an
    unknown noise or rule, or a bad noise scale.
    """

    def __init__(
        self,
        noise: noise_lib.NoiseName | noise_lib.Noise = "logistic",
        scale: float = 1.0,
        rule: Rule | RuleKind = "st",
    ) -> None:
        super().__init__()
        self.noise = noise_lib.get(noise, scale)
        self.rule = rule if isinstance(rule, Rule) else Rule(rule)

    def sample(self, a: torch.Tensor) -> torch.Tensor:
        """A sample ``sign(a - z)`` with no gradient."""
        return self.noise.sample_sign(a.detach())

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        rule = self.rule
        if rule.kind == "mean":
            return self.noise.mean_fn(a)
        if rule.kind == "concrete":
            return torch.tanh((a - self.noise.sample(a)) / (2.0 * rule.tau))
        noise, proxy, beta = self.noise, rule.resolved_proxy, rule.beta

        def grad_fn(t: torch.Tensor) -> torch.Tensor:
            return proxy_grad(proxy, t, noise, beta)

        x = self.sample(a) if rule.kind == "st" else sign(a.detach())
        if not a.requires_grad:
            return x
        return SignWithProxy.apply(a, x, grad_fn)

    def extra_repr(self) -> str:
        return f"noise={self.noise!r}, rule={self.rule}"


def binary_units(model: nn.Module) -> list[BinaryUnit]:
    """All :class:`BinaryUnit` submodules of ``model``, in registration order."""
    return [m for m in model.modules() if isinstance(m, BinaryUnit)]


@contextmanager
def using_rule(model: nn.Module, rule: Rule | RuleKind) -> Iterator[None]:
    """Temporarily give every binary unit of ``model`` the same rule. Raises
    :class:`UserError` for an unknown rule."""
    rule = rule if isinstance(rule, Rule) else Rule(rule)
    units = binary_units(model)
    saved = [u.rule for u in units]
    for u in units:
        u.rule = rule
    try:
        yield
    finally:
        for u, r in zip(units, saved, strict=True):
            u.rule = r
