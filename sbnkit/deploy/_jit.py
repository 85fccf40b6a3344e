"""The numba kernels of :mod:`.engine`, in their own module so that numba loads on first use."""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

__all__ = ["popcount_kernel", "signed_sum_kernel"]


@intrinsic
def _ctpop(typingctx, x):
    """LLVM's ``ctpop`` on a uint64 (a single popcnt instruction where the CPU has one)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@numba.njit(parallel=True, cache=True)
def popcount_kernel(x, w, out):
    m, nwords = x.shape
    n = w.shape[0]
    for idx in numba.prange(m * n):
        i = idx // n
        j = idx - i * n
        s = 0
        for k in range(nwords):
            s += _ctpop(x[i, k] ^ w[j, k])
        out[i, j] = s


@numba.njit(parallel=True, cache=True)
def signed_sum_kernel(x, wbytes, lowbit, out):
    m = x.shape[0]
    n, groups = wbytes.shape
    table = np.empty((groups, 256), dtype=np.float64)
    for i in range(m):
        for g in range(groups):  # small: one parallel region (below) per example is enough
            table[g, 0] = 0.0
            for b in range(8):
                table[g, 0] += x[i, 8 * g + b]
            for v in range(1, 256):
                b = lowbit[v]
                table[g, v] = table[g, v ^ (1 << b)] - 2.0 * x[i, 8 * g + b]
        for j in numba.prange(n):
            s0 = s1 = s2 = s3 = 0.0  # four chains hide the latency of the adds
            g = 0
            while g + 4 <= groups:
                s0 += table[g, wbytes[j, g]]
                s1 += table[g + 1, wbytes[j, g + 1]]
                s2 += table[g + 2, wbytes[j, g + 2]]
                s3 += table[g + 3, wbytes[j, g + 3]]
                g += 4
            while g < groups:
                s0 += table[g, wbytes[j, g]]
                g += 1
            out[i, j] = (s0 + s1) + (s2 + s3)
