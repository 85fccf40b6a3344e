"""Exact fused CPU flip-difference kernel (numba), for the formulas of :mod:`.reference`.

Each term ``Δ = σ(a - d) - σ(a)`` (``d = 2 W x``) is evaluated in a form that has no cancellation
and cannot overflow. The symmetry ``σ(-u) = 1 - σ(u)`` gives ``Δ(a, d) = -Δ(-a, -d)``; for
``a ≥ 0``, with ``A = e^{-|a|}``, ``R = e^{-|d|}`` and ``m = expm1(-|d|) ∈ (-1, 0]``::

    d > 0:   Δ = σ(-|a|) m / (R + A)          (= σ(a)σ(d-a)(e^{-d} - 1) rewritten)
    d ≤ 0:   Δ = -σ(-|a|) m / (1 + A R)       (= -σ(a-d)σ(-a)(e^{d} - 1) rewritten)

and the case ``a < 0`` is the same with the branch chosen by the sign of ``a·d``. All factors lie
in ``[-1, 1]`` and both denominators in ``(0, 2]``. Precomputed outside the loop (by torch):
``Q = G σ(-|a|)`` and ``±A`` (signed by ``a``) per output, ``M = sign(W) expm1(-2|W|)`` and
``R = e^{-2|W|}`` per weight, so with ``t = M x`` the inner loop is::

    g += Q t / (R + A)  if t·sign(a) < 0  else  Q t / (1 + A R)

one multiply-add and one division per term, vectorised over the input channels (channels-last,
contiguous innermost). The loop runs over tiles of input pixels (a dense layer is a 1x1 conv on
a 1x1 image, with the batch as the pixels), so threads never write the same output and a weight
row is reused across the tile. ``fastmath`` is off: no reassociation, no NaN/Inf assumptions.

Precision. Exponents are clamped so every quantity is a normal float: ``|a| ≤ C_a`` and
``2|W| ≤ C_a + ln(1/ε)`` (``C_a = 60`` in float32, ``660`` in float64). float32 inputs are computed
in float32 when ``max|a| ≤ 60`` (then no clamp changes a result beyond rounding) and in float64
otherwise; float64 inputs always in float64, where the result is exact to rounding whenever
``max|a| ≤ 660`` or ``max 2|W| ≤ 620`` and finite for any finite input. Non-CPU tensors use the
reference kernel. numba is imported on first use (:mod:`._fused_jit`, so ``import sbnkit`` does
not load it); the two signatures (float32, float64) compile then (a few
seconds each, cached on disk by ``cache=True``). The kernel runs ``torch.get_num_threads()``
threads and leaves torch's thread count as it found it.
"""

from __future__ import annotations

import torch

from .reference import (
    check_conv2d,
    check_dense,
    flip_delta_conv2d_reference,
    flip_delta_dense_reference,
)

__all__ = ["flip_delta_conv2d_fused", "flip_delta_dense_fused"]

CLAMP_A = {torch.float32: 60.0, torch.float64: 660.0}
CLAMP_D = {torch.float32: 77.0, torch.float64: 700.0}
TILE = 16


def _compute_dtype(a: torch.Tensor) -> torch.dtype:
    if a.dtype == torch.float64:
        return torch.float64
    if a.numel() == 0 or float(a.abs().max()) <= CLAMP_A[torch.float32]:
        return torch.float32
    return torch.float64


def _run(
    G: torch.Tensor,
    a: torch.Tensor,
    W: torch.Tensor,
    x: torch.Tensor,
    geometry: tuple[int, int, int, int, int, int, int],
) -> torch.Tensor:
    """Channels-last ``G, a: [P_out, C_out]``, ``W: [K, K, C_out, C_in]``, ``x: [P_in, C_in]``."""
    from . import _fused_jit as jit

    cd = _compute_dtype(a)
    a = a.to(cd)
    abs_a = a.abs()
    q = (G.to(cd) * torch.sigmoid(-abs_a)).contiguous()
    big_a = torch.exp(-abs_a.clamp(max=CLAMP_A[cd]))
    sa = torch.where(a < 0, -big_a, big_a).contiguous()
    w = W.to(cd)
    d = 2 * w.abs()
    m = (torch.expm1(-d) * torch.sign(w)).contiguous()
    rw = torch.exp(-d.clamp(max=CLAMP_D[cd])).contiguous()
    xc = x.detach().to(cd).contiguous()
    g = torch.zeros_like(xc)
    h, wd, ho, wo, k, s, p = geometry
    torch_threads = torch.get_num_threads()
    threads = max(1, min(torch_threads, jit.numba.config.NUMBA_NUM_THREADS))
    jit.numba.set_num_threads(threads)
    tile = max(1, min(TILE, xc.shape[0] // (4 * threads)))
    one = jit.np.float32(1.0) if cd == torch.float32 else jit.np.float64(1.0)
    arrays = (q, sa, m, rw, xc, g)
    try:
        jit.flip_kernel(*(t.numpy() for t in arrays), h, wd, ho, wo, k, s, p, tile, one)
    finally:
        # numba's OpenMP layer shares the OpenMP runtime with torch and resets its thread count
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
    return g


def flip_delta_dense_fused(
    G: torch.Tensor, a: torch.Tensor, W: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """``g[b,i] = Σ_j G[b,j] (σ(a[b,j] - 2 W[j,i] x[b,i]) - σ(a[b,j]))``, exact, fused on CPU.
    Raises :class:`UserError` for inconsistent shapes or dtypes."""
    check_dense(G, a, W, x)
    if x.device.type != "cpu":
        return flip_delta_dense_reference(G, a, W, x)
    with torch.no_grad():
        if x.numel() == 0 or a.shape[1] == 0:
            return torch.zeros_like(x)
        w4 = W[None, None]  # [1, 1, n_out, n_in]: a 1x1 conv on 1x1 images
        return _run(G, a, w4, x, (1, 1, 1, 1, 1, 1, 0)).to(x.dtype)


def flip_delta_conv2d_fused(
    G: torch.Tensor,
    a: torch.Tensor,
    W: torch.Tensor,
    x: torch.Tensor,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
) -> torch.Tensor:
    """Conv flip difference (see :mod:`.reference`), exact, fused on CPU. Raises
    :class:`UserError` for inconsistent shapes, dtypes, stride or padding."""
    s, p = check_conv2d(G, a, W, x, stride, padding)
    if x.device.type != "cpu":
        return flip_delta_conv2d_reference(G, a, W, x, s, p)
    with torch.no_grad():
        batch, c_in, h, wd = x.shape
        c_out, ho, wo = a.shape[1:]
        if x.numel() == 0 or c_out == 0:
            return torch.zeros_like(x)
        g = _run(
            G.permute(0, 2, 3, 1).reshape(-1, c_out),
            a.permute(0, 2, 3, 1).reshape(-1, c_out),
            W.permute(2, 3, 0, 1),
            x.permute(0, 2, 3, 1).reshape(-1, c_in),
            (h, wd, ho, wo, W.shape[2], s, p),
        )
        return g.view(batch, h, wd, c_in).permute(0, 3, 1, 2).to(x.dtype).contiguous()
