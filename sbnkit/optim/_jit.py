"""The numba loops of :mod:`.compiled` and :mod:`.philox`, in their own module so that numba loads
on first use only.

Every loop takes flat contiguous arrays of one dtype and constants already cast to it, and repeats
the torch reference's operations in its order, so float32 stays float32 (``fastmath`` off: no
reassociation, no contraction into FMA; ``error_model="numpy"``: IEEE division by zero). The loops
are branch-free (every candidate value is computed, then selected), so LLVM vectorises them and
random signs cost no mispredictions; the rare elements that need torch's ``log``/``tanh`` are
counted in the loop and collected after it.
"""

from __future__ import annotations

import numba
import numpy as np

from .philox import PHILOX_M, PHILOX_W, ROUNDS

__all__ = [
    "BLOCK",
    "adaste_backward_big",
    "adaste_backward_code",
    "adaste_backward_corrected",
    "adaste_forward",
    "bayesbinn_sample",
    "bayesbinn_update",
    "bayesbinn_update_at",
    "finish_sample",
    "philox_uniform32",
    "philox_uniform64",
    "scatter",
    "np",
]

BLOCK = 64  # elements per block: counted vectorised, scanned for rare elements only if it has any


@numba.njit(inline="always", error_model="numpy")
def _sign(x, one):
    """torch's vectorised ``sign`` in ``x``'s dtype: ±1, 0 for ±0 and NaN."""
    zero = one - one
    s = one if x > zero else zero
    return -one if x < zero else s


@numba.njit(inline="always", error_model="numpy")
def _clamp(x, lo, hi):
    """torch's ``clamp``: NaN stays NaN."""
    if x < lo:
        x = lo
    if x > hi:
        x = hi
    return x


@numba.njit(cache=True, error_model="numpy")
def adaste_forward(theta, out, c1, c2, one):
    """``out = clamp((sign θ · c1 + θ) / c2, -1, 1)``."""
    for i in range(theta.shape[0]):
        t = theta[i]
        out[i] = _clamp((_sign(t, one) * c1 + t) / c2, -one, one)


@numba.njit(cache=True, error_model="numpy")
def adaste_backward_code(
    theta, grad, out, g_gate, t_gate, sat_gate, edge, c_mid, c_sat, c_lin, one_plus_beta, cap, one
):
    """``out = ρ · grad`` of the rule ``"code"`` in the case ``αβ < 1``."""
    zero = one - one
    for i in range(theta.shape[0]):
        t = theta[i]
        g = grad[i]
        a = abs(t)
        gs = _sign(t, one) * g
        sat = a > sat_gate
        toward = (gs > g_gate) & (a > t_gate) & (a != edge)
        away = (gs < -g_gate) & sat
        den = a * one_plus_beta
        r_sat = _clamp(one / den * c_sat, zero, cap)
        r_mid = _clamp((c_mid - t) / den, zero, cap)
        rho = r_sat if sat else r_mid
        rho = rho if toward else c_lin
        rho = zero if away else rho
        out[i] = rho * g


@numba.njit(cache=True, error_model="numpy")
def adaste_backward_big(theta, grad, out, g_gate, t_gate, cap, one):
    """``out = ρ · grad`` of the rule ``"code"`` in the case ``αβ ≥ 1``."""
    zero = one - one
    for i in range(theta.shape[0]):
        t = theta[i]
        g = grad[i]
        a = abs(t)
        gs = _sign(t, one) * g
        gated = a > t_gate
        toward = (gs > g_gate) & gated
        away = (gs < -g_gate) & gated
        rho = _clamp(one / a, zero, cap)
        rho = rho if toward else one
        rho = zero if away else rho
        out[i] = rho * g


@numba.njit(cache=True, error_model="numpy")
def adaste_backward_corrected(theta, grad, out, c1, c2, slope, jump0, one):
    """``out = ρ · grad`` of the rule ``"corrected"``."""
    zero = one - one
    for i in range(theta.shape[0]):
        t = theta[i]
        g = grad[i]
        a = abs(t)
        w = abs(_clamp((_sign(t, one) * c1 + t) / c2, -one, one))
        local = zero if w >= one else slope
        toward = (_sign(g, one) == _sign(t, one)) & (t != zero)
        rho = (w + jump0) / (a if toward else one)
        rho = rho if toward else local
        rho = slope if t == zero else rho
        out[i] = rho * g


@numba.njit(inline="always", error_model="numpy")
def _far_sample(x, v, far, u_lo, u_hi, zero):
    """``|λ| > far``, finite, and ``u`` in ``{0} ∪ [u_lo, u_hi]``: the sample is ``±1``."""
    return (abs(x) > far) & (x - x == zero) & ((v == zero) | ((v >= u_lo) & (v <= u_hi)))


@numba.njit(cache=True, error_model="numpy")
def bayesbinn_sample(lam, u, out, near, near_lam, near_u, far, u_lo, u_hi, one):
    """``out = -1`` where ``u = 0`` or ``λ < 0``, else ``1``; the indices of the elements that are
    not :func:`_far_sample` (their ``out`` is to be overwritten) into ``near``, their ``λ`` and
    ``u`` into ``near_lam`` and ``near_u``; returns their number."""
    zero = one - one
    n = lam.shape[0]
    k = 0
    for b0 in range(0, n, BLOCK):
        size = min(BLOCK, n - b0)
        xs, vs, os = lam[b0 : b0 + size], u[b0 : b0 + size], out[b0 : b0 + size]
        m = 0
        for j in range(size):
            x = xs[j]
            v = vs[j]
            os[j] = -one if (v == zero) | (x < zero) else one
            m += _far_sample(x, v, far, u_lo, u_hi, zero)
        if m < size:
            for j in range(size):
                if not _far_sample(xs[j], vs[j], far, u_lo, u_hi, zero):
                    near[k] = b0 + j
                    near_lam[k] = xs[j]
                    near_u[k] = vs[j]
                    k += 1
    return k


@numba.njit(cache=True, error_model="numpy")
def finish_sample(out, near, near_lam, log_u, log1m_u, rest, rest_x, half, temp, bound, one):
    """The elements ``near`` of the sample from torch's ``log u`` and ``log(1 - u)``:
    ``x = ((log u - log(1-u)) · ½ + λ)/τ``; ``out = ±1`` where ``|x| > bound``, else ``x`` and
    its position in ``near`` go to ``rest_x`` and ``rest`` for torch's ``tanh``; returns their
    number."""
    r = 0
    for j in range(near.shape[0]):
        x = ((log_u[j] - log1m_u[j]) * half + near_lam[j]) / temp
        if abs(x) > bound:
            out[near[j]] = one if x > 0 else -one
        else:
            rest[r] = j
            rest_x[r] = x
            r += 1
    return r


@numba.njit(inline="always", error_model="numpy")
def _update_one(x, e, wi, gr, den, h):
    """One element of the BayesBiNN step: the new ``(λ, m)`` from ``λ = x``, ``m = e``, the sample
    ``wi``, its gradient ``gr`` and ``den = 1 - μ² + ε``."""
    temp, eps, n, prior, kl, keep, new, lr, bias, one, has_prior, has_kl, mom = h
    g = (one - wi * wi) + eps
    g = g / temp / den * n * gr
    pull = x - prior if has_prior else x
    if has_kl:
        pull = kl * pull
    g = g + pull
    if mom:
        g = g * keep + new * e
    step = g * lr
    if mom:
        step = step / bias
    return x - step, g


@numba.njit(cache=True, error_model="numpy")
def bayesbinn_update(lam, exp_avg, grad, w, near, near_lam, sat, h):
    """One BayesBiNN step in place (``exp_avg ← m``, ``lam ← λ - lr m / bias``) of the elements with
    ``|λ| > sat``, where ``μ = tanh λ = ±1``; the others keep their ``λ`` (and their ``m`` if
    there is momentum), their indices go to ``near`` and their ``λ`` to ``near_lam``; returns their
    number. ``h``: the constants of :func:`_update_one`."""
    eps = h[1]
    n = lam.shape[0]
    k = 0
    for b0 in range(0, n, BLOCK):
        size = min(BLOCK, n - b0)
        xs, es = lam[b0 : b0 + size], exp_avg[b0 : b0 + size]
        ws, gs = w[b0 : b0 + size], grad[b0 : b0 + size]
        m = 0
        for j in range(size):
            m += abs(xs[j]) > sat
        if m < size:
            for j in range(size):
                if not abs(xs[j]) > sat:
                    near[k] = b0 + j
                    near_lam[k] = xs[j]
                    k += 1
        if h[12]:
            for j in range(size):
                x = xs[j]
                e = es[j]
                new_x, new_e = _update_one(x, e, ws[j], gs[j], eps, h)
                far = abs(x) > sat
                xs[j] = new_x if far else x
                es[j] = new_e if far else e
        else:  # no momentum: the old m is not read (the rest's m is rewritten by update_at)
            for j in range(size):
                x = xs[j]
                new_x, new_e = _update_one(x, eps, ws[j], gs[j], eps, h)
                xs[j] = new_x if abs(x) > sat else x
                es[j] = new_e
    return k


@numba.njit(cache=True, error_model="numpy")
def bayesbinn_update_at(lam, exp_avg, grad, w, near, mu, h):
    """The step of the elements ``near`` left by :func:`bayesbinn_update`, given
    ``mu = tanh λ[near]``."""
    eps, one = h[1], h[9]
    for j in range(near.shape[0]):
        i = near[j]
        m = mu[j]
        lam[i], exp_avg[i] = _update_one(lam[i], exp_avg[i], w[i], grad[i], (one - m * m) + eps, h)


@numba.njit(cache=True, error_model="numpy")
def scatter(out, near, values):
    """``out[near] = values``."""
    for j in range(near.shape[0]):
        out[near[j]] = values[j]


_U32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_PHILOX_M0, _PHILOX_M1 = (np.uint64(m) for m in PHILOX_M)
_PHILOX_W0, _PHILOX_W1 = (np.uint64(w) for w in PHILOX_W)


@numba.njit(inline="always")
def _philox_block(j, k0, k1):
    """The four words (uint64 in ``[0, 2³²)``) of Philox4x32-10 at counter ``(j mod 2³², ⌊j/2³²⌋,
    0, 0)`` under key ``(k0, k1)``, as :func:`sbnkit.optim.philox.philox4x32`."""
    c0 = j & _U32
    c1 = j >> _S32
    c2 = np.uint64(0)
    c3 = np.uint64(0)
    for _ in range(ROUNDS):
        p0 = _PHILOX_M0 * c0
        p1 = _PHILOX_M1 * c2
        n0 = (p1 >> _S32) ^ c1 ^ k0
        n2 = (p0 >> _S32) ^ c3 ^ k1
        c1 = p1 & _U32
        c3 = p0 & _U32
        c0 = n0
        c2 = n2
        k0 = (k0 + _PHILOX_W0) & _U32
        k1 = (k1 + _PHILOX_W1) & _U32
    return c0, c1, c2, c3


@numba.njit(cache=True)
def philox_uniform32(k0, k1, out):
    """``out[i] = ⌊word/2⁸⌋·2⁻²⁴`` with word ``i mod 4`` of Philox block ``⌊i/4⌋`` (float32)."""
    s8 = np.uint64(8)
    scale = np.float32(2.0**-24)
    n = out.shape[0]
    full = n // 4
    for j in range(full):
        a, b, c, d = _philox_block(np.uint64(j), k0, k1)
        out[4 * j] = np.float32(a >> s8) * scale
        out[4 * j + 1] = np.float32(b >> s8) * scale
        out[4 * j + 2] = np.float32(c >> s8) * scale
        out[4 * j + 3] = np.float32(d >> s8) * scale
    if n > 4 * full:
        words = _philox_block(np.uint64(full), k0, k1)
        for t in range(n - 4 * full):
            out[4 * full + t] = np.float32(words[t] >> s8) * scale


@numba.njit(cache=True)
def philox_uniform64(k0, k1, out):
    """``out[i] = (a·2²¹ + ⌊b/2¹¹⌋)·2⁻⁵³`` with words ``a, b`` = ``2(i mod 2)``,
    ``2(i mod 2) + 1`` of Philox block ``⌊i/2⌋`` (float64)."""
    s21 = np.uint64(21)
    s11 = np.uint64(11)
    scale = 2.0**-53
    n = out.shape[0]
    full = n // 2
    for j in range(full):
        a, b, c, d = _philox_block(np.uint64(j), k0, k1)
        out[2 * j] = np.float64((a << s21) + (b >> s11)) * scale
        out[2 * j + 1] = np.float64((c << s21) + (d >> s11)) * scale
    if n > 2 * full:
        a, b, _, _ = _philox_block(np.uint64(full), k0, k1)
        out[2 * full] = np.float64((a << s21) + (b >> s11)) * scale
