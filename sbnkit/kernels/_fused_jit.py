"""The numba loop of :mod:`.fused`, in its own module so that numba loads on first use only."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["flip_kernel", "np", "numba"]


@numba.njit(parallel=True, cache=True, fastmath=False)
def flip_kernel(q, sa, m, rw, x, g, h, w, ho, wo, k, s, p, tile, one):
    """Accumulate the flip differences into ``g`` (see the module docstring).

    ``q, sa: [B·Ho·Wo, C_out]``; ``m, rw: [K, K, C_out, C_in]``; ``x, g: [B·H·W, C_in]``.
    """
    npix = x.shape[0]
    c_out = q.shape[1]
    c_in = x.shape[1]
    ntiles = (npix + tile - 1) // tile
    for t in numba.prange(ntiles):
        p0 = t * tile
        p1 = min(p0 + tile, npix)
        idx = np.empty(tile, np.int64)
        for kh in range(k):
            for kw in range(k):
                for i in range(p0, p1):
                    b = i // (h * w)
                    hh = (i // w) % h
                    ww = i % w
                    th = hh + p - kh
                    tw = ww + p - kw
                    oh = th // s
                    ow = tw // s
                    valid = th >= 0 and tw >= 0 and oh * s == th and ow * s == tw
                    if valid and oh < ho and ow < wo:
                        idx[i - p0] = (b * ho + oh) * wo + ow
                    else:
                        idx[i - p0] = -1
                for c in range(c_out):
                    mrow = m[kh, kw, c]
                    rrow = rw[kh, kw, c]
                    for i in range(p0, p1):
                        o = idx[i - p0]
                        if o < 0:
                            continue
                        qq = q[o, c]
                        if qq == 0:
                            continue
                        sgn_a = sa[o, c]
                        aa = abs(sgn_a)
                        xrow = x[i]
                        grow = g[i]
                        for r in range(c_in):
                            tv = mrow[r] * xrow[r]
                            den = rrow[r] + aa if tv * sgn_a < 0 else one + aa * rrow[r]
                            grow[r] += qq * tv / den
