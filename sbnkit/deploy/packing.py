"""Bit packing of ``±1`` vectors into ``uint64`` words, and the reference XOR–popcount dot.

Convention (also written in every exported file's header): bit ``j`` of word ``i`` holds element
``64·i + j`` of the vector; a set bit is ``-1`` and a clear bit is ``+1`` (so ``sign(0) = +1``
states, being ``+1``, are clear bits). Words past the end of a vector are padded with clear bits
in both operands, so they add nothing to the XOR popcount, and for vectors of length ``n``::

    x · w = n - 2 · popcount(x XOR w)
"""

from __future__ import annotations

import numpy as np

__all__ = ["WORD_BITS", "dot_reference", "pack_signs", "unpack_signs", "words_for"]

WORD_BITS = 64


def words_for(n: int) -> int:
    """The number of ``uint64`` words that hold ``n`` bits."""
    return -(-n // WORD_BITS)


def pack_signs(negative: np.ndarray) -> np.ndarray:
    """Pack a boolean array ``negative`` (``True`` = state ``-1``) along its last axis.

    Returns ``uint64`` words of shape ``[..., words_for(n)]`` (little-endian bit order).
    """
    negative = np.asarray(negative, dtype=bool)
    n = negative.shape[-1]
    nbytes = words_for(n) * 8
    packed = np.packbits(negative, axis=-1, bitorder="little")
    if packed.shape[-1] != nbytes:
        pad = [(0, 0)] * (packed.ndim - 1) + [(0, nbytes - packed.shape[-1])]
        packed = np.pad(packed, pad)
    return np.ascontiguousarray(packed).view("<u8")


def unpack_signs(words: np.ndarray, n: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """The ``±1`` values (``dtype``) of the first ``n`` elements packed in ``words``."""
    as_bytes = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, count=n, bitorder="little")
    return (1 - 2 * bits.astype(np.int8)).astype(dtype)


def dot_reference(x_words: np.ndarray, w_words: np.ndarray, n: int) -> np.ndarray:
    """Integer dots ``[B, N]`` of packed rows ``x_words [B, W]`` with ``w_words [N, W]``.

    ``n`` is the true vector length; one row of ``x`` at a time keeps temporaries ``[N, W]``.
    """
    out = np.empty((x_words.shape[0], w_words.shape[0]), dtype=np.int64)
    buf = np.empty(w_words.shape, dtype=np.uint64)
    for i, row in enumerate(x_words):
        np.bitwise_xor(w_words, row, out=buf)
        out[i] = np.bitwise_count(buf).sum(axis=-1, dtype=np.int64)
    return n - 2 * out
