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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import UserError
from ..network import SBN, ChannelAffine, Head, Stage
from ..units import BinaryUnit
from ..weights import LatentWeight
from .packing import pack_signs

__all__ = ["Layer", "fold_model", "fold_threshold"]

OUTPUTS = ("sign", "relu", "identity")


@dataclass
class Layer:
    """One deployable layer: ``meta`` (JSON-able geometry and kinds) and its ``arrays``."""

    meta: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


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
    in_kind: str,
    shape: tuple[int, ...],
    pool: str,
) -> tuple[Layer, torch.Tensor, bool, int]:
    """The op part of a layer: geometry, weights; returns ``(layer, weight, binary, K)``."""
    w, binary = _mode_weight(op)
    if isinstance(op, nn.Conv2d):
        if len(shape) != 3 or shape[2] != op.in_channels:
            raise UserError(f"conv layer expects {op.in_channels} input channels, got {shape}")
        meta = _conv_meta(op, (shape[0], shape[1]))
        k = op.in_channels * op.kernel_size[0] * op.kernel_size[1]
        spatial = None
    else:
        spatial = shape if len(shape) == 3 and pool == "none" else None
        n_in = shape[-1] if pool == "avg" and len(shape) == 3 else math.prod(shape)
        if n_in != op.in_features:
            raise UserError(
                f"dense layer expects {op.in_features} inputs, its input has {n_in}; "
                "only SBN stages and the head are exported"
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


def fold_model(model: SBN) -> tuple[list[Layer], tuple[int, ...]]:
    """The deployable layers of ``model``'s mode network (norms in eval mode) and its input
    shape.

    Raises :class:`UserError` for modules that cannot be exported.
    """
    if not isinstance(model, SBN):
        raise UserError(f"only sbnkit SBN models can be exported, not {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        return _fold(model)
    finally:
        model.train(was_training)


def _fold(model: SBN) -> tuple[list[Layer], tuple[int, ...]]:
    input_shape = tuple(model.input_shape)
    # the engine holds spatial maps channels last
    shape = (
        (input_shape[1], input_shape[2], input_shape[0]) if len(input_shape) == 3 else input_shape
    )
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
    return layers, input_shape
