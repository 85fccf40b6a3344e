"""The packed inference engine: the mode network of a deploy file in numpy (+ a numba kernel).

Layers that read ``±1`` states with ``±1`` weights compute ``t = K − 2·popcount(x XOR w)`` on
packed words (conv: on packed im2col patches, with the padding correction of
:data:`~sbnkit.deploy.format.SEMANTICS`), exactly in integers, then compare ``t`` with the folded
threshold. Layers that read floats (pixels, real activations, average-pooled states) or hold
float32 weights compute ``t`` in float32; their binary weights are unpacked to ``±1`` float32
on first use (and kept), except where the numba lookup kernel below applies. States between
layers are boolean arrays (``True`` = ``−1``), channels last.

Two popcount kernels give identical integers: ``numpy`` (XOR + ``np.bitwise_count``, in row
chunks) and ``numba`` (one fused XOR–popcount loop per output, parallel, LLVM ``ctpop``). With
``numba``, a dense layer with packed weights that reads floats uses a byte lookup table
(:func:`signed_sum_numba`) for batches up to ``SIGNED_SUM_MAX_BATCH``; it differs from the
float32 product only by round-off.

Binary-weight networks with real activations read floats everywhere, so their dense and conv
layers take the float path above (packed ``±1`` weights, float32 activations). The other layer
kinds run in numpy on float32 channels-last maps: ``affine`` (``act(x·scale + shift)``),
``maxpool2d`` / ``avgpool2d`` (max / float32 mean over each window) and ``residual``
(``act(body(x) + shortcut(x))``, each branch a list of layers run like the top level).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ..errors import UserError
from .fold import Layer, Output
from .format import read
from .packing import pack_signs, unpack_signs

__all__ = [
    "KERNELS",
    "Engine",
    "Kernel",
    "popcount_numba",
    "popcount_numpy",
    "signed_sum_numba",
]

Kernel = Literal["numpy", "numba"]
KERNELS: tuple[Kernel, ...] = get_args(Kernel)
CHUNK_WORDS = 1 << 18  # XOR temporaries of the numpy kernel stay below 2 MiB
SIGNED_SUM_MAX_BATCH = 8  # float inputs x packed weights: lookup kernel up to this batch


_LOWBIT = np.array([0] + [(v & -v).bit_length() - 1 for v in range(1, 256)], dtype=np.int64)


def signed_sum_numba(x: np.ndarray, words: np.ndarray, k: int) -> np.ndarray:
    """``x @ W.T`` (float32 ``[M, N]``) for float ``x [M, k]`` and packed ``±1`` weights ``W``.

    A lookup table per byte of 8 inputs holds the 256 signed sums of those inputs; each output
    then adds one table entry per byte of its weight row (float64 accumulation). Wins over a
    float32 GEMV on the unpacked weights for small batches.
    """
    groups = -(-k // 8)
    xp = np.zeros((x.shape[0], 8 * groups), dtype=np.float64)
    xp[:, :k] = x
    wbytes = np.ascontiguousarray(words.view(np.uint8)[:, :groups])
    out = np.empty((x.shape[0], words.shape[0]), dtype=np.float64)
    from ._jit import signed_sum_kernel

    signed_sum_kernel(xp, wbytes, _LOWBIT, out)
    return out.astype(np.float32)


def popcount_numpy(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``popcount(x[i] XOR w[j])``, int64 ``[M, N]``, of uint64 words ``x [M, W]``, ``w [N, W]``."""
    m, (n, nwords) = x.shape[0], w.shape
    out = np.empty((m, n), dtype=np.int64)
    rows = max(1, CHUNK_WORDS // max(1, n * nwords))
    for start in range(0, m, rows):
        xor = np.bitwise_xor(x[start : start + rows, None, :], w[None, :, :])
        out[start : start + rows] = np.bitwise_count(xor).sum(axis=-1, dtype=np.int64)
    return out


def popcount_numba(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The same as :func:`popcount_numpy`, by the compiled kernel (numba threads)."""
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.int64)
    from ._jit import popcount_kernel

    popcount_kernel(np.ascontiguousarray(x), np.ascontiguousarray(w), out)
    return out


def _windows(x: np.ndarray, meta: dict) -> np.ndarray:
    """The view ``[B, Ho, Wo, C, kh, kw]`` of the (padded) NHWC map ``x``'s windows."""
    (kh, kw), (sh, sw) = meta["kernel"], meta["stride"]
    ho, wo = meta["out_hw"]
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    return win[:, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw]


def _im2col(x: np.ndarray, meta: dict, pad_value) -> np.ndarray:
    """Patches ``[B, Ho, Wo, kh·kw·C]`` (order ``(kh, kw, c)``) of the NHWC map ``x``."""
    ph, pw = meta["padding"]
    if ph or pw:
        x = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=pad_value)
    win = _windows(x, meta).transpose(0, 1, 2, 4, 5, 3)
    return win.reshape(x.shape[0], *meta["out_hw"], -1)


def _padding_correction(meta: dict, w_signs: np.ndarray) -> np.ndarray | None:
    """``[Ho·Wo, N]``: the weight sum over each output position's padded taps (int64)."""
    (kh, kw), (ph, pw) = meta["kernel"], meta["padding"]
    if not (ph or pw):
        return None
    h, w = meta["in_hw"]
    c = meta["in_channels"]
    inside = np.ones((1, h, w, 1), dtype=np.int64)
    padded = 1 - _im2col(inside, {**meta, "in_channels": 1}, 0).reshape(-1, kh * kw)  # [P, taps]
    tap_sums = w_signs.reshape(w_signs.shape[0], kh * kw, c).sum(axis=2).astype(np.int64)
    return padded @ tap_sums.T


class _Compiled:
    """One layer with the arrays the engine needs, prepared at load."""

    def __init__(self, layer: Layer) -> None:
        meta, arrays = layer.meta, layer.arrays
        self.meta = meta
        self.conv = meta["kind"] == "conv2d"
        self.k = (
            meta["kernel"][0] * meta["kernel"][1] * meta["in_channels"]
            if self.conv
            else meta["in_features"]
        )
        self.integer = meta["input"] == "bits" and meta["weight"] == "bits"
        self.output = meta["output"]
        self.words = self._floats = self.correction = None
        self.stored_bytes = int(arrays["weight"].nbytes)
        if self.integer:
            self.words = np.ascontiguousarray(arrays["weight"])
            if self.conv:
                signs = unpack_signs(self.words, self.k, np.int64)
                self.correction = _padding_correction(meta, signs)
                if self.correction is not None:
                    self.correction = self.correction.astype(np.int32)
        elif meta["weight"] == "bits":
            self.words = np.ascontiguousarray(arrays["weight"])
        else:
            self._floats = np.ascontiguousarray(arrays["weight"], dtype=np.float32)
        if self.output == "sign":
            self.threshold = arrays["threshold"]
            self.flip = arrays["flip"].astype(bool)
        else:
            self.scale, self.shift = arrays["scale"], arrays["shift"]

    def floats(self) -> np.ndarray:
        """The float32 ``[N, K]`` weights (packed ones are unpacked on first use and kept)."""
        if self._floats is None:
            self._floats = unpack_signs(self.words, self.k, np.float32)
        return self._floats

    def preactivation(self, x: np.ndarray, kernel: Kernel) -> np.ndarray:
        """``t = W·x`` (int64 for integer layers, float32 otherwise); ``x`` bool or float32."""
        meta = self.meta
        if meta.get("pool") == "avg":
            x = (1.0 - 2.0 * x).astype(np.float32) if x.dtype == bool else x
            x = x.mean(axis=(1, 2), dtype=np.float32)
        if self.integer:
            rows = _im2col(x, meta, False) if self.conv else x.reshape(x.shape[0], -1)
            lead = rows.shape[:-1]
            popcount = popcount_numba if kernel == "numba" else popcount_numpy
            counts = popcount(pack_signs(rows.reshape(-1, self.k)), self.words)
            t = (self.k - 2 * counts).reshape(*lead, -1)
            if self.correction is not None:
                t -= self.correction.reshape(*lead[1:], -1)
            return t
        if x.dtype == bool:
            x = (1.0 - 2.0 * x).astype(np.float32)
        if self.conv:
            rows = _im2col(x, meta, 0.0)
            return rows @ self.floats().T
        x = x.reshape(x.shape[0], -1)
        if kernel == "numba" and self.words is not None and x.shape[0] <= SIGNED_SUM_MAX_BATCH:
            return signed_sum_numba(x, self.words, self.k)
        return x @ self.floats().T

    def activate(self, t: np.ndarray) -> np.ndarray:
        """The layer output: bool states (``True`` = ``−1``) or float32 values."""
        if self.output == "sign":
            return np.where(self.flip, t > self.threshold, t < self.threshold)
        return _activate((t * self.scale + self.shift).astype(np.float32, copy=False), self.output)


def _activate(y: np.ndarray, output: Output) -> np.ndarray:
    return np.maximum(y, 0.0) if output == "relu" else y


class _Affine:
    """An ``affine`` layer: ``act(x·scale + shift)`` per channel (the last axis), float32."""

    integer = False
    stored_bytes = 0

    def __init__(self, layer: Layer) -> None:
        self.meta, self.output = layer.meta, layer.meta["output"]
        self.scale, self.shift = layer.arrays["scale"], layer.arrays["shift"]

    def preactivation(self, x: np.ndarray, kernel: Kernel) -> np.ndarray:
        return x

    def activate(self, t: np.ndarray) -> np.ndarray:
        return _activate((t * self.scale + self.shift).astype(np.float32, copy=False), self.output)


class _Pool:
    """A ``maxpool2d`` / ``avgpool2d`` layer on a float32 NHWC map (no padding, floor)."""

    integer = False
    stored_bytes = 0
    output = "identity"

    def __init__(self, layer: Layer) -> None:
        self.meta = layer.meta

    def preactivation(self, x: np.ndarray, kernel: Kernel) -> np.ndarray:
        win = _windows(x, self.meta)
        if self.meta["kind"] == "maxpool2d":
            return win.max(axis=(-2, -1))
        return win.mean(axis=(-2, -1), dtype=np.float32)

    def activate(self, t: np.ndarray) -> np.ndarray:
        return t


class _Residual:
    """A ``residual`` layer: ``act(body(x) + shortcut(x))``; an empty shortcut is ``x``."""

    integer = False

    def __init__(self, layer: Layer) -> None:
        self.meta, self.output = layer.meta, layer.meta["output"]
        self.body = [_compile(sub) for sub in layer.branches["body"]]
        self.shortcut = [_compile(sub) for sub in layer.branches["shortcut"]]
        self.stored_bytes = sum(sub.stored_bytes for sub in [*self.body, *self.shortcut])

    def preactivation(self, x: np.ndarray, kernel: Kernel) -> np.ndarray:
        return _run(self.body, x, kernel) + _run(self.shortcut, x, kernel)

    def activate(self, t: np.ndarray) -> np.ndarray:
        return _activate(t, self.output)


_Runnable = _Compiled | _Affine | _Pool | _Residual


def _compile(layer: Layer) -> _Runnable:
    kind = layer.meta["kind"]
    if kind == "affine":
        return _Affine(layer)
    if kind in ("maxpool2d", "avgpool2d"):
        return _Pool(layer)
    if kind == "residual":
        return _Residual(layer)
    return _Compiled(layer)


def _run(layers: list[_Runnable], h: np.ndarray, kernel: Kernel) -> np.ndarray:
    for layer in layers:
        h = layer.activate(layer.preactivation(h, kernel))
    return h


class Engine:
    """The mode network of a deploy file; :meth:`predict` maps float32 inputs to logits."""

    def __init__(self, header: dict, layers: list[Layer], kernel: Kernel = "numba") -> None:
        """Prepare the validated ``layers`` of a deploy file.

        Raises :class:`UserError` for an unknown ``kernel``.
        """
        if kernel not in KERNELS:
            raise UserError(f"unknown kernel {kernel!r}; known kernels: {', '.join(KERNELS)}")
        self.header = header
        self.kernel = kernel
        self.input_shape = tuple(int(s) for s in header["input_shape"])
        self.layers = [_compile(layer) for layer in layers]

    @classmethod
    def load(cls, path: str | os.PathLike, kernel: Kernel = "numba") -> Engine:
        """Read and validate ``path`` (see :func:`sbnkit.deploy.format.read`).

        Raises :class:`UserError` (one line) for a missing, damaged or mismatched file or an
        unknown ``kernel``.
        """
        header, layers = read(Path(path))
        return cls(header, layers, kernel)

    def _check(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise UserError(f"input must be a numpy array, got {type(x).__name__}")
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            want = ", ".join(["B", *map(str, self.input_shape)])
            raise UserError(f"input has shape {list(x.shape)} but the model expects [{want}]")
        if not np.issubdtype(x.dtype, np.floating):
            raise UserError(f"input must be floating point, got {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise UserError("input contains NaN or Inf; clean or normalise the data first")
        return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x

    def trace(self, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(t, output)`` of every top-level layer on ``x`` (spatial arrays channels last).

        Raises :class:`UserError` for inputs that :meth:`predict` refuses.
        """
        h = self._check(x)
        out = []
        for layer in self.layers:
            t = layer.preactivation(h, self.kernel)
            h = layer.activate(t)
            out.append((t, h))
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[B, num_outputs]`` (float32) for inputs ``x`` ``[B, *input_shape]``.

        Raises :class:`UserError` for a wrong shape, a non-float dtype or non-finite values.
        """
        return _run(self.layers, self._check(x), self.kernel)

    def weight_bytes(self) -> int:
        """Bytes of the weights as stored in the file (packed words or float32)."""
        return sum(layer.stored_bytes for layer in self.layers)
