"""Model builders and their registry.

Every builder takes ``(input_shape, num_classes, *, options)``: the shape of one example (e.g.
``(1, 28, 28)``), the number of classes, then keyword-only options, each with its default. It
checks its own options and whether the input shape fits (one-line :class:`UserError` s naming
the option and the model). :func:`register` adds a builder to :data:`MODELS`::

    @sbnkit.models.register("tiny")
    def tiny(input_shape, num_classes, *, hidden: int = 16) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden),
                             sbnkit.BinaryUnit(), nn.Linear(hidden, num_classes))

The registered builders are the stochastic binary networks (:class:`~sbnkit.network.SBN`)
``mlp``, ``convnet`` (28×28-like images) and ``cifar_s1`` (the PSA paper's CIFAR net), and the
binary-weight networks with real ReLU activations of AdaSTE and BayesBiNN, ``vgg16``,
``resnet18``, ``vgg_binaryconnect`` and ``mlp_binaryconnect``, each with a ``width`` multiplier.

Options of the SBN builders besides their sizes:

* ``noise``/``noise_scale``: the units' injected noise (default logistic of scale 1, as in PSA),
  by name, or a :class:`~sbnkit.noise.Noise` (which has its own scale);
* ``norm``: ``None`` or ``"none"`` (plain SBN), ``"batch"`` (BatchNorm) or ``"affine"``
  (per-channel scale/shift) between each op and its unit;
* ``rule``: the units' default rule when the model is called directly.

Binary-weight options of every builder:

* ``binary_weights``: binary ``±1`` weights on every hidden op (``binary_first=False`` keeps the
  first, pixel-reading layer real; ``binary_head`` binarizes the output Linear too);
* ``weight``: a factory of the binary-weight parametrization, e.g. a method's from
  :mod:`sbnkit.optim`; by default Bernoulli weights (:class:`~sbnkit.weights.BernoulliWeight`)
  of ``weight_noise``/``weight_noise_scale``/``weight_mode``/``latent_clip`` (``None`` or ``0``:
  no clipping).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar, get_args

import torch
import torch.nn.functional as F
from torch import nn

from .errors import OptionError, UserError
from .network import POOLS, SBN, ChannelAffine, Head, Pool, Stage, along
from .noise import NOISE_NAMES, Noise, NoiseName
from .units import RULES, BinaryUnit, RuleKind
from .weights import WEIGHT_MODES, BernoulliWeight, LatentWeight, WeightMode, make_binary

__all__ = [
    "CIFAR_S1_LAYERS",
    "MODELS",
    "NORMS",
    "VGG16_LAYERS",
    "VGG_BINARYCONNECT_LAYERS",
    "BasicBlock",
    "Norm",
    "ResNet18",
    "WeightFactory",
    "builder_options",
    "cifar_s1",
    "convnet",
    "data_init_",
    "get",
    "mlp",
    "mlp_binaryconnect",
    "names",
    "register",
    "resnet18",
    "vgg16",
    "vgg_binaryconnect",
]

Norm = Literal["batch", "affine", "none"]
NORMS: tuple[str, ...] = get_args(Norm)
WeightFactory = Callable[[], LatentWeight]
Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

MODELS: dict[str, Callable[..., nn.Module]] = {}
"""The registered builders by name (filled by :func:`register`)."""


def _signature_problem(builder: Callable[..., Any]) -> str:
    """Why ``builder`` does not take ``(input_shape, num_classes, *, options)``, or ``""``."""
    params = list(inspect.signature(builder).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) < 2 or any(p.kind not in positional for p in params[:2]):
        return "it must take input_shape and num_classes as its first two parameters"
    for p in params[2:]:
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            return f"parameter {p.name!r} must be keyword-only (after a bare *)"
        if p.default is inspect.Parameter.empty:
            return f"option {p.name!r} needs a default"
    return ""


def _input_shape(model: str, input_shape: Sequence[int]) -> tuple[int, ...]:
    ok = isinstance(input_shape, Sequence) and len(input_shape) > 0
    if ok and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in input_shape):
        shape = tuple(int(s) for s in input_shape)
        if all(s > 0 for s in shape):
            return shape
    raise UserError(
        f"model {model!r}: input_shape must be a non-empty sequence of positive integers, "
        f"e.g. (1, 28, 28), got {input_shape!r}"
    )


def _num_classes(model: str, num_classes: int) -> int:
    ok = isinstance(num_classes, numbers.Integral) and not isinstance(num_classes, bool)
    if not ok or num_classes < 1:
        raise UserError(
            f"model {model!r}: num_classes must be a positive integer, got {num_classes!r}"
        )
    return int(num_classes)


def register(name: str, *, replace: bool = False) -> Callable[[Builder], Builder]:
    """A decorator that adds a builder to :data:`MODELS` as ``name`` and returns it checked.

    The builder must take ``(input_shape, num_classes, *, options)``, every option keyword-only
    with a default. The registered function (which the decorator returns) first checks that
    ``input_shape`` is a non-empty sequence of positive integers (passed on as a tuple) and
    ``num_classes`` a positive integer, and refuses an unknown option naming the known ones.
    Raises :class:`UserError` for a builder of another signature, and for a name already
    registered unless ``replace``.
    """

    def decorate(builder: Builder) -> Builder:
        if name in MODELS and not replace:
            raise UserError(
                f"model {name!r} is already registered; pass replace=True to replace it"
            )
        problem = _signature_problem(builder)
        if problem:
            raise UserError(f"cannot register model builder {name!r}: {problem}")
        known = list(inspect.signature(builder).parameters)[2:]

        @functools.wraps(builder)
        def checked(input_shape: Sequence[int], num_classes: int, **options: Any) -> nn.Module:
            for key in options:
                if key not in known:
                    raise UserError(_unknown_option(name, key, known))
            shape = _input_shape(name, input_shape)
            return builder(shape, _num_classes(name, num_classes), **options)

        MODELS[name] = checked
        return checked  # type: ignore[return-value]

    return decorate


def _unknown_option(model: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    listed = ", ".join(known) if known else "none"
    return f"unknown option {key!r} for model {model!r}; {hint}known options: {listed}"


def names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(MODELS)


def get(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``. Raises :class:`UserError` for an unknown name."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return MODELS[name]


def builder_options(name: str) -> dict[str, Any]:
    """The keyword options of the builder ``name`` with their defaults (from its signature).
    Raises :class:`UserError` for an unknown name."""
    params = list(inspect.signature(get(name)).parameters.values())[2:]
    return {p.name: p.default for p in params}


def _choice(model: str, option: str, value: Any, choices: Sequence[str], what: str) -> Any:
    if value not in choices:
        raise OptionError(
            option,
            f"{option} must be one of {', '.join(choices)} (the known {what}), got {value!r} "
            f"(model {model!r})",
        )
    return value


def _positive(model: str, option: str, value: Any) -> float:
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise OptionError(option, f"{option} must be positive, got {value!r} (model {model!r})")
    return float(value)


def _flag(model: str, option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise OptionError(
            option, f"{option} must be true or false, got {value!r} (model {model!r})"
        )
    return value


def _sizes(model: str, option: str, sizes: Any) -> list[int]:
    ok = isinstance(sizes, Sequence) and not isinstance(sizes, str) and len(sizes) > 0
    if not ok or any(
        not isinstance(s, numbers.Integral) or isinstance(s, bool) or s < 1 for s in sizes
    ):
        raise OptionError(
            option,
            f"{option} must be a non-empty array of positive integers, got {sizes!r} (model "
            f"{model!r}: the {model} sizes between input and classes)",
        )
    return [int(s) for s in sizes]


def _image(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(channels, height, width)``, or a :class:`UserError` for non-image input."""
    if len(input_shape) != 3:
        raise UserError(
            f"model {model!r} needs image data of shape (channels, height, width), got input "
            f"shape {input_shape}; use model 'mlp', which flattens any input"
        )
    c, h, w = input_shape
    return c, h, w


class _BinaryWeights:
    """The checked binary-weight options shared by every builder."""

    def __init__(
        self,
        model: str,
        binary_weights: bool,
        binary_first: bool,
        binary_head: bool,
        weight_noise: NoiseName | Noise,
        weight_noise_scale: float,
        weight_mode: WeightMode,
        latent_clip: float | None,
        weight: WeightFactory | None,
    ) -> None:
        self.enabled = _flag(model, "binary_weights", binary_weights)
        self.first = _flag(model, "binary_first", binary_first)
        self.head = _flag(model, "binary_head", binary_head)
        if not isinstance(weight_noise, Noise):
            _choice(model, "weight_noise", weight_noise, NOISE_NAMES, "noises")
        _positive(model, "weight_noise_scale", weight_noise_scale)
        _choice(model, "weight_mode", weight_mode, WEIGHT_MODES, "modes")
        if latent_clip is not None and not (
            isinstance(latent_clip, numbers.Real) and latent_clip >= 0
        ):
            raise OptionError(
                "latent_clip",
                f"latent_clip must be non-negative (0 or None: no clipping), got {latent_clip!r} "
                f"(model {model!r})",
            )
        if weight is not None and not callable(weight):
            raise OptionError(
                "weight", f"weight must be a factory of parametrizations (model {model!r})"
            )
        self.bernoulli = dict(
            noise=weight_noise,
            scale=weight_noise_scale,
            mode=weight_mode,
            clip=float(latent_clip) if latent_clip else None,
        )
        self.weight = weight

    def make(self) -> LatentWeight:
        """A new parametrization: ``weight()``, or the Bernoulli weights of the options."""
        return self.weight() if self.weight is not None else BernoulliWeight(**self.bernoulli)

    def apply(self, op: nn.Linear | nn.Conv2d, first: bool = False, head: bool = False) -> None:
        """Binarize ``op``'s weight if the options ask for it (``first``/``head``: the first
        op, the output Linear)."""
        if self.enabled and (self.first or not first) and (self.head or not head):
            make_binary(op, self.make())


class _Units:
    """The checked unit options of the SBN builders: stages and head from them."""

    def __init__(
        self,
        model: str,
        noise: NoiseName | Noise,
        noise_scale: float,
        norm: Norm | None,
        rule: RuleKind,
        weights: _BinaryWeights,
    ) -> None:
        if not isinstance(noise, Noise):
            _choice(model, "noise", noise, NOISE_NAMES, "noises")
        self.noise = noise
        self.noise_scale = _positive(model, "noise_scale", noise_scale)
        if norm is not None:
            _choice(model, "norm", norm, NORMS, "norms")
        self.norm = None if norm == "none" else norm
        self.rule = _choice(model, "rule", rule, RULES, "rules")
        self.weights = weights
        self.bias = self.norm is None  # a norm's shift replaces the op's bias

    def stage(self, op: nn.Linear | nn.Conv2d, first: bool) -> Stage:
        """``op`` (binarized as asked) → [norm] → binary unit."""
        conv = isinstance(op, nn.Conv2d)
        channels = op.out_channels if conv else op.out_features
        self.weights.apply(op, first=first)
        unit = BinaryUnit(self.noise, self.noise_scale, self.rule)
        norm: nn.Module | None = None
        if self.norm == "batch":
            norm = nn.BatchNorm2d(channels) if conv else nn.BatchNorm1d(channels)
        elif self.norm == "affine":
            norm = ChannelAffine(channels)
        return Stage(op, unit, norm)

    def head(self, in_features: int, num_classes: int, pool: Pool) -> Head:
        """The real output Linear (binarized if ``binary_head``) after ``pool``."""
        linear = nn.Linear(in_features, num_classes)
        self.weights.apply(linear, head=True)
        return Head(linear, pool)


@register("mlp")
def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: Sequence[int] = (1024, 1024),
    noise: NoiseName | Noise = "logistic",
    noise_scale: float = 1.0,
    norm: Norm | None = None,
    rule: RuleKind = "st",
    binary_weights: bool = False,
    binary_first: bool = True,
    binary_head: bool = False,
    weight_noise: NoiseName | Noise = "logistic",
    weight_noise_scale: float = 0.5,
    weight_mode: WeightMode = "sample",
    latent_clip: float | None = None,
    weight: WeightFactory | None = None,
) -> SBN:
    """The plain SBN MLP of the papers: one binary stage (Linear → [norm] → unit) per ``hidden``
    size, then a Linear head. Inputs of more than one dimension are flattened first.

    Options: see the module docstring. Raises :class:`UserError` for a bad option.
    """
    hidden = _sizes("mlp", "hidden", hidden)
    weights = _BinaryWeights(
        "mlp",
        binary_weights,
        binary_first,
        binary_head,
        weight_noise,
        weight_noise_scale,
        weight_mode,
        latent_clip,
        weight,
    )
    units = _Units("mlp", noise, noise_scale, norm, rule, weights)
    sizes = [math.prod(input_shape), *hidden]
    stages: list[nn.Module] = [] if len(input_shape) == 1 else [nn.Flatten()]
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        stages.append(units.stage(nn.Linear(n_in, n_out, bias=units.bias), first=k == 0))
    return SBN(stages, units.head(sizes[-1], num_classes, "flatten"), input_shape)


@register("convnet")
def convnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    channels: Sequence[int] = (32, 64, 128),
    strides: Sequence[int] | None = None,
    head: Pool = "avg",
    dense: Sequence[int] = (),
    noise: NoiseName | Noise = "logistic",
    noise_scale: float = 1.0,
    norm: Norm | None = None,
    rule: RuleKind = "st",
    binary_weights: bool = False,
    binary_first: bool = True,
    binary_head: bool = False,
    weight_noise: NoiseName | Noise = "logistic",
    weight_noise_scale: float = 0.5,
    weight_mode: WeightMode = "sample",
    latent_clip: float | None = None,
    weight: WeightFactory | None = None,
) -> SBN:
    """A conv SBN for small images ``(C, H, W)``: 3×3 convs (padding 1) with ``channels``
    outputs, optional binary dense stages, a Linear head.

    ``strides``: one per conv (default ``1, 2, 2, …``: layer i > 0 halves the resolution; no
    pooling, so path estimators apply). ``head``: ``"avg"`` (global average pooling) or
    ``"flatten"`` (the last ±1 map flattened). ``dense``: sizes of binary dense stages
    (Linear → [norm] → unit) between the last conv and the head; they read the flattened map, so
    they need ``head = "flatten"``. Other options: see the module docstring. Raises
    :class:`UserError` for a bad option or input that is not an image.
    """
    channels = _sizes("convnet", "channels", channels)
    strides = [1] + [2] * (len(channels) - 1) if strides is None else list(strides)
    if len(strides) != len(channels) or any(
        not isinstance(s, numbers.Integral) or isinstance(s, bool) or s < 1 for s in strides
    ):
        raise OptionError(
            "strides",
            f"strides must be {len(channels)} positive integers (one per channels entry), got "
            f"{strides!r} (model 'convnet')",
        )
    _choice("convnet", "head", head, POOLS, "heads")
    dense = list(dense)
    if dense:
        dense = _sizes("convnet", "dense", dense)
        if head != "flatten":
            raise OptionError("dense", "dense stages need head = \"flatten\" (model 'convnet')")
    weights = _BinaryWeights(
        "convnet",
        binary_weights,
        binary_first,
        binary_head,
        weight_noise,
        weight_noise_scale,
        weight_mode,
        latent_clip,
        weight,
    )
    units = _Units("convnet", noise, noise_scale, norm, rule, weights)
    c_in, height, width = _image("convnet", input_shape)
    stages: list[nn.Module] = []
    for k, (c_out, stride) in enumerate(zip(channels, strides, strict=True)):
        conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=units.bias)
        stages.append(units.stage(conv, first=k == 0))
        c_in, height, width = c_out, (height - 1) // stride + 1, (width - 1) // stride + 1
    n_in = c_in if head == "avg" else c_in * height * width
    if dense:
        stages.append(nn.Flatten())
        for n_out in dense:
            stages.append(units.stage(nn.Linear(n_in, n_out, bias=units.bias), first=False))
            n_in = n_out
    return SBN(stages, units.head(n_in, num_classes, head), input_shape)


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


@register("cifar_s1")
def cifar_s1(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    noise: NoiseName | Noise = "logistic",
    noise_scale: float = 1.0,
    norm: Norm | None = None,
    rule: RuleKind = "st",
    binary_weights: bool = False,
    binary_first: bool = True,
    binary_head: bool = False,
    weight_noise: NoiseName | Noise = "logistic",
    weight_noise_scale: float = 0.5,
    weight_mode: WeightMode = "sample",
    latent_clip: float | None = None,
    weight: WeightFactory | None = None,
) -> SBN:
    """CIFAR_S1 of the PSA paper (Shekhovtsov, Yanush & Flach 2020, CIFAR-10 experiment): 8
    binary conv stages (:data:`CIFAR_S1_LAYERS`), flatten, Linear (768 → 10 for 32×32 images).

    Options: see the module docstring. Raises :class:`UserError` for a bad option, or input
    that is not an image or is too small.
    """
    weights = _BinaryWeights(
        "cifar_s1",
        binary_weights,
        binary_first,
        binary_head,
        weight_noise,
        weight_noise_scale,
        weight_mode,
        latent_clip,
        weight,
    )
    units = _Units("cifar_s1", noise, noise_scale, norm, rule, weights)
    c_in, height, width = _image("cifar_s1", input_shape)
    stages = []
    for k, (c_out, kernel, stride) in enumerate(CIFAR_S1_LAYERS):
        conv = nn.Conv2d(c_in, c_out, kernel, stride, bias=units.bias)
        stages.append(units.stage(conv, first=k == 0))
        c_in = c_out
        height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
    if height < 1 or width < 1:
        raise UserError(
            f"input shape {input_shape} is too small for model 'cifar_s1'; use 32×32 images"
        )
    head = units.head(c_in * height * width, num_classes, "flatten")
    return SBN(stages, head, input_shape)


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


@torch.no_grad()
def ap2_init_(model: SBN, x: torch.Tensor) -> None:
    """AP2 init (the moment-propagation init of the PSA authors' public code) in the ``±1``
    encoding: standardise each binary stage's pre-activation with moments propagated from the
    data's per-feature mean ``m`` and variance ``s``.

    ``μ = W m + b``, ``v = W² s + 1e-10``; ``W ← W/√v``, ``b ← (b - μ)/√v``. The units are then
    ``±1`` with probability 1/2 each, so the next stage sees ``m = 0``, ``s = 1``. The head is left
    as it is. Raises :class:`UserError` unless every stage is a norm-free Linear with a bias
    reading a ``[B, features]`` input.
    """
    stages = list(model.stages)
    ok = all(
        isinstance(s, Stage) and type(s.op) is nn.Linear and s.op.bias is not None for s in stages
    ) and all(s.norm is None for s in stages)
    if not ok or x.dim() != 2:
        raise UserError("ap2_init_ needs a plain SBN MLP (sbnkit.models.mlp without norm)")
    m, s = x.mean(0), x.var(0, unbiased=False)
    for stage in stages:
        op = stage.op
        mu = op.weight @ m + op.bias
        sd = torch.sqrt(op.weight.pow(2) @ s + 1e-10)
        op.weight.div_(sd[:, None])
        op.bias.sub_(mu).div_(sd)
        m, s = torch.zeros_like(mu), torch.ones_like(mu)


# Binary-weight networks with real ReLU activations (the AdaSTE and BayesBiNN settings).


def _width(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _binarize_ops(model: nn.Module, weights: _BinaryWeights) -> nn.Module:
    """Binarize each Linear/Conv2d of ``model`` in module order as ``weights`` asks; its
    ``binary_first`` / ``binary_head`` cover the first and the last of them."""
    ops = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for k, op in enumerate(ops):
        weights.apply(op, first=k == 0, head=k == len(ops) - 1)
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
    model: str,
    layers: Sequence[int | str],
    hidden: Sequence[int],
    input_shape: tuple[int, ...],
    num_classes: int,
    width: float,
) -> nn.Sequential:
    """3×3 convs (padding 1, no bias) → [2×2 max-pool after a block's last conv] → BN (no affine)
    → ReLU, then Linear (no bias) → BN → ReLU per ``hidden`` size, Linear → BN on the logits."""
    width = _positive(model, "width", width)
    c_in, height, size_w = _image(model, input_shape)
    mods: list[nn.Module] = []
    for k, item in enumerate(layers):
        if item == "M":
            continue
        c_out = _width(int(item), width)
        mods.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False))
        if k + 1 < len(layers) and layers[k + 1] == "M":
            mods.append(nn.MaxPool2d(2))
            height, size_w = height // 2, size_w // 2
        mods += [_bn(c_out, True), nn.ReLU()]
        c_in = c_out
    if height < 1 or size_w < 1:
        raise UserError(f"input shape {input_shape} is too small for model {model!r}; use 32×32")
    mods.append(nn.Flatten())
    n_in = c_in * height * size_w
    for h in hidden:
        n_out = _width(h, width)
        mods += [nn.Linear(n_in, n_out, bias=False), _bn(n_out, False), nn.ReLU()]
        n_in = n_out
    mods += [nn.Linear(n_in, num_classes, bias=False), _bn(num_classes, False)]
    return nn.Sequential(*mods)


@register("vgg16")
def vgg16(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: float = 1.0,
    binary_weights: bool = True,
    binary_first: bool = True,
    binary_head: bool = True,
    weight_noise: NoiseName | Noise = "logistic",
    weight_noise_scale: float = 0.5,
    weight_mode: WeightMode = "sample",
    latent_clip: float | None = None,
    weight: WeightFactory | None = None,
) -> nn.Sequential:
    """VGG16 of the AdaSTE code (Le et al., 2022): 13 convs
    64-64-M-128-128-M-256×3-M-512×3-M-512×3-M (pool before BN), FC 512-512, FC to the classes,
    BatchNorm without affine after every layer (eps 1e-5, momentum 0.2) including the logits;
    real ReLU activations. Channel and FC widths are multiplied by ``width``.

    Binary weights on every conv/FC weight by default (module docstring). Raises
    :class:`UserError` for a bad option, or input that is not an image or is too small.
    """
    weights = _BinaryWeights(
        "vgg16",
        binary_weights,
        binary_first,
        binary_head,
        weight_noise,
        weight_noise_scale,
        weight_mode,
        latent_clip,
        weight,
    )
    model = _vgg("vgg16", VGG16_LAYERS, (512, 512), input_shape, num_classes, width)
    return _binarize_ops(model, weights)


@register("vgg_binaryconnect")
def vgg_binaryconnect(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: float = 1.0,
    binary_weights: bool = True,
    binary_first: bool = True,
    binary_head: bool = True,
    weight_noise: NoiseName | Noise = "logistic",
    weight_noise_scale: float = 0.5,
    weight_mode: WeightMode = "sample",
    latent_clip: float | None = None,
    weight: WeightFactory | None = None,
) -> nn.Sequential:
    """BayesBiNN's VGG-like CIFAR net (Meng et al., 2020; from BinaryConnect):
    128-128-M-256-256-M-512-512-M, FC 1024-1024, FC to the classes, no biases, BatchNorm without
    affine (momentum 0.2) after every layer including the logits, ReLU; widths times ``width``.

    Options and errors as in :func:`vgg16`.
    """
    weights = _BinaryWeights(
        "vgg_binaryconnect",
        binary_weights,
        binary_first,
        binary_head,
        weight_noise,
        weight_noise_scale,
        weight_mode,
        latent_clip,
        weight,
    )
    model = _vgg(
        "vgg_binaryconnect",
        VGG_BINARYCONNECT_LAYERS,
        (1024, 1024),
        input_shape,
        num_classes,
        width,
    )
    return _binarize_ops(model, weights)


@register("mlp_binaryconnect")
def mlp_binaryconnect(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: float = 1.0,
    binary_weights: bool = True,
    binary_first: bool = True,
    binary_head: bool = True,
    weight_noise: NoiseName | Noise = "logistic",
    weight_noise_scale: float = 0.5,
    weight_mode: WeightMode = "sample",
    latent_clip: float | None = None,
    weight: WeightFactory | None = None,
    logit_norm: bool = True,
) -> nn.Sequential:
    """BayesBiNN's MNIST MLP (Meng et al., 2020): dropout 0.2 on the input, three hidden layers
    of 2048·``width`` units (Linear without bias → BatchNorm without affine, eps 1e-4,
    momentum 0.15 → ReLU → dropout 0.2), Linear → BatchNorm on the logits. Inputs of any shape
    are flattened. ``logit_norm = False`` drops the logits' BatchNorm (not in the paper), so that
    the network's confidence is not fixed by it.

    Binary weights as in :func:`vgg16`. Raises :class:`UserError` for a bad option.
    """
    weights = _BinaryWeights(
        "mlp_binaryconnect",
        binary_weights,
        binary_first,
        binary_head,
        weight_noise,
        weight_noise_scale,
        weight_mode,
        latent_clip,
        weight,
    )
    width = _positive("mlp_binaryconnect", "width", width)
    logit_norm = _flag("mlp_binaryconnect", "logit_norm", logit_norm)
    mods: list[nn.Module] = [nn.Flatten(), nn.Dropout(0.2)]
    n_in = math.prod(input_shape)
    for _ in range(3):
        n_out = _width(2048, width)
        mods += [
            nn.Linear(n_in, n_out, bias=False),
            _bn(n_out, False, 1e-4, 0.15),
            nn.ReLU(),
            nn.Dropout(0.2),
        ]
        n_in = n_out
    mods.append(nn.Linear(n_in, num_classes, bias=False))
    if logit_norm:
        mods.append(_bn(num_classes, False, 1e-4, 0.15))
    return _binarize_ops(nn.Sequential(*mods), weights)


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
    """ResNet-18 of the AdaSTE code (CIFAR variant) for images ``input_shape = (C, H, W)``:
    conv3×3 stem (stride 1, or 2 for 64×64 images), blocks [2, 2, 2, 2] of widths
    64/128/256/512 (times ``width``) with strides 1/2/2/2, 4×4 average pooling, Linear (with
    bias) → BatchNorm on the logits; BN without affine everywhere, real ReLU activations.

    Raises :class:`UserError` for a non-positive ``width``, or input that is not an image or is
    too small.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        width = _positive("resnet18", "width", width)
        c_in, height, size_w = _image("resnet18", tuple(input_shape))
        stem_stride = 2 if (height, size_w) == (64, 64) else 1
        c = _width(64, width)
        self.conv1 = nn.Conv2d(c_in, c, 3, stem_stride, 1, bias=False)
        self.bn1 = _bn(c, True)
        blocks: list[nn.Module] = []
        c_in, height, size_w = c, height // stem_stride, size_w // stem_stride
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            c_out = _width(planes, width)
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
            height, size_w = (height - 1) // stride + 1, (size_w - 1) // stride + 1
        if height < 4 or size_w < 4:
            raise UserError(
                f"input shape {tuple(input_shape)} is too small for model 'resnet18'; use 32×32"
            )
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(c_in * (height // 4) * (size_w // 4), num_classes)
        self.bn_out = _bn(num_classes, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.avg_pool2d(out, 4).flatten(1)
        return self.bn_out(self.linear(out))


@register("resnet18")
def resnet18(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: float = 1.0,
    binary_weights: bool = True,
    binary_first: bool = True,
    binary_head: bool = True,
    weight_noise: NoiseName | Noise = "logistic",
    weight_noise_scale: float = 0.5,
    weight_mode: WeightMode = "sample",
    latent_clip: float | None = None,
    weight: WeightFactory | None = None,
) -> ResNet18:
    """:class:`ResNet18` with binary conv and Linear weights (the Linear's bias stays real;
    shortcut convs are binary too). Options and errors as in :func:`vgg16`."""
    weights = _BinaryWeights(
        "resnet18",
        binary_weights,
        binary_first,
        binary_head,
        weight_noise,
        weight_noise_scale,
        weight_mode,
        latent_clip,
        weight,
    )
    return _binarize_ops(ResNet18(input_shape, num_classes, width), weights)
