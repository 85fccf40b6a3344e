"""Counter-based uniforms: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, SC 2011).

A draw is a pure function of a 64-bit key and the element's index, so it can be computed in any
order, in parallel and on any device, with the same result. :func:`uniform_like` is what
BayesBiNN's relaxed sample uses: its key comes from a CPU generator (:func:`draw_key`; torch's
default one, or the training loop's, which checkpoints save), so seeding it fixes the stream and
a saved state resumes it exactly; the values do not depend on the device.

Layout: block ``j`` is ``philox4x32_10(counter = (j mod 2³², ⌊j/2³²⌋, 0, 0), key = (k₀, k₁))``,
four 32-bit words. float64 element ``i`` takes words ``2(i mod 2)`` and ``2(i mod 2) + 1`` of
block ``⌊i/2⌋``: ``u = (a·2²¹ + ⌊b/2¹¹⌋)·2⁻⁵³``. Every other dtype takes word ``i mod 4`` of
block ``⌊i/4⌋`` and keeps its top ``p`` bits (``p`` the dtype's significand bits, 24 for
float32): ``u = ⌊a/2^(32-p)⌋·2⁻ᵖ``. So ``u`` lies on torch.rand's grid: ``0`` or
``[2⁻ᵖ, 1 - 2⁻ᵖ]``.

:func:`philox4x32` and :func:`uniform` are the torch reference (int64 arithmetic without
overflow, any device); :func:`uniform_like` runs the compiled loop of :mod:`._jit` instead for
float32/float64 on the CPU, and the tests demand that both agree bit for bit.
"""

from __future__ import annotations

import math

import torch

__all__ = ["PHILOX_M", "PHILOX_W", "draw_key", "philox4x32", "uniform", "uniform_like"]

PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # the round multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # the key schedule's Weyl increments
ROUNDS = 10
_MASK32 = 0xFFFFFFFF
_MASK16 = 0xFFFF


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a · m`` for int64 ``a`` in ``[0, 2³²)``: ``m`` split in
    16-bit halves keeps every product below 2⁴⁸."""
    p_lo = a * (m & _MASK16)
    p_hi = a * (m >> 16)
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & _MASK16) << 16) + p_lo) & _MASK32
    return hi, lo


def philox4x32(counter: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Philox4x32-10 of int64 ``counter`` (``(..., 4)``, words in ``[0, 2³²)``) under
    ``key = (k₀, k₁)``: the ``(..., 4)`` output words."""
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key
    for r in range(ROUNDS):
        hi0, lo0 = _mulhilo(c0, PHILOX_M[0])
        hi1, lo1 = _mulhilo(c2, PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if r < ROUNDS - 1:
            k0, k1 = (k0 + PHILOX_W[0]) & _MASK32, (k1 + PHILOX_W[1]) & _MASK32
    return torch.stack((c0, c1, c2, c3), dim=-1)


def _bits(dtype: torch.dtype) -> int:
    """Random bits per uniform of ``dtype``: its significand's (53 for float64)."""
    return round(-math.log2(torch.finfo(dtype).eps)) + 1


def uniform(
    key: int, n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The first ``n`` uniforms of ``key``'s stream (see the module docstring), torch only."""
    per_block = 2 if dtype == torch.float64 else 4
    blocks = torch.arange((n + per_block - 1) // per_block, dtype=torch.int64, device=device)
    zeros = torch.zeros_like(blocks)
    counter = torch.stack((blocks & _MASK32, blocks >> 32, zeros, zeros), dim=-1)
    words = philox4x32(counter, (key & _MASK32, key >> 32)).reshape(-1)
    p = _bits(dtype)
    if dtype == torch.float64:
        pairs = words.reshape(-1, 2)
        ints = (pairs[:, 0] << 21) + (pairs[:, 1] >> 11)
    else:
        ints = words >> (32 - p)
    return ints[:n].to(dtype).mul_(2.0**-p)


def uniform_like(t: torch.Tensor, key: int) -> torch.Tensor:
    """``key``'s uniforms in ``t``'s shape, dtype and device (a new contiguous tensor): compiled
    for float32/float64 on the CPU, else :func:`uniform`. ``key`` in ``[0, 2⁶⁴)``."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        from . import _jit as jit

        out = torch.empty(t.shape, dtype=t.dtype, device=t.device)
        loop = jit.philox_uniform64 if t.dtype == torch.float64 else jit.philox_uniform32
        loop(*(jit.np.uint64(k) for k in (key & _MASK32, key >> 32)), out.numpy().reshape(-1))
        return out
    return uniform(key, t.numel(), t.dtype, t.device).reshape(t.shape)


def draw_key(generator: torch.Generator | None = None) -> int:
    """A 64-bit key from the CPU ``generator`` (torch's default one if ``None``)."""
    pair = torch.randint(0, 2**32, (2,), dtype=torch.int64, generator=generator, device="cpu")
    low, high = pair.tolist()
    return low + (high << 32)
