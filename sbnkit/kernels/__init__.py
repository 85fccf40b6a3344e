"""PSA flip-difference kernels: ``Σ_j G_j (σ(a_j - 2 W_ji x_i) - σ(a_j))`` for ``±1`` inputs ``x``.

Kernels (each with a dense and a conv2d function, same formulas, see :mod:`.reference`):

* ``reference`` — broadcasting / unfold-fold, chunked; any device and dtype; slow.
* ``fused`` — exact numba CPU kernel, one division per term (non-CPU: the reference).
* ``series`` — order-N Taylor series in W as N transposed GEMMs/convs; error ≤ ``tol`` relative
  to the terms (or a forced ``order``); :class:`SeriesUnsupportedError` if ``max 2|W|`` is too
  large for ``N ≤ N_MAX = 12``.
* ``auto`` — an explicit ``order`` selects ``series``. Otherwise, off the CPU: ``series`` when it
  is supported, else ``reference``. On the CPU: ``series`` when it is supported and the cost
  model below prefers it, else ``fused``.

Cost model (CPU), in units of one multiply-add of the matching transposed conv / GEMM, with
``M = B·H'·W'`` output positions, ``fan_in = C_in·K²`` (dense: ``n_in``) and
``terms = M·C_out·fan_in``::

    fused  = FUSED_COST · terms                                       one division per term
    series = N · terms · (1 + POWER_COST / M + ELEM_COST / fan_in)    N transposed ops, forming
                                                                      Wⁿ and G ⊙ c_n(a)

so ``auto`` takes the series iff ``N (1 + 80/M + 25/fan_in) < 14``. Measured
(``benchmarks/bench_kernels.py --threads 1 --cpu-time [--orders 4,6,8,10,12]``, batch 64,
float32, ``BENCHMARKS.md``): one series order costs 0.6-1.7x a ``conv2d_input``; the fused
kernel 15-21x on the stride-1 CIFAR_S1 convs and on dense 784/1024→1024 layers, 6-10x on the
strided and the smallest convs, where torch's conv is itself inefficient. At the auto orders of
trained-like weights (N = 5-7 at ``tol = 1e-3``) the series is 1.6-3.2x faster than fused on
every CIFAR_S1 conv where it is supported. The crossover is beyond N = 12 on the large convs, at
N ≈ 8-10 on the dense layers (forming Wⁿ then rivals the small-batch GEMM: the ``80/M`` term)
and at N ≈ 5-8 on the smallest convs (there the model can err by ~1.5x, on the cheapest layers).
The fused kernel is 8-17x faster than the reference, the series 16-37x.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from sbnkit.errors import UserError

from .fused import flip_delta_conv2d_fused, flip_delta_dense_fused
from .reference import (
    check_conv2d,
    check_dense,
    flip_delta_conv2d_reference,
    flip_delta_dense_reference,
)
from .series import (
    N_MAX,
    SeriesUnsupportedError,
    flip_delta_conv2d_series,
    flip_delta_dense_series,
    max_step,
    remainder_bounds,
    select_order,
    series_supported,
)

KernelName = Literal["auto", "reference", "fused", "series"]
KERNELS: tuple[str, ...] = get_args(KernelName)

__all__ = [
    "KERNELS",
    "N_MAX",
    "KernelName",
    "SeriesUnsupportedError",
    "choose_kernel",
    "flip_delta_conv2d",
    "flip_delta_conv2d_fused",
    "flip_delta_conv2d_reference",
    "flip_delta_conv2d_series",
    "flip_delta_dense",
    "flip_delta_dense_fused",
    "flip_delta_dense_reference",
    "flip_delta_dense_series",
    "remainder_bounds",
    "select_order",
    "series_supported",
]


def _check_name(kernel: str) -> None:
    if kernel not in KERNELS:
        known = ", ".join(KERNELS)
        raise UserError(f"unknown flip-difference kernel {kernel!r}; known kernels: {known}")


FUSED_COST = 14.0
POWER_COST = 80.0
ELEM_COST = 25.0


def _series_cheaper(order: int, a: torch.Tensor, W: torch.Tensor) -> bool:
    """The CPU cost model of the module docstring."""
    positions = a.numel() // max(1, a.shape[1])
    fan_in = W.numel() // max(1, W.shape[0])
    if positions == 0 or fan_in == 0:
        return True
    return order * (1 + POWER_COST / positions + ELEM_COST / fan_in) < FUSED_COST


def choose_kernel(
    a: torch.Tensor,
    W: torch.Tensor,
    kernel: KernelName = "auto",
    tol: float = 1e-3,
    order: int | None = None,
) -> KernelName:
    """The kernel that ``kernel`` resolves to for pre-activations ``a`` and weights ``W``.
    Raises :class:`UserError` for an unknown kernel."""
    _check_name(kernel)
    if kernel != "auto":
        return kernel
    if order is not None:
        return "series"
    n = select_order(max_step(W), tol)
    if W.device.type != "cpu":
        return "reference" if n is None else "series"
    return "series" if n is not None and _series_cheaper(n, a, W) else "fused"


def flip_delta_dense(
    G: torch.Tensor,
    a: torch.Tensor,
    W: torch.Tensor,
    x: torch.Tensor,
    kernel: KernelName = "auto",
    tol: float = 1e-3,
    order: int | None = None,
) -> torch.Tensor:
    """``g[b,i] = Σ_j G[b,j] (σ(a[b,j] - 2 W[j,i] x[b,i]) - σ(a[b,j]))``, shape ``[B, n_in]``.

    ``G, a: [B, n_out]``, ``W: [n_out, n_in]``, ``x: [B, n_in]`` with entries ±1. ``tol`` and
    ``order`` apply to the series kernel only. Raises :class:`UserError` for an unknown kernel,
    inconsistent shapes or dtypes, and :class:`SeriesUnsupportedError` when the series kernel is
    asked for weights too large for it.
    """
    _check_name(kernel)
    check_dense(G, a, W, x)
    name = choose_kernel(a, W, kernel, tol, order)
    if name == "series":
        return flip_delta_dense_series(G, a, W, x, tol, order)
    if name == "fused":
        return flip_delta_dense_fused(G, a, W, x)
    return flip_delta_dense_reference(G, a, W, x)


def flip_delta_conv2d(
    G: torch.Tensor,
    a: torch.Tensor,
    W: torch.Tensor,
    x: torch.Tensor,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    kernel: KernelName = "auto",
    tol: float = 1e-3,
    order: int | None = None,
) -> torch.Tensor:
    """Conv flip difference (cross-correlation, zero padding), shape of ``x``: ``[B, C_in, H, W]``.

    ``g[b,r,h,w] = Σ G[b,c,oh,ow] (σ(a[b,c,oh,ow] - 2 W[c,r,kh,kw] x[b,r,h,w]) - σ(a[b,c,oh,ow]))``
    over ``c`` and ``(oh, ow, kh, kw)`` with ``oh·s - p + kh = h``, ``ow·s - p + kw = w``;
    ``G, a: [B, C_out, H', W']``, ``W: [C_out, C_in, K, K]``. Raises as
    :func:`flip_delta_dense` does.
    """
    _check_name(kernel)
    check_conv2d(G, a, W, x, stride, padding)
    name = choose_kernel(a, W, kernel, tol, order)
    if name == "series":
        return flip_delta_conv2d_series(G, a, W, x, stride, padding, tol, order)
    if name == "fused":
        return flip_delta_conv2d_fused(G, a, W, x, stride, padding)
    return flip_delta_conv2d_reference(G, a, W, x, stride, padding)
