"""Bernoulli binary weights as a parametrization of any ``nn.Linear`` / ``nn.Conv2d`` weight.

A latent ``η`` (the parametrization's original tensor) defines independent weights
``w = sign(η - z)``, ``z ~ noise``, so ``P(w = +1) = F(η)`` and ``E[w] = 2 F(η) - 1``.

* logistic noise of scale ½ (the default): ``P(w = +1) = σ(2η)``, ``E[w] = tanh(η)``: the latent is
  the Bernoulli half-logit and the mirror map is the negative entropy (Shekhovtsov & Yanush
  2021, mirror descent);
* uniform noise on ``[-1, 1]``: ``E[w] = clip(η, -1, 1)``, the lazy Euclidean mirror map.

Forward modes: ``sample`` (``w ~ Bernoulli``, one draw per forward pass), ``mode`` (``sign η``) and
``mean`` (``E[w]``). In every mode the backward passes ``∂ℓ/∂w`` to ``η`` unchanged, which is
the ST estimate of the gradient with respect to the *mean* ``E[w]``; any torch optimizer stepping
on ``η`` therefore performs mirror descent over the weight probabilities, and weight decay ``c``
on ``η`` is the latent weight decay = ``c · KL(q ‖ uniform)`` of Shekhovtsov & Yanush 2021
(variational inference). With ``clip`` set, the latents are projected to ``[-clip, clip]`` by
:func:`clip_latents_` after each step (BinaryConnect).

Every binary-weight parametrization derives from :class:`LatentWeight` (the other methods' live in
:mod:`sbnkit.optim`); :func:`binarize`, :func:`latent_parameters`, :func:`real_parameters`,
:func:`clip_latents_` and :func:`using_weight_mode` handle them all.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import noise as noise_lib
from .errors import UserError
from .units import sign

__all__ = [
    "WEIGHT_MODES",
    "WeightMode",
    "BernoulliWeight",
    "LatentWeight",
    "bernoulli_parametrizations",
    "binarize",
    "binary_parametrizations",
    "check_weight_mode",
    "clip_latents_",
    "latent_parameters",
    "make_binary",
    "real_parameters",
    "straight_through",
    "unsaturated_ratio",
    "using_weight_mode",
]

WeightMode = Literal["sample", "mode", "mean"]
WEIGHT_MODES: tuple[str, ...] = get_args(WeightMode)


class _StraightThrough(torch.autograd.Function):
    """Forward ``value(latent)`` (computed without autograd); backward the incoming gradient to
    ``latent`` unchanged. One op instead of ``w.detach() + (latent - latent.detach())``."""

    @staticmethod
    def forward(ctx, latent: torch.Tensor, value: Callable[[torch.Tensor], torch.Tensor]):
        return value(latent)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(
    latent: torch.Tensor, value: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``value(latent)`` in the forward pass, the identity in the backward pass."""
    return _StraightThrough.apply(latent, value)


class LatentWeight(nn.Module):
    """Base class of binary-weight parametrizations ``latent -> weight``.

    Subclasses keep ``mode`` (one of :data:`WEIGHT_MODES`, switched by :func:`using_weight_mode`;
    ``"mode"`` must give the binary weights) and ``clip`` (``None`` or the latent bound applied
    by :func:`clip_latents_`), and define :meth:`binary`, the exact ``±1`` weights that
    :func:`binarize` writes.
    """

    mode: WeightMode = "mode"
    clip: float | None = None

    def binary(self, latent: torch.Tensor) -> torch.Tensor:
        """The deployed ``±1`` weights for ``latent`` (default ``sign``, ``sign(0) = +1``)."""
        return sign(latent)

    def unsaturated(self, latent: torch.Tensor) -> torch.Tensor | None:
        """Where the training forward of a deterministic soft parametrization is still far from
        its evaluation weights: a boolean mask shaped like ``latent``, or ``None`` (the default)
        when the method has no such notion (:func:`unsaturated_ratio`)."""
        return None


class BernoulliWeight(LatentWeight):
    """Parametrization ``η -> w`` of Bernoulli ``±1`` weights (see the module docstring).

    ``init_scale``: when registered on a float weight ``w0``, the latent starts at
    ``η = init_scale · w0 / std(w0)``. Raises :class:`UserError` for an unknown noise or mode,
    a bad noise scale or a non-positive ``clip``.
    """

    def __init__(
        self,
        noise: noise_lib.NoiseName | noise_lib.Noise = "logistic",
        scale: float = 0.5,
        mode: WeightMode = "sample",
        clip: float | None = None,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.noise = noise_lib.get(noise, scale)
        self.mode = check_weight_mode(mode)
        if clip is not None and not clip > 0:
            raise UserError(f"latent clip must be positive or None, got {clip!r}")
        self.clip = clip
        self.init_scale = float(init_scale)

    def forward(self, eta: torch.Tensor) -> torch.Tensor:
        if self.mode == "sample":
            return straight_through(eta, self.noise.sample_sign)
        if self.mode == "mode":
            return straight_through(eta, sign)
        return straight_through(eta, self.noise.mean_fn)

    def right_inverse(self, w0: torch.Tensor) -> torch.Tensor:
        std = w0.detach().std() if w0.numel() > 1 else w0.detach().abs()
        eta = self.init_scale * w0.detach() / std.clamp_min(1e-12)
        if self.clip is not None:
            eta = eta.clamp(-self.clip, self.clip)
        return eta

    def extra_repr(self) -> str:
        return f"noise={self.noise!r}, mode={self.mode}, clip={self.clip}"


def check_weight_mode(mode: str) -> WeightMode:
    """``mode`` if it is a known weight mode, else a :class:`UserError`."""
    if mode not in WEIGHT_MODES:
        raise UserError(f"unknown weight mode {mode!r}; known modes: {', '.join(WEIGHT_MODES)}")
    return mode  # type: ignore[return-value]


def make_binary(module: nn.Module, parametrization: LatentWeight | None = None) -> nn.Module:
    """Register ``parametrization`` (default ``BernoulliWeight()``; pass e.g.
    ``BernoulliWeight(mode="mean")`` for other options) on ``module.weight`` (a Linear or
    Conv2d) in place; returns ``module``. Raises :class:`UserError` for other modules."""
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise UserError(f"binary weights need nn.Linear or nn.Conv2d, got {type(module).__name__}")
    parametrize.register_parametrization(module, "weight", parametrization or BernoulliWeight())
    return module


def binary_parametrizations(model: nn.Module) -> Iterator[tuple[nn.Module, LatentWeight]]:
    """``(module, parametrization)`` for every binary weight (any :class:`LatentWeight`)."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            for p in m.parametrizations.weight:
                if isinstance(p, LatentWeight):
                    yield m, p


def bernoulli_parametrizations(model: nn.Module) -> Iterator[tuple[nn.Module, BernoulliWeight]]:
    """``(module, parametrization)`` for every Bernoulli weight in ``model``."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            for p in m.parametrizations.weight:
                if isinstance(p, BernoulliWeight):
                    yield m, p


def latent_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The latent tensors of all binary weights (to give them their own optimizer)."""
    return [m.parametrizations.weight.original for m, _ in binary_parametrizations(model)]


def real_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All parameters of ``model`` that are not binary-weight latents."""
    latent = {id(p) for p in latent_parameters(model)}
    return [p for p in model.parameters() if id(p) not in latent]


@torch.no_grad()
def unsaturated_ratio(model: nn.Module) -> float | None:
    """The fraction of ``model``'s binary weights that :meth:`LatentWeight.unsaturated` flags,
    among the weights of the parametrizations that flag any (e.g. MD-tanh-S's ``β|θ| < 1``);
    ``None`` when no parametrization has the notion. A large fraction at the end of training
    means the evaluated ``±1`` network is not the network that was trained."""
    flagged = total = 0
    for m, p in binary_parametrizations(model):
        mask = p.unsaturated(m.parametrizations.weight.original.detach())
        if mask is not None:
            flagged += int(mask.sum())
            total += mask.numel()
    return flagged / total if total else None


@torch.no_grad()
def clip_latents_(model: nn.Module) -> None:
    """Project the latents of parametrizations with ``clip`` set to ``[-clip, clip]``."""
    for m, p in binary_parametrizations(model):
        if p.clip is not None:
            m.parametrizations.weight.original.clamp_(-p.clip, p.clip)


@contextmanager
def using_weight_mode(model: nn.Module, mode: WeightMode) -> Iterator[None]:
    """Temporarily put every binary weight of ``model`` in ``mode``. Raises :class:`UserError`
    for an unknown mode."""
    check_weight_mode(mode)
    params = [p for _, p in binary_parametrizations(model)]
    saved = [p.mode for p in params]
    for p in params:
        p.mode = mode
    try:
        yield
    finally:
        for p, m in zip(params, saved, strict=True):
            p.mode = m


def _plain_module(m: nn.Linear | nn.Conv2d, weight: torch.Tensor) -> nn.Module:
    """A new, unparametrized Linear/Conv2d with ``m``'s configuration, ``weight`` and bias."""
    if isinstance(m, nn.Linear):
        out = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    else:
        out = nn.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
        )
    out = out.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if m.bias is not None:
            out.bias.copy_(m.bias)
    out.train(m.training)
    return out


def binarize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose binary weights are replaced by plain ``±1`` tensors.

    Each parametrized Linear/Conv2d becomes a plain one holding its parametrization's
    :meth:`~LatentWeight.binary` weights (``sign η`` for Bernoulli weights; the original model is
    untouched); binary units are unchanged.
    """
    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        found = [p for pm, p in binary_parametrizations(m) if pm is m]
        if found:
            eta = m.parametrizations.weight.original.detach()
            parent_name, _, child = name.rpartition(".")
            parent = out.get_submodule(parent_name) if parent_name else out
            setattr(parent, child, _plain_module(m, found[0].binary(eta)))
    return out
