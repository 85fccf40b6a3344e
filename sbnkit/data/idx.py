"""Reader (and a small writer, for tests) of the IDX format of (Fashion-)MNIST, gzipped or raw.

An IDX file is ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the
values in C order (big-endian for multi-byte types). Any mismatch (magic, dtype code, dims, byte
count) raises :class:`~sbnkit.errors.UserError`.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import UserError

__all__ = ["CODES", "DTYPES", "read_idx", "write_idx"]

DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
CODES = {dt.newbyteorder(">") if dt.itemsize > 1 else dt: code for code, dt in DTYPES.items()}


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(f"corrupt data file {path}: {why}; re-install or re-download it")


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head != b"\x1f\x8b":
            return f.read()
        try:
            return gzip.GzipFile(fileobj=f).read()
        except (OSError, EOFError, zlib.error) as exc:
            raise _corrupt(path, f"bad gzip stream ({exc})") from None


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzip detected by its magic bytes).

    ``ndim``: the expected number of dimensions (e.g. 3 for images, 1 for labels), if known.
    Raises :class:`UserError` for a file that cannot be read or is not a valid IDX file (of
    ``ndim`` dimensions).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise _corrupt(path, "not an IDX file (bad magic number)")
    code, dims = data[2], data[3]
    if code not in DTYPES:
        raise _corrupt(path, f"unknown IDX data type code 0x{code:02x}")
    if dims == 0 or (ndim is not None and dims != ndim):
        want = f"{ndim}" if ndim is not None else "at least 1"
        raise _corrupt(path, f"{dims} dimensions, expected {want}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise _corrupt(path, "truncated header")
    shape = struct.unpack(f">{dims}I", data[4:header])
    dtype = DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise _corrupt(
            path, f"{len(data) - header} data bytes for shape {list(shape)}, expected {expected}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file; gzip it if ``compress`` (default: name ends in ``.gz``).
    Raises :class:`UserError` for a dtype IDX cannot store."""
    path = Path(path)
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if dtype not in CODES:
        raise UserError(
            f"IDX cannot store dtype {array.dtype}; use uint8, int8/16/32 or float32/64"
        )
    payload = (
        bytes([0, 0, CODES[dtype], array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(dtype).tobytes()
    )
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=1)
    path.write_bytes(payload)
