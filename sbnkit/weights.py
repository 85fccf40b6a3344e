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
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import noise as noise_lib
from .errors import UserError
from .units import sign

WEIGHT_MODES = ("sample", "mode", "mean")


class BernoulliWeight(nn.Module):
    """Parametrization ``η -> w`` of Bernoulli ``±1`` weights (see the module docstring).

    ``init_scale``: when registered on a float weight ``w0``, the latent starts at
    ``η = init_scale · w0 / std(w0)``.
    """

    def __init__(
        self,
        noise: str | noise_lib.Noise = "logistic",
        scale: float = 0.5,
        mode: str = "sample",
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
            w = self.noise.sample_sign(eta.detach())
        elif self.mode == "mode":
            w = sign(eta)
        else:
            w = self.noise.mean_fn(eta)
        return w.detach() + (eta - eta.detach())  # value exactly w, gradient to η unchanged

    def right_inverse(self, w0: torch.Tensor) -> torch.Tensor:
        std = w0.detach().std() if w0.numel() > 1 else w0.detach().abs()
        eta = self.init_scale * w0.detach() / std.clamp_min(1e-12)
        if self.clip is not None:
            eta = eta.clamp(-self.clip, self.clip)
        return eta

    def extra_repr(self) -> str:
        return f"noise={self.noise!r}, mode={self.mode}, clip={self.clip}"


def check_weight_mode(mode: str) -> str:
    """``mode`` if it is a known weight mode, else a :class:`UserError`."""
    if mode not in WEIGHT_MODES:
        raise UserError(f"unknown weight mode {mode!r}; known modes: {', '.join(WEIGHT_MODES)}")
    return mode


def make_binary(module: nn.Module, **options) -> nn.Module:
    """Register :class:`BernoulliWeight` on ``module.weight`` (a Linear or Conv2d) in place."""
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise UserError(f"binary weights need nn.Linear or nn.Conv2d, got {type(module).__name__}")
    parametrize.register_parametrization(module, "weight", BernoulliWeight(**options))
    return module


def bernoulli_parametrizations(model: nn.Module) -> Iterator[tuple[nn.Module, BernoulliWeight]]:
    """``(module, parametrization)`` for every Bernoulli weight in ``model``."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            for p in m.parametrizations.weight:
                if isinstance(p, BernoulliWeight):
                    yield m, p


def latent_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The latent tensors ``η`` of all Bernoulli weights (to give them their own optimizer)."""
    return [m.parametrizations.weight.original for m, _ in bernoulli_parametrizations(model)]


def real_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All parameters of ``model`` that are not Bernoulli latents."""
    latent = {id(p) for p in latent_parameters(model)}
    return [p for p in model.parameters() if id(p) not in latent]


@torch.no_grad()
def clip_latents_(model: nn.Module) -> None:
    """Project the latents of parametrizations with ``clip`` set to ``[-clip, clip]``."""
    for m, p in bernoulli_parametrizations(model):
        if p.clip is not None:
            m.parametrizations.weight.original.clamp_(-p.clip, p.clip)


@contextmanager
def using_weight_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Temporarily put every Bernoulli weight of ``model`` in ``mode``."""
    check_weight_mode(mode)
    params = [p for _, p in bernoulli_parametrizations(model)]
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
    """A copy of ``model`` whose Bernoulli weights are replaced by plain ``±1`` tensors ``sign η``.

    Each parametrized Linear/Conv2d becomes a plain one (the original model is untouched);
    binary units are unchanged.
    """
    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        if any(m is pm for pm, _ in bernoulli_parametrizations(m)):
            eta = m.parametrizations.weight.original.detach()
            parent_name, _, child = name.rpartition(".")
            parent = out.get_submodule(parent_name) if parent_name else out
            setattr(parent, child, _plain_module(m, sign(eta)))
    return out
