"""Model builders: the plain SBN MLP of the papers, a conv SBN for 28×28 inputs, CIFAR_S1, and
the binary-weight networks with real ReLU activations of AdaSTE and BayesBiNN (``vgg16``,
``resnet18``, ``vgg_binaryconnect``, ``mlp_binaryconnect``, each with a ``width`` multiplier).

Common options (all builders):

* ``noise``/``noise_scale``: the units' injected noise (default logistic of scale 1, as in PSA);
* ``norm``: ``None`` (plain SBN), ``"batch"`` (BatchNorm) or ``"affine"`` (per-channel scale/shift)
  between each op and its unit;
* ``binary_weights``: Bernoulli ``±1`` weights on every hidden op (``binary_first=False`` keeps the
  first, pixel-reading layer real; ``binary_head=True`` binarizes the output Linear too);
  ``weight_noise``/``weight_noise_scale``/``weight_mode``/``latent_clip`` configure them
  (see :mod:`sbnkit.weights`);
* ``rule``: the units' default rule when the model is called directly;
* ``weight``: a factory of the binary-weight parametrization (default Bernoulli weights with the
  ``weight_*`` options), e.g. a method's from :mod:`sbnkit.optim`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .network import SBN, ChannelAffine, Head, Stage, along
from .units import BinaryUnit
from .weights import BernoulliWeight, LatentWeight, make_binary

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
        weight: Callable[[], LatentWeight] | None = None,
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
        self.weight = weight

    def binary(self, op: nn.Linear | nn.Conv2d) -> None:
        """Register the binary-weight parametrization on ``op``."""
        if self.weight is not None:
            make_binary(op, self.weight())
        else:
            make_binary(op, **self.weight_options)

    def stage(self, op: nn.Linear | nn.Conv2d, first: bool) -> Stage:
        conv = isinstance(op, nn.Conv2d)
        channels = op.out_channels if conv else op.out_features
        if self.binary_weights and (self.binary_first or not first):
            self.binary(op)
        unit = BinaryUnit(self.noise, self.noise_scale, self.rule)
        return Stage(op, unit, _norm(self.norm, channels, conv))

    def head(self, in_features: int, num_classes: int, pool: str) -> Head:
        linear = nn.Linear(in_features, num_classes)
        if self.binary_weights and self.binary_head:
            self.binary(linear)
        return Head(linear, pool)


def _check_sizes(sizes: Sequence[int], what: str, minimum: int) -> list[int]:
    sizes = list(sizes)
    if len(sizes) < minimum or any(not isinstance(s, int) or s <= 0 for s in sizes):
        raise UserError(f"{what} must be at least {minimum} positive integers, got {sizes!r}")
    return sizes


def mlp(sizes: Sequence[int], *, input_shape: Sequence[int] | None = None, **options) -> SBN:
    """``sizes = [in, h1, ..., hk, out]``: k binary stages (Linear → [norm] → unit), Linear head.

    Inputs are ``[B, in]``; pass ``input_shape`` (e.g. ``(1, 28, 28)``) to accept images, which
    are flattened first. ``options``: the unit and weight options shared by every builder (noise,
    norm, binary weights, ...). Raises :class:`UserError` for bad sizes or options.
    """
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
    strides: Sequence[int] | None = None,
    head: str = "avg",
    hidden: Sequence[int] = (),
    **options,
) -> SBN:
    """A conv SBN for small images: 3×3 convs (padding 1), optional dense stages, a Linear head.

    ``strides``: one per conv (default ``1, 2, 2, …``: layer i > 0 halves the resolution; no
    pooling, so path estimators apply). ``head``: ``"avg"`` (global average pooling) or
    ``"flatten"`` (the last feature map flattened). ``hidden``: sizes of binary dense stages
    (Linear → [norm] → unit) between the last conv and the head; they read the flattened map,
    so they need ``head="flatten"``.
    """
    channels = _check_sizes(channels, "convnet channels", 1)
    strides = [1] + [2] * (len(channels) - 1) if strides is None else list(strides)
    if len(strides) != len(channels) or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in strides
    ):
        raise UserError(
            f"convnet strides must be {len(channels)} positive integers (one per channel "
            f"size), got {strides!r}"
        )
    if head not in ("avg", "flatten"):
        raise UserError(f"unknown convnet head {head!r}; known: avg, flatten")
    hidden = list(hidden)
    if hidden and head != "flatten":
        raise UserError('convnet hidden (dense) stages need head = "flatten"')
    b = _Builder(**options)
    has_bias = b.norm is None
    stages, c_in, size = [], in_channels, image_size
    for k, (c_out, stride) in enumerate(zip(channels, strides, strict=True)):
        conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=has_bias)
        stages.append(b.stage(conv, first=k == 0))
        c_in, size = c_out, (size - 1) // stride + 1
    n_in = c_in if head == "avg" else c_in * size * size
    if hidden:
        hidden = _check_sizes(hidden, "convnet hidden sizes", 1)
        stages.append(nn.Flatten())
        for n_out in hidden:
            stages.append(b.stage(nn.Linear(n_in, n_out, bias=has_bias), first=False))
            n_in = n_out
    return SBN(stages, b.head(n_in, num_classes, head), (in_channels, image_size, image_size))


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
        trainable = (
            stage.norm is None
            and not nn.utils.parametrize.is_parametrized(op, "weight")
            and op.bias is not None
        )
        if trainable:
            t = op(x)
            dims = [d for d in range(t.dim()) if d != 1]
            m, s = t.mean(dim=dims), t.std(dim=dims).clamp_min(1e-6)
            op.weight.div_(along(s, 0, op.weight.dim()))
            op.bias.sub_(m).div_(s)
        x = stage.unit.noise.mean_fn(stage.preactivation(x))


MODELS = {"mlp": mlp, "convnet": convnet, "cifar_s1": cifar_s1}


# Binary-weight networks with real ReLU activations (the AdaSTE and BayesBiNN settings).

WeightFactory = Callable[[], LatentWeight]


def _width(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _check_width(width: float) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise UserError(f"width must be a positive number, got {width!r}")
    return float(width)


def _binarize_ops(
    model: nn.Module,
    binary_weights: bool,
    binary_first: bool,
    binary_head: bool,
    weight: WeightFactory | None,
) -> nn.Module:
    """Register ``weight()`` (default Bernoulli weights) on each Linear/Conv2d of ``model``, in
    module order; ``binary_first`` / ``binary_head`` cover the first and the last of them."""
    if not binary_weights:
        return model
    ops = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for k, op in enumerate(ops):
        if (k == 0 and not binary_first) or (k == len(ops) - 1 and not binary_head):
            continue
        make_binary(op, weight() if weight is not None else BernoulliWeight())
    return model


def _bn(channels: int, conv: bool, eps: float = 1e-5, momentum: float = 0.2) -> nn.Module:
    cls = nn.BatchNorm2d if conv else nn.BatchNorm1d
    return cls(channels, eps=eps, momentum=momentum, affine=False)


VGG16_LAYERS = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
VGG_BINARYCONNECT_LAYERS = (128, 128, "M", 256, 256, "M", 512, 512, "M")


def _vgg(
    layers: Sequence[int | str],
    hidden: Sequence[int],
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: float,
) -> nn.Sequential:
    """3×3 convs (padding 1, no bias) → [2×2 max-pool after a block's last conv] → BN (no affine)
    → ReLU, then Linear (no bias) → BN → ReLU per ``hidden`` size, Linear → BN on the logits."""
    width = _check_width(width)
    mods: list[nn.Module] = []
    c_in, size = in_channels, image_size
    for k, item in enumerate(layers):
        if item == "M":
            continue
        c_out = _width(int(item), width)
        mods.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False))
        if k + 1 < len(layers) and layers[k + 1] == "M":
            mods.append(nn.MaxPool2d(2))
            size //= 2
        mods += [_bn(c_out, True), nn.ReLU()]
        c_in = c_out
    if size < 1:
        raise UserError(f"image_size {image_size} is too small for this VGG; use 32")
    mods.append(nn.Flatten())
    n_in = c_in * size * size
    for h in hidden:
        n_out = _width(h, width)
        mods += [nn.Linear(n_in, n_out, bias=False), _bn(n_out, False), nn.ReLU()]
        n_in = n_out
    mods += [nn.Linear(n_in, num_classes, bias=False), _bn(num_classes, False)]
    return nn.Sequential(*mods)


def vgg16(
    in_channels: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    width: float = 1.0,
    binary_weights: bool = True,
    binary_first: bool = True,
    binary_head: bool = True,
    weight: WeightFactory | None = None,
) -> nn.Sequential:
    """VGG16 of the AdaSTE code (Le et al., 2022): 13 convs
    64-64-M-128-128-M-256×3-M-512×3-M-512×3-M (pool before BN), FC 512-512, FC to the classes,
    BatchNorm without affine after every layer (eps 1e-5, momentum 0.2) including the logits;
    real ReLU activations. Channel and FC widths are multiplied by ``width``.
    ``binary_weights``: ``weight()`` (default Bernoulli) on every
    conv/FC weight (``binary_first`` / ``binary_head`` for the first conv / the last FC)."""
    model = _vgg(VGG16_LAYERS, (512, 512), in_channels, num_classes, image_size, width)
    return _binarize_ops(model, binary_weights, binary_first, binary_head, weight)


def vgg_binaryconnect(
    in_channels: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    width: float = 1.0,
    binary_weights: bool = True,
    binary_first: bool = True,
    binary_head: bool = True,
    weight: WeightFactory | None = None,
) -> nn.Sequential:
    """BayesBiNN's VGG-like CIFAR net (Meng et al., 2020; from BinaryConnect):
    128-128-M-256-256-M-512-512-M, FC 1024-1024, FC to the classes, no biases, BatchNorm without
    affine (momentum 0.2) after every layer including the logits, ReLU; widths times ``width``.
    Options as in :func:`vgg16`."""
    model = _vgg(
        VGG_BINARYCONNECT_LAYERS, (1024, 1024), in_channels, num_classes, image_size, width
    )
    return _binarize_ops(model, binary_weights, binary_first, binary_head, weight)


def mlp_binaryconnect(
    in_features: int = 784,
    num_classes: int = 10,
    width: float = 1.0,
    input_shape: Sequence[int] | None = None,
    binary_weights: bool = True,
    binary_first: bool = True,
    binary_head: bool = True,
    weight: WeightFactory | None = None,
) -> nn.Sequential:
    """BayesBiNN's MNIST MLP (Meng et al., 2020): dropout 0.2 on the input, three hidden layers
    of 2048·``width`` units (Linear without bias → BatchNorm without affine, eps 1e-4,
    momentum 0.15 → ReLU → dropout 0.2), Linear → BatchNorm on the logits. Inputs of any shape
    are flattened. Options as in :func:`vgg16`."""
    width = _check_width(width)
    mods: list[nn.Module] = [nn.Flatten(), nn.Dropout(0.2)]
    n_in = in_features
    for _ in range(3):
        n_out = _width(2048, width)
        mods += [
            nn.Linear(n_in, n_out, bias=False),
            _bn(n_out, False, 1e-4, 0.15),
            nn.ReLU(),
            nn.Dropout(0.2),
        ]
        n_in = n_out
    mods += [nn.Linear(n_in, num_classes, bias=False), _bn(num_classes, False, 1e-4, 0.15)]
    return _binarize_ops(nn.Sequential(*mods), binary_weights, binary_first, binary_head, weight)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut (a 1×1 conv →
    BN projection where the shape changes), then ReLU. BN without affine, momentum 0.2."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = _bn(c_out, True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = _bn(c_out, True)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), _bn(c_out, True)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 of the AdaSTE code (CIFAR variant): conv3×3 stem (stride 1, or 2 for 64×64
    images), blocks [2, 2, 2, 2] of widths 64/128/256/512 (times ``width``) with strides
    1/2/2/2, 4×4 average pooling, Linear (with bias) → BatchNorm on the logits; BN without affine
    everywhere, real ReLU activations."""

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: float = 1.0
    ) -> None:
        super().__init__()
        width = _check_width(width)
        stem_stride = 2 if image_size == 64 else 1
        c = _width(64, width)
        self.conv1 = nn.Conv2d(in_channels, c, 3, stem_stride, 1, bias=False)
        self.bn1 = _bn(c, True)
        blocks: list[nn.Module] = []
        c_in, size = c, image_size // stem_stride
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            c_out = _width(planes, width)
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in, size = c_out, (size - 1) // stride + 1
        if size < 4:
            raise UserError(f"image_size {image_size} is too small for resnet18; use 32")
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(c_in * (size // 4) ** 2, num_classes)
        self.bn_out = _bn(num_classes, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.avg_pool2d(out, 4).flatten(1)
        return self.bn_out(self.linear(out))


def resnet18(
    in_channels: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    width: float = 1.0,
    binary_weights: bool = True,
    binary_first: bool = True,
    binary_head: bool = True,
    weight: WeightFactory | None = None,
) -> ResNet18:
    """:class:`ResNet18` with binary conv and Linear weights (the Linear's bias stays real;
    shortcut convs are binary too). Options as in :func:`vgg16`."""
    model = ResNet18(in_channels, num_classes, image_size, width)
    return _binarize_ops(model, binary_weights, binary_first, binary_head, weight)


MODELS.update(
    vgg16=vgg16,
    resnet18=resnet18,
    vgg_binaryconnect=vgg_binaryconnect,
    mlp_binaryconnect=mlp_binaryconnect,
)
