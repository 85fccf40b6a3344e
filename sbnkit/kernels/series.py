"""Series flip-difference kernel: the exact kernel's Taylor expansion in the weights, as N GEMMs.

Since ``x = ±1``, ``σ(a - 2Wx) - σ(a) = Σ_{n≥1} σ⁽ⁿ⁾(a) (-2Wx)ⁿ / n!`` with ``xⁿ = x`` (odd ``n``)
or ``1`` (even ``n``). Truncated at order ``N``::

    g = x ⊙ Σ_{n odd ≤ N} T_n + Σ_{n even ≤ N} T_n,    T_n = Tᵀ(G ⊙ c_n(a); Wⁿ)

where ``c_n = (-2)ⁿ σ⁽ⁿ⁾ / n!``, ``Wⁿ`` is the elementwise power and ``Tᵀ(Z; V)`` the transposed
op: ``Z @ V`` (dense) or ``conv2d_input(x.shape, V, Z, stride, padding)`` (conv). The odd and the
even orders are stacked along the channels, so the cost is N transposed ops in two calls.
``N = 1`` is the linearisation ``σ'(a)(-2Wx)`` (the deep straight-through-like estimator); N
interpolates from it to the exact PSA kernel (``N → ∞``).

Derivatives. With ``w = σ(a)σ(-a) = σ'`` and ``z = 1 - 2σ(a)`` (``z² = 1 - 4w``), the odd
derivatives are polynomials ``F_n(w)`` and the even ones ``z E_n(w)``: ``F_1 = w``,
``E_{n+1} = w F_n'`` and ``F_{n+1} = -2w E_n + (1 - 4w) w E_n'``. The coefficients are exact
rationals computed once; in this basis the evaluation is well conditioned (sum of absolute terms
≤ 520 × the value for ``n ≤ 12``, against 5·10⁵ in powers of ``σ``) and accurate for saturated
units. All polynomials are evaluated at once, as one small GEMM of the coefficients against
``[G w, G w², …]`` (measured faster than one Horner loop per order in torch).

Order selection. One term is ``Δ(a, d) = σ(a - d) - σ(a)`` with ``|d| ≤ r = max 2|W|``; its
remainder after order N is bounded relative to the term itself::

    |R_N(a, d)| ≤ ε_N(r) |Δ(a, d)|,   ε_N(r) = sup_{a, 0 < |d| ≤ r} |R_N(a, d) / Δ(a, d)|

``ε_N`` is finite because ``R_N`` and ``Δ`` both decay like ``e^{-|a|}``; it tends to 0 with N
for ``r < π`` (the poles of σ at ``±iπ`` bound the radius of convergence). It is computed on a
grid of ``a ∈ [0, 30]`` (``Δ(-a, -d) = -Δ(a, d)`` covers ``a < 0``) and ``|d| ≤ r``, plus the
``a → ∞`` limit ``|e^d - Σ_{n≤N} dⁿ/n!| / |e^d - 1|`` (numerically the sup is at ``|d| = r``).
Summing over the outputs, ``|g_N - g| ≤ ε_N(r) Σ_j |G_j Δ_j|`` elementwise: the error relative
to the sum of the absolute terms is at most ε_N(r), and so is the relative error of ``g`` unless
the terms cancel systematically. It is a worst case: with Gaussian weights, where most ``|2W|``
are far below r, the measured relative error is ~100x smaller (``BENCHMARKS.md``: 0.6-1.4e-5
at ``tol = 1e-3`` on the CIFAR_S1 layers).
``order=None`` takes the smallest ``N ≤ N_MAX = 12`` with ``ε_N(r) ≤ tol``; for ``tol = 1e-3``:
``r = 0.25 → N = 3``, ``0.5 → 4``, ``1 → 6``, ``1.5 → 10``, and ``r > 1.79`` is unsupported
(:class:`SeriesUnsupportedError`; the dispatcher then uses an exact kernel). ``order=N``
forces N (any r, no error bound).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from functools import cache, lru_cache

import numpy as np
import torch
from torch.nn.grad import conv2d_input

from sbnkit.errors import UserError

from .reference import check_conv2d, check_dense

__all__ = [
    "N_MAX",
    "SeriesUnsupportedError",
    "derivative_polynomials",
    "flip_delta_conv2d_series",
    "flip_delta_dense_series",
    "max_step",
    "remainder_bounds",
    "select_order",
    "series_supported",
]

N_MAX = 12
ORDER_LIMIT = 24
R_LIMIT = 3.0
CHUNK_ELEMENTS = 1 << 22


class SeriesUnsupportedError(UserError):
    """The weights are too large for the series kernel to reach ``tol`` with ``N ≤ N_MAX``."""


@cache
def derivative_polynomials(n: int) -> tuple[Fraction, ...]:
    """Coefficients (in powers of ``w``, from ``w⁰``) of ``(-2)ⁿ σ⁽ⁿ⁾ / n!``, without the ``z``.

    ``σ⁽ⁿ⁾ = F_n(w)`` for odd ``n`` and ``z E_n(w)`` for even ``n`` (module docstring).
    """
    if n < 1:
        raise ValueError(f"derivative order must be >= 1, got {n}")
    poly = [Fraction(0), Fraction(1)]
    for k in range(1, n):
        deriv = [j * c for j, c in enumerate(poly)][1:]
        if k % 2 == 1:  # F_k -> E_{k+1} = w F_k'
            poly = [Fraction(0), *deriv]
        else:  # E_k -> F_{k+1} = -2 w E_k + (1 - 4w) w E_k'
            nxt = [Fraction(0)] * (len(poly) + 2)
            for j, c in enumerate(poly):
                nxt[j + 1] -= 2 * c
            for j, c in enumerate(deriv):
                nxt[j + 1] += c
                nxt[j + 2] -= 4 * c
            while nxt[-1] == 0:
                nxt.pop()
            poly = nxt
    scale = Fraction((-2) ** n, math.factorial(n))
    return tuple(c * scale for c in poly)


def _coefficient_matrix(order: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[N, D]``: row ``n`` (odd orders first, then even) holds the coefficients of ``w¹…w^D``."""
    rows = [*range(1, order + 1, 2), *range(2, order + 1, 2)]
    polys = [derivative_polynomials(n) for n in rows]
    deg = max(len(p) for p in polys) - 1
    mat = torch.zeros(order, deg, dtype=torch.float64)
    for i, p in enumerate(polys):
        for j, c in enumerate(p[1:]):
            mat[i, j] = float(c)
    return mat.to(dtype=dtype, device=device)


@lru_cache(maxsize=1024)
def _bounds_cached(r: float) -> tuple[float, ...]:
    a = np.linspace(0.0, 30.0, 601)[:, None]
    d = r * np.concatenate([np.arange(1, 9), -np.arange(1, 9)])[None, :] / 8
    s, sm = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(a))
    w, z = s * sm, np.tanh(-a / 2)
    delta = -sm * np.expm1(d) / (1 + np.exp(d - a))  # σ(a-d) - σ(a) without cancellation
    ed = np.expm1(d[0])
    partial = np.zeros(np.broadcast_shapes(a.shape, d.shape))
    tail = ed.copy()  # a → ∞ limit: (e^d - Σ_{n ≤ N} dⁿ/n!) / (e^d - 1)
    bounds = []
    for n in range(1, N_MAX + 1):
        coef = np.array([float(c) for c in derivative_polynomials(n)])
        c_n = np.polynomial.polynomial.polyval(w, coef) * (z if n % 2 == 0 else 1.0)
        partial += c_n * (d / 2) ** n
        tail -= d[0] ** n / math.factorial(n)
        sup = max(np.max(np.abs(delta - partial) / np.abs(delta)), np.max(np.abs(tail / ed)))
        bounds.append(float(sup))
    return tuple(bounds)


def remainder_bounds(r: float) -> tuple[float, ...]:
    """``(ε_1(r), …, ε_{N_MAX}(r))``: per-term relative truncation bounds for ``max 2|W| ≤ r``.

    ``r`` is rounded up to a multiple of 1/256 (the bounds grow with r) so results are cached.
    Raises ``ValueError`` unless ``0 < r < R_LIMIT``.
    """
    if not 0 < r < R_LIMIT:
        raise ValueError(f"remainder bounds need 0 < r < {R_LIMIT}, got {r}")
    return _bounds_cached(math.ceil(r * 256) / 256)


def select_order(r: float, tol: float = 1e-3) -> int | None:
    """Smallest ``N ≤ N_MAX`` with ``ε_N(r) ≤ tol`` (module docstring), or ``None`` if none.
    Raises :class:`UserError` for a non-positive ``tol``."""
    if not tol > 0:
        raise UserError(f"series kernel: tol must be > 0, got {tol}")
    if r == 0:
        return 1
    if not r < R_LIMIT:  # also NaN
        return None
    for n, eps in enumerate(remainder_bounds(r), start=1):
        if eps <= tol:
            return n
    return None


def max_step(W: torch.Tensor) -> float:
    """``r = max 2|W|``."""
    return 2 * float(W.abs().max()) if W.numel() else 0.0


def series_supported(W: torch.Tensor, tol: float = 1e-3) -> bool:
    """Whether ``order=None`` can meet ``tol`` for weights ``W`` with ``N ≤ N_MAX``."""
    return select_order(max_step(W), tol) is not None


def _order(W: torch.Tensor, tol: float, order: int | None) -> int:
    if order is not None:
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= ORDER_LIMIT:
            raise UserError(
                f"series kernel: order must be an int in [1, {ORDER_LIMIT}], got {order!r}"
            )
        return order
    r = max_step(W)
    n = select_order(r, tol)
    if n is None:
        raise SeriesUnsupportedError(
            f"series kernel: max 2|W| = {r:.3g} is too large to reach tol={tol:g} with order "
            f"<= {N_MAX}; use the fused or reference kernel, or force order=N"
        )
    return n


def _flush_(t: torch.Tensor) -> torch.Tensor:
    """Zero, in place, the entries below ``2⁹ √tiny`` (``2⁻⁵⁴`` in float32).

    Products of two kept entries and a coefficient of ``c_n`` (``≥ 2⁻¹⁷`` for ``n ≤ 12``) are
    then normal numbers: subnormal operands make CPU GEMMs several times slower.
    """
    return torch.hardshrink(t, 512 * torch.finfo(t.dtype).tiny ** 0.5, out=t)


def _scaled_chunks(
    G: torch.Tensor, a: torch.Tensor, order: int
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield ``(batch slice, Z, γ)`` with ``Z = [rows, N, L] = G ⊙ c_n(a) / γ``, ``γ = max|G|``.

    Rows of Z: the odd orders first. ``Z = C @ [G' w, G' w², …, G' w^D]`` (``G' = G / γ``), then
    the even rows times ``z``, with ``w = 1 / (4 cosh²(a/2))`` and ``z = tanh(-a/2)`` (both to full
    relative precision). Powers below ``2⁹ √tiny`` are dropped (:func:`_flush_`): relative to γ
    they are far below rounding. The buffers are reused across chunks (fresh large allocations
    cost page faults comparable to the arithmetic).
    """
    batch, length = a.shape[0], a[0].numel()
    mat = _coefficient_matrix(order, a.dtype, a.device)
    nb = max(1, min(batch, CHUNK_ELEMENTS // max(1, order * length)))
    powers = torch.empty(nb, mat.shape[1], length, dtype=a.dtype, device=a.device)
    z = torch.empty(nb, order, length, dtype=a.dtype, device=a.device)
    n_odd = (order + 1) // 2
    for b0 in range(0, batch, nb):
        rows = min(nb, batch - b0)
        bs = slice(b0, b0 + rows)
        a2, g2 = a[bs].reshape(rows, length), G[bs].reshape(rows, length)
        gamma = g2.abs().max().clamp_min(torch.finfo(G.dtype).tiny)
        w = _flush_(torch.cosh(0.5 * a2).square_().reciprocal_().mul_(0.25))
        p = powers[:rows]
        _flush_(torch.div(g2, gamma, out=p[:, 0]).mul_(w))
        for k in range(1, mat.shape[1]):
            _flush_(torch.mul(p[:, k - 1], w, out=p[:, k]))
        zr = torch.matmul(mat, p, out=z[:rows])
        zr[:, n_odd:] *= torch.tanh(-0.5 * a2)[:, None]
        yield bs, zr, gamma


def _stacked_powers(W: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``cat(Wⁿ, n odd)`` and ``cat(Wⁿ, n even)`` along dim 0, by ``W^{n+2} = Wⁿ W²``.

    Powers ``n ≥ 2`` drop entries below ``2⁹ √tiny`` (:func:`_flush_`); relative to the same
    weight's first-order term such an entry is below ``|w|ⁿ⁻¹ < 2⁻²⁷`` (float32).
    """
    if order == 1:
        return W, None
    n_odd, n_even = (order + 1) // 2, order // 2
    odd = torch.empty((n_odd, *W.shape), dtype=W.dtype, device=W.device)
    even = torch.empty((n_even, *W.shape), dtype=W.dtype, device=W.device)
    odd[0] = W
    _flush_(torch.mul(W, W, out=even[0]))
    for k in range(1, n_odd):
        _flush_(torch.mul(odd[k - 1], even[0], out=odd[k]))
    for k in range(1, n_even):
        _flush_(torch.mul(even[k - 1], even[0], out=even[k]))
    return odd.flatten(0, 1), even.flatten(0, 1)


def flip_delta_dense_series(
    G: torch.Tensor,
    a: torch.Tensor,
    W: torch.Tensor,
    x: torch.Tensor,
    tol: float = 1e-3,
    order: int | None = None,
) -> torch.Tensor:
    """``g ≈ Σ_{n ≤ N} ((-2)ⁿ/n!) xⁿ ⊙ ((G ⊙ σ⁽ⁿ⁾(a)) @ Wⁿ)``; N from ``tol`` or ``order``.
    Raises :class:`UserError` for inconsistent shapes or dtypes and
    :class:`SeriesUnsupportedError` for weights too large for ``tol``."""
    check_dense(G, a, W, x)
    n = _order(W, tol, order)
    with torch.no_grad():
        out = torch.empty_like(x)
        if out.numel() == 0:
            return out
        odd, even = _stacked_powers(W, n)
        n_odd = (n + 1) // 2
        for bs, z, gamma in _scaled_chunks(G, a, n):
            rows = z.shape[0]
            res = (z[:, :n_odd].reshape(rows, -1) @ odd).mul_(x[bs])
            if even is not None:
                res += z[:, n_odd:].reshape(rows, -1) @ even
            out[bs] = res.mul_(gamma)
        return out


def flip_delta_conv2d_series(
    G: torch.Tensor,
    a: torch.Tensor,
    W: torch.Tensor,
    x: torch.Tensor,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    tol: float = 1e-3,
    order: int | None = None,
) -> torch.Tensor:
    """``g ≈ Σ_{n ≤ N} ((-2)ⁿ/n!) xⁿ ⊙ conv2d_input(x.shape, Wⁿ, G ⊙ σ⁽ⁿ⁾(a))``. Raises as
    :func:`flip_delta_dense_series` does."""
    s, p = check_conv2d(G, a, W, x, stride, padding)
    n = _order(W, tol, order)
    with torch.no_grad():
        c_out, ho, wo = a.shape[1:]
        out = torch.empty_like(x)
        if out.numel() == 0:
            return out
        odd, even = _stacked_powers(W, n)
        n_odd = (n + 1) // 2
        for bs, z, gamma in _scaled_chunks(G, a, n):
            rows = z.shape[0]
            shape = (rows, *x.shape[1:])
            zo = z[:, :n_odd].reshape(rows, n_odd * c_out, ho, wo)
            res = conv2d_input(shape, odd, zo, s, p).mul_(x[bs])
            if even is not None:
                ze = z[:, n_odd:].reshape(rows, (n - n_odd) * c_out, ho, wo)
                res += conv2d_input(shape, even, ze, s, p)
            out[bs] = res.mul_(gamma)
        return out
