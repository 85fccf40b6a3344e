"""Model builders: the plain SBN MLP of the papers, a conv SBN for 28×28 inputs, CIFAR_S1.

Common options (all builders):

* ``noise``/``noise_scale``: the units' injected noise (default logistic of scale 1, as in PSA);
* ``norm``: ``None`` (plain SBN), ``"batch"`` (BatchNorm) or ``"affine"`` (per-channel scale/shift)
  between each op and its unit;
* ``binary_weights``: Bernoulli ``±1`` weights on every hidden op (``binary_first=False`` keeps the
  first, pixel-reading layer real; ``binary_head=True`` binarizes the output Linear too);
  ``weight_noise``/``weight_noise_scale``/``weight_mode``/``latent_clip`` configure them
  (see :mod:`sbnkit.weights`);
* ``rule``: the units' default rule when the model is called directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import UserError
from .network import SBN, ChannelAffine, Head, Stage
from .units import BinaryUnit
from .weights import make_binary

NORMS = (None, "batch", "affine")


def _norm(kind: str | None, channels: int, conv: bool) -> nn.Module | None:
    if kind is None:
        return None
    if kind == "batch":
        return nn.BatchNorm2d(channels) if conv else nn.BatchNorm1d(channels)
    if kind == "affine":
        return ChannelAffine(channels)
    raise UserError(f"unknown norm {kind!r}; known norms: none, batch, affine")


class _Builder:
    """Shared option handling for the builders below."""

    def __init__(
        self,
        noise: str = "logistic",
        noise_scale: float = 1.0,
        norm: str | None = None,
        binary_weights: bool = False,
        binary_first: bool = True,
        binary_head: bool = False,
        weight_noise: str = "logistic",
        weight_noise_scale: float = 0.5,
        weight_mode: str = "sample",
        latent_clip: float | None = None,
        rule: str = "st",
    ) -> None:
        if norm == "none":
            norm = None
        if norm not in NORMS:
            raise UserError(f"unknown norm {norm!r}; known norms: none, batch, affine")
        self.noise, self.noise_scale, self.norm, self.rule = noise, noise_scale, norm, rule
        self.binary_weights, self.binary_first, self.binary_head = (
            binary_weights,
            binary_first,
            binary_head,
        )
        self.weight_options = dict(
            noise=weight_noise, scale=weight_noise_scale, mode=weight_mode, clip=latent_clip
        )

    def stage(self, op: nn.Linear | nn.Conv2d, first: bool) -> Stage:
        conv = isinstance(op, nn.Conv2d)
        channels = op.out_channels if conv else op.out_features
        if self.binary_weights and (self.binary_first or not first):
            make_binary(op, **self.weight_options)
        unit = BinaryUnit(self.noise, self.noise_scale, self.rule)
        return Stage(op, unit, _norm(self.norm, channels, conv))

    def head(self, in_features: int, num_classes: int, pool: str) -> Head:
        linear = nn.Linear(in_features, num_classes)
        if self.binary_weights and self.binary_head:
            make_binary(linear, **self.weight_options)
        return Head(linear, pool)


def _check_sizes(sizes: Sequence[int], what: str, minimum: int) -> list[int]:
    sizes = list(sizes)
    if len(sizes) < minimum or any(not isinstance(s, int) or s <= 0 for s in sizes):
        raise UserError(f"{what} must be at least {minimum} positive integers, got {sizes!r}")
    return sizes


def mlp(sizes: Sequence[int], **options) -> SBN:
    """``sizes = [in, h1, ..., hk, out]``: k binary stages (Linear → [norm] → unit), Linear head.

    Inputs of any shape ``[B, ...]`` with ``in`` features are accepted after flattening only if
    ``in`` equals the flattened size; pass ``input_shape`` to accept e.g. ``[B, 1, 28, 28]``.
    """
    input_shape = options.pop("input_shape", None)
    sizes = _check_sizes(sizes, "mlp sizes", 3)
    b = _Builder(**options)
    has_bias = b.norm is None
    stages: list[nn.Module] = []
    if input_shape is not None and tuple(input_shape) != (sizes[0],):
        stages.append(nn.Flatten())
    for k, (n_in, n_out) in enumerate(zip(sizes[:-2], sizes[1:-1], strict=True)):
        stages.append(b.stage(nn.Linear(n_in, n_out, bias=has_bias), first=k == 0))
    return SBN(stages, b.head(sizes[-2], sizes[-1], "flatten"), input_shape or (sizes[0],))


def convnet(
    in_channels: int = 1,
    num_classes: int = 10,
    channels: Sequence[int] = (32, 64, 128),
    image_size: int = 28,
    **options,
) -> SBN:
    """A conv SBN for small images: 3×3 convs (stride 1, then stride 2), global-average head.

    Layer i > 0 halves the resolution with stride 2 (no pooling, so path estimators apply).
    """
    channels = _check_sizes(channels, "convnet channels", 1)
    b = _Builder(**options)
    has_bias = b.norm is None
    stages, c_in = [], in_channels
    for k, c_out in enumerate(channels):
        conv = nn.Conv2d(c_in, c_out, 3, stride=1 if k == 0 else 2, padding=1, bias=has_bias)
        stages.append(b.stage(conv, first=k == 0))
        c_in = c_out
    return SBN(stages, b.head(c_in, num_classes, "avg"), (in_channels, image_size, image_size))


CIFAR_S1_LAYERS = (  # (out channels, kernel, stride): the PSA paper's all-conv SBN, no padding
    (96, 3, 1),
    (96, 3, 1),
    (96, 3, 2),
    (192, 3, 1),
    (192, 3, 1),
    (192, 3, 2),
    (192, 3, 1),
    (192, 1, 1),
)


def cifar_s1(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, **options) -> SBN:
    """CIFAR_S1 of the PSA paper (Shekhovtsov, Yanush & Flach 2020, CIFAR-10 experiment): 8
    binary conv stages, flatten, Linear(768 → 10)."""
    b = _Builder(**options)
    has_bias = b.norm is None
    stages, c_in, size = [], in_channels, image_size
    for k, (c_out, kernel, stride) in enumerate(CIFAR_S1_LAYERS):
        stages.append(b.stage(nn.Conv2d(c_in, c_out, kernel, stride, bias=has_bias), k == 0))
        c_in, size = c_out, (size - kernel) // stride + 1
    if size < 1:
        raise UserError(f"image_size {image_size} is too small for cifar_s1; use 32")
    return SBN(
        stages,
        b.head(c_in * size * size, num_classes, "flatten"),
        (in_channels, image_size, image_size),
    )


@torch.no_grad()
def data_init_(model: SBN, x: torch.Tensor) -> None:
    """Data-dependent init (as in the PSA authors' public code): standardise each real-weight,
    norm-free stage's pre-activations on the batch ``x`` (``W ← W/s``, ``b ← (b - m)/s`` per
    channel), then pass the units' means ``E[x|a]`` on to the next stage."""
    model.check_input(x)
    for stage in model.stages:
        if not isinstance(stage, Stage):
            x = stage(x)
            continue
        op = stage.op
        trainable = stage.norm is None and "weight" in op._parameters and op.bias is not None
        if trainable:
            t = op(x)
            dims = [d for d in range(t.dim()) if d != 1]
            m, s = t.mean(dim=dims), t.std(dim=dims).clamp_min(1e-6)
            shape = (-1,) + (1,) * (op.weight.dim() - 1)
            op.weight.div_(s.view(shape))
            op.bias.sub_(m).div_(s)
        x = stage.unit.noise.mean_fn(stage.preactivation(x))


MODELS = {"mlp": mlp, "convnet": convnet, "cifar_s1": cifar_s1}
