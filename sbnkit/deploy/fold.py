"""Fold an :class:`~sbnkit.network.SBN`'s mode network into deployable layers.

Each stage ``unit(norm(op(x) + b))`` and the head become one :class:`Layer`: a dense or conv op
with binary (``±1``, packed) or float32 weights, then one of

* ``sign`` — the unit at its mode (``z = 0``, ``sign(0) = +1``). The bias and the norm are
  per-channel affine maps ``y = s·t + c`` of the op's output ``t = W·x`` (BatchNorm in eval mode:
  ``s = γ/√(var + ε)``, ``c = (b − μ)·s + β``; :class:`~sbnkit.network.ChannelAffine`:
  ``s = γ``, ``c = γ·b + β``; none: ``s = 1``, ``c = b``), so the state is ``+1`` iff

  - ``s > 0``: ``t ≥ T`` with ``T = −c/s`` (flip ``0``);
  - ``s < 0``: ``t ≤ T`` with ``T = −c/s`` (flip ``1``);
  - ``s = 0``: always (``c ≥ 0``) or never (``c < 0``), stored as flip ``0`` and ``T = −∞``
    or ``+∞``.

  When the op reads ``±1`` states with ``±1`` weights, ``t`` is an integer in ``[−K, K]``, so
  ``T`` is rounded to an integer (``ceil`` for flip 0, ``floor`` for flip 1) and the infinities
  become ``∓(K + 1)``. Because PyTorch evaluates ``norm(t + b)`` in floating point, the integer
  threshold is then checked against the model's own norm module at the integers around ``T`` and
  moved to where that module changes sign, so the engine's decision equals PyTorch's at every
  reachable ``t``, not just the real-number rule's;
* ``relu`` / ``identity`` — real activations (a stage whose unit is ``nn.ReLU``/``nn.Identity``,
  or the head): ``y = act(s·t + c)`` in float32.

Weights at their mode: Bernoulli weights are ``sign η``; plain weights whose entries are all
``±1`` (e.g. from :func:`sbnkit.binarize`) count as binary too. Conv weights and patches are
ordered ``(kh, kw, c_in)`` (channels last); a dense layer that reads a spatial map reads it
flattened as ``(h, w, c)``, so its weight columns are permuted from PyTorch's ``(c, h, w)``.

Binary-weight networks with real activations (an ``nn.Sequential``, or
:class:`~sbnkit.models.ResNet18`; the ``vgg16``, ``vgg_binaryconnect``, ``mlp_binaryconnect`` and
``resnet18`` builders) fold module by module, in eval mode:

* ``nn.Linear`` / ``nn.Conv2d`` → a dense / conv layer (weights as above) whose float output
  ``s·t + c`` starts as ``s = 1``, ``c = bias``;
* a BatchNorm ``y = s'·x + c'`` (running statistics) composes into the open scale/shift of the
  layer before it, ``(s'·s, s'·c + c')``; where no scale/shift is open (after a pool) it becomes a
  layer of kind ``affine``; ``nn.ReLU`` sets the open layer's output to ``relu`` and closes it
  (a ReLU with nothing open is an ``affine`` layer with ``s = 1``, ``c = 0``);
* ``nn.MaxPool2d`` / ``nn.AvgPool2d`` (no padding, no dilation, floor) → ``maxpool2d`` /
  ``avgpool2d`` layers; ``nn.Dropout`` and ``nn.Identity`` are skipped (identities in eval mode);
  ``nn.Flatten`` is implicit (the next dense layer reads the map flattened);
* a :class:`~sbnkit.models.BasicBlock` → a ``residual`` layer ``relu(body(x) + shortcut(x))``
  whose ``body`` (conv → BN → ReLU → conv → BN) and ``shortcut`` (empty: identity; else 1×1
  conv → BN) are layer lists folded by the same rules; :class:`~sbnkit.models.ResNet18` is its
  stem, its blocks, a 4×4 ``avgpool2d``, then the Linear and the BatchNorm on the logits, as in
  its ``forward``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import UserError
from ..models import BasicBlock, ResNet18
from ..network import SBN, ChannelAffine, Head, Stage
from ..units import BinaryUnit
from ..weights import LatentWeight
from .packing import pack_signs

__all__ = [
    "DENSE_POOLS",
    "EXPORTABLE",
    "OUTPUTS",
    "RESNET_POOL",
    "DensePool",
    "Layer",
    "Output",
    "PoolKind",
    "Reads",
    "fold_model",
    "fold_threshold",
    "model_input_shape",
]

Output = Literal["sign", "relu", "identity"]
OUTPUTS: tuple[Output, ...] = get_args(Output)
Reads = Literal["bits", "float"]  # what a layer reads: packed ±1 states or float32 values
DensePool = Literal["none", "avg"]  # a dense layer's input: as is, or averaged over positions
DENSE_POOLS: tuple[DensePool, ...] = get_args(DensePool)
PoolKind = Literal["maxpool2d", "avgpool2d"]
EXPORTABLE = "an sbnkit SBN, an nn.Sequential or a ResNet18"
RESNET_POOL = 4  # ResNet18.forward: F.avg_pool2d(out, 4) before the Linear


@dataclass
class Layer:
    """One deployable layer: ``meta`` (JSON-able geometry and kinds), its ``arrays`` and, for a
    ``residual`` layer, its ``branches`` (``body`` and ``shortcut`` layer lists)."""

    meta: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    branches: dict[str, list[Layer]] = field(default_factory=dict)


def _mode_weight(op: nn.Linear | nn.Conv2d) -> tuple[torch.Tensor, bool]:
    """The op's weight in the mode network and whether it is binary (all entries ``±1``)."""
    if parametrize.is_parametrized(op, "weight"):
        chain = list(op.parametrizations.weight)
        if len(chain) != 1 or not isinstance(chain[0], LatentWeight):
            raise UserError(
                "only sbnkit's binary-weight parametrizations can be exported; "
                "remove other parametrizations first"
            )
        return chain[0].binary(op.parametrizations.weight.original.detach()), True
    w = op.weight.detach()
    return w, bool((w.abs() == 1).all())


def _affine(stage_norm: nn.Module | None, bias: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(s, c)`` in float64 with ``norm(t + bias) = s·t + c`` (eval mode)."""
    b = bias.detach().double()
    if stage_norm is None:
        return np.ones(b.numel()), b.numpy()
    if isinstance(stage_norm, ChannelAffine):
        g, beta = stage_norm.weight.detach().double(), stage_norm.bias.detach().double()
        return g.numpy(), (g * b + beta).numpy()
    bn = stage_norm
    if bn.running_mean is None or bn.running_var is None:
        raise UserError(
            "a BatchNorm without running statistics (track_running_stats=False) cannot be "
            "folded; train with track_running_stats=True"
        )
    inv = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    g = bn.weight.detach().double() if bn.affine else torch.ones_like(inv)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(inv)
    s = g * inv
    return s.numpy(), ((b - bn.running_mean.detach().double()) * s + beta).numpy()


def fold_threshold(s: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real thresholds ``T`` (float64, ``±inf`` for ``s = 0``) and flips of ``sign(s·t + c)``."""
    s, c = np.asarray(s, np.float64), np.asarray(c, np.float64)
    flip = s < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(s != 0, -c / np.where(s != 0, s, 1.0), np.where(c >= 0, -np.inf, np.inf))
    return t, flip


def _integer_threshold(
    stage: Stage, bias: torch.Tensor, s: np.ndarray, c: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Integer ``T`` and flips for integer ``t ∈ [−k, k]``, matched to the norm module's output."""
    t_real, flip = fold_threshold(s, c)
    big = k + 1
    t_real = np.clip(t_real, -big - 3, big + 3)
    base = np.where(flip, np.floor(t_real), np.ceil(t_real)).astype(np.int64)
    offsets = np.arange(-3, 4)
    cand = base[None, :] + offsets[:, None]  # [7, N]
    dtype = bias.dtype
    probe = torch.as_tensor(cand, dtype=dtype) + bias.detach()[None, :]
    if isinstance(stage.op, nn.Conv2d):  # a 4x4 map, so the norm runs its vectorised path
        probe = probe[:, :, None, None].expand(-1, -1, 4, 4).contiguous()
    with torch.no_grad():
        y = probe if stage.norm is None else stage.norm(probe)
    if y.dim() == 4:
        y = y[:, :, 0, 0]
    plus = (y >= 0).numpy()
    out = base.copy()
    for j in range(base.size):
        col = plus[:, j]
        if s[j] == 0:
            out[j] = -big if c[j] >= 0 else big
            flip[j] = False
        elif not flip[j]:
            hits = np.flatnonzero(col)
            out[j] = cand[hits[0], j] if hits.size else cand[-1, j] + 1
        else:
            hits = np.flatnonzero(col)
            out[j] = cand[hits[-1], j] if hits.size else cand[0, j] - 1
    return np.clip(out, -big, big), flip


def _unit_kind(unit: nn.Module) -> str:
    if isinstance(unit, BinaryUnit):
        return "sign"
    if isinstance(unit, nn.ReLU):
        return "relu"
    if isinstance(unit, nn.Identity):
        return "identity"
    raise UserError(
        f"cannot export a stage whose unit is {type(unit).__name__}; "
        "supported: BinaryUnit, nn.ReLU, nn.Identity"
    )


def _conv_meta(op: nn.Conv2d, in_hw: tuple[int, int]) -> dict:
    if op.groups != 1 or op.dilation != (1, 1) or op.padding_mode != "zeros":
        raise UserError(
            "only conv layers with groups=1, dilation=1 and zero padding can be exported"
        )
    if isinstance(op.padding, str):
        raise UserError("conv padding must be given as integers to be exported, not a string")
    (kh, kw), (sh, sw), (ph, pw) = op.kernel_size, op.stride, op.padding
    h, w = in_hw
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise UserError(f"conv layer leaves no output for a {h}×{w} input")
    return {
        "kind": "conv2d",
        "in_channels": op.in_channels,
        "out_channels": op.out_channels,
        "kernel": [kh, kw],
        "stride": [sh, sw],
        "padding": [ph, pw],
        "in_hw": [h, w],
        "out_hw": [ho, wo],
    }


def _weight_matrix(w: torch.Tensor, spatial_in: tuple[int, ...] | None) -> np.ndarray:
    """``[N, K]`` float64 weights in the engine's input order (see the module docstring)."""
    w = w.detach().double()
    if w.dim() == 4:  # [N, C, kh, kw] -> [N, kh, kw, C]
        return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).numpy()
    if spatial_in is not None:  # dense reading [H, W, C] flattened (h, w, c)
        h, wd, c = spatial_in
        return w.reshape(w.shape[0], c, h, wd).permute(0, 2, 3, 1).reshape(w.shape[0], -1).numpy()
    return w.numpy()


def _op_layer(
    op: nn.Linear | nn.Conv2d,
    in_kind: Reads,
    shape: tuple[int, ...],
    pool: DensePool,
) -> tuple[Layer, torch.Tensor, bool, int]:
    """The op part of a layer: geometry, weights; returns ``(layer, weight, binary, K)``."""
    w, binary = _mode_weight(op)
    if isinstance(op, nn.Conv2d):
        if len(shape) != 3 or shape[2] != op.in_channels:
            raise UserError(
                f"conv layer expects {op.in_channels} input channels, its input has shape "
                f"{list(shape)} (channels last); check input_shape and the layers before it"
            )
        meta = _conv_meta(op, (shape[0], shape[1]))
        k = op.in_channels * op.kernel_size[0] * op.kernel_size[1]
        spatial = None
    else:
        spatial = shape if len(shape) == 3 and pool == "none" else None
        n_in = shape[-1] if pool == "avg" and len(shape) == 3 else math.prod(shape)
        if n_in != op.in_features:
            raise UserError(
                f"dense layer expects {op.in_features} inputs, its input has {n_in}; "
                "check input_shape and the layers before it"
            )
        meta = {"kind": "dense", "in_features": n_in, "out_features": op.out_features}
        k = n_in
        if pool == "avg":
            meta["pool"] = "avg"
            in_kind = "float"
    meta["input"] = in_kind
    meta["weight"] = "bits" if binary else "float32"
    mat = _weight_matrix(w, spatial)
    layer = Layer(meta)
    if binary:
        layer.arrays["weight"] = pack_signs(mat < 0)
    else:
        layer.arrays["weight"] = mat.astype(np.float32)
    return layer, w, binary, k


def _out_shape(meta: dict) -> tuple[int, ...]:
    if meta["kind"] == "conv2d":
        return (*meta["out_hw"], meta["out_channels"])
    return (meta["out_features"],)


def model_input_shape(
    model: nn.Module, input_shape: Sequence[int] | None, what: str
) -> tuple[int, ...]:
    """The input shape ``[C, H, W]`` or ``[F]`` of ``model``: an SBN's own (``input_shape``, if
    given, must agree), else ``input_shape`` or the model's ``input_shape`` attribute.

    Raises :class:`UserError` for other model types, a missing or malformed shape, or a mismatch.
    """
    if not isinstance(model, (SBN, nn.Sequential, ResNet18)):
        raise UserError(f"{what} needs {EXPORTABLE} model, not {type(model).__name__}")
    own = getattr(model, "input_shape", None)
    if input_shape is None:
        input_shape = own
    if input_shape is None:
        raise UserError(
            f"{what} of a {type(model).__name__} needs its input shape; pass input_shape, "
            "e.g. (3, 32, 32) or (784,)"
        )
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else (input_shape,)
    if len(shape) not in (1, 3) or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in shape
    ):
        raise UserError(f"input_shape must be [C, H, W] or [F] of positive integers, got {shape}")
    shape = tuple(int(s) for s in shape)
    if isinstance(model, SBN) and shape != model.input_shape:
        raise UserError(
            f"input_shape {list(shape)} differs from the model's {list(model.input_shape)}; "
            "omit input_shape for SBN models"
        )
    return shape


def fold_model(
    model: nn.Module, input_shape: Sequence[int] | None = None
) -> tuple[list[Layer], tuple[int, ...]]:
    """The deployable layers of ``model``'s mode network (norms in eval mode) and its input
    shape (see :func:`model_input_shape`).

    Raises :class:`UserError` for a model or modules that cannot be exported, or a missing or
    wrong ``input_shape``.
    """
    shape = model_input_shape(model, input_shape, "export")
    was_training = model.training
    model.eval()
    try:
        layers = _fold(model) if isinstance(model, SBN) else _fold_graph(model, shape)
    finally:
        model.train(was_training)
    return layers, shape


def _channels_last(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The engine's shape of an input ``[C, H, W]`` (``[H, W, C]``) or ``[F]``."""
    if len(input_shape) == 3:
        return (input_shape[1], input_shape[2], input_shape[0])
    return input_shape


def _fold(model: SBN) -> list[Layer]:
    shape = _channels_last(model.input_shape)
    kind = "float"
    layers: list[Layer] = []
    for stage in model.stages:
        if isinstance(stage, (nn.Flatten, nn.Identity)):
            continue
        if not isinstance(stage, Stage):
            raise UserError(
                f"cannot export a {type(stage).__name__} between stages; "
                "only Stage, nn.Flatten and nn.Identity are supported"
            )
        layer, _, binary, k = _op_layer(stage.op, kind, shape, "none")
        bias = (
            stage.op.bias
            if stage.op.bias is not None
            else torch.zeros(stage.op.weight.shape[0], dtype=stage.op.weight.dtype)
        )
        s, c = _affine(stage.norm, bias)
        out = _unit_kind(stage.unit)
        layer.meta["output"] = out
        if out == "sign":
            if kind == "bits" and binary:
                t, flip = _integer_threshold(stage, bias, s, c, k)
                layer.arrays["threshold"] = t.astype(np.int64)
            else:
                t, flip = fold_threshold(s, c)
                layer.arrays["threshold"] = t
            layer.arrays["flip"] = flip.astype(np.uint8)
        else:
            layer.arrays["scale"] = s.astype(np.float32)
            layer.arrays["shift"] = c.astype(np.float32)
        kind = "bits" if out == "sign" else "float"
        shape = _out_shape(layer.meta)
        layers.append(layer)
    head: Head = model.head
    pool = "avg" if head.pool == "avg" and len(shape) == 3 else "none"
    layer, _, _, _ = _op_layer(head.linear, kind, shape, pool)
    layer.meta["output"] = "identity"
    n = head.linear.out_features
    bias = head.linear.bias
    layer.arrays["scale"] = np.ones(n, np.float32)
    layer.arrays["shift"] = (
        np.zeros(n, np.float32) if bias is None else bias.detach().float().numpy().copy()
    )
    layers.append(layer)
    return layers


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class _Chain:
    """Folds a chain of modules with real activations into layers (rules in the module
    docstring); ``shape`` is the current output shape, channels last."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.layers: list[Layer] = []
        self._open: tuple[Layer, np.ndarray, np.ndarray] | None = None  # float64 scale, shift
        self._flat = False  # after an nn.Flatten of a spatial map, before its nn.Linear

    def add(self, m: nn.Module) -> None:
        """Fold module ``m`` onto the chain."""
        if self._flat and not isinstance(m, (nn.Linear, nn.Dropout, nn.Identity)):
            raise UserError(
                f"cannot export a {type(m).__name__} between nn.Flatten and the next nn.Linear; "
                "only nn.Dropout may come between them"
            )
        if isinstance(m, (nn.Dropout, nn.Identity)):
            return
        if isinstance(m, nn.Sequential):
            for child in m:
                self.add(child)
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise UserError("only nn.Flatten() with start_dim=1, end_dim=-1 can be exported")
            self._flat = len(self.shape) > 1
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            self._op(m)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            self._norm(m)
        elif isinstance(m, nn.ReLU):
            self._relu()
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            self._pool_module(m)
        elif isinstance(m, BasicBlock):
            self._block(m)
        else:
            raise UserError(
                f"cannot export a {type(m).__name__}; supported: Linear, Conv2d, BatchNorm1d/2d, "
                "ReLU, MaxPool2d, AvgPool2d, Dropout, Flatten, Identity, BasicBlock"
            )

    def finish(self) -> list[Layer]:
        """The folded layers (the open scale/shift, if any, stored as float32)."""
        self._close()
        return self.layers

    def _close(self) -> None:
        if self._open is not None:
            layer, scale, shift = self._open
            layer.arrays["scale"] = scale.astype(np.float32)
            layer.arrays["shift"] = shift.astype(np.float32)
            self._open = None

    def _append(
        self,
        layer: Layer,
        shape: tuple[int, ...],
        affine: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self._close()
        self.layers.append(layer)
        self.shape = shape
        if affine is not None:
            self._open = (layer, *affine)

    def _op(self, m: nn.Linear | nn.Conv2d) -> None:
        if isinstance(m, nn.Linear) and len(self.shape) > 1 and not self._flat:
            raise UserError(
                "an nn.Linear that reads a spatial map needs an nn.Flatten before it to be exported"
            )
        self._flat = False
        layer, _, _, _ = _op_layer(m, "float", self.shape, "none")
        layer.meta["output"] = "identity"
        n = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        bias = np.zeros(n) if m.bias is None else m.bias.detach().double().numpy()
        self._append(layer, _out_shape(layer.meta), (np.ones(n), bias))

    def _affine_layer(self) -> None:
        """Open a new ``affine`` layer ``y = x`` (nothing is open)."""
        n = self.shape[-1]
        layer = Layer({"kind": "affine", "channels": n, "output": "identity"})
        self._append(layer, self.shape, (np.ones(n), np.zeros(n)))

    def _norm(self, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
        spatial = isinstance(bn, nn.BatchNorm2d)
        if spatial != (len(self.shape) == 3) or bn.num_features != self.shape[-1]:
            raise UserError(
                f"a {type(bn).__name__}({bn.num_features}) cannot read an input of shape "
                f"{list(self.shape)} (channels last); fix the model's layer sizes"
            )
        s, c = _affine(bn, torch.zeros(bn.num_features, dtype=torch.float64))
        if self._open is None:
            self._affine_layer()
        layer, scale, shift = self._open
        self._open = (layer, s * scale, s * shift + c)

    def _relu(self) -> None:
        if self._open is None:
            self._affine_layer()
        self._open[0].meta["output"] = "relu"
        self._close()

    def _pool_module(self, m: nn.MaxPool2d | nn.AvgPool2d) -> None:
        kind: PoolKind = "maxpool2d" if isinstance(m, nn.MaxPool2d) else "avgpool2d"
        plain = _pair(m.padding) == (0, 0) and not m.ceil_mode
        if kind == "maxpool2d":
            plain = plain and _pair(m.dilation) == (1, 1) and not m.return_indices
        else:
            plain = plain and m.divisor_override is None
        if not plain:
            raise UserError(
                f"only {type(m).__name__} without padding, dilation, ceil_mode or other extras "
                "can be exported"
            )
        self.pool(kind, _pair(m.kernel_size), _pair(m.stride or m.kernel_size))

    def pool(self, kind: PoolKind, kernel: tuple[int, int], stride: tuple[int, int]) -> None:
        """A ``maxpool2d`` / ``avgpool2d`` layer (no padding, floor) on the current map."""
        if len(self.shape) != 3:
            raise UserError(f"a 2-d pool cannot read an input of shape {list(self.shape)}")
        h, w, c = self.shape
        ho, wo = (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1
        if ho < 1 or wo < 1:
            raise UserError(f"a {kernel[0]}×{kernel[1]} pool leaves no output for a {h}×{w} map")
        meta = {
            "kind": kind,
            "channels": c,
            "kernel": list(kernel),
            "stride": list(stride),
            "in_hw": [h, w],
            "out_hw": [ho, wo],
        }
        self._append(Layer(meta), (ho, wo, c))

    def _block(self, block: BasicBlock) -> None:
        self._close()
        body, shortcut = _Chain(self.shape), _Chain(self.shape)
        for m in (block.conv1, block.bn1, nn.ReLU(), block.conv2, block.bn2):
            body.add(m)
        shortcut.add(block.shortcut)
        branches = {"body": body.finish(), "shortcut": shortcut.finish()}
        if body.shape != shortcut.shape:
            raise UserError(
                f"a BasicBlock's body gives shape {list(body.shape)} but its shortcut "
                f"{list(shortcut.shape)}; fix the block's shortcut"
            )
        self._append(Layer({"kind": "residual", "output": "relu"}, {}, branches), body.shape)


def _fold_graph(model: nn.Sequential | ResNet18, input_shape: tuple[int, ...]) -> list[Layer]:
    """The layers of a binary-weight network with real activations (module docstring)."""
    chain = _Chain(_channels_last(input_shape))
    if isinstance(model, ResNet18):
        for m in (model.conv1, model.bn1, nn.ReLU(), model.layers):
            chain.add(m)
        chain.pool("avgpool2d", (RESNET_POOL, RESNET_POOL), (RESNET_POOL, RESNET_POOL))
        for m in (nn.Flatten(), model.linear, model.bn_out):
            chain.add(m)
    else:
        chain.add(model)
    layers = chain.finish()
    if not any(layer.meta["kind"] in ("dense", "conv2d", "residual") for layer in layers):
        raise UserError(f"the {type(model).__name__} has no Linear or Conv2d layer to export")
    if len(chain.shape) != 1:
        raise UserError(
            f"the model must end in a vector of logits, but it ends in shape {list(chain.shape)}"
        )
    return layers
