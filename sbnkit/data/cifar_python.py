"""Reader of the CIFAR-10/100 *python* distributions (``cifar-10-python.tar.gz``,
``cifar-100-python.tar.gz``), the ones most users download.

Each file (``cifar-10-batches-py/data_batch_1`` … ``data_batch_5``, ``test_batch``;
``cifar-100-python/train``, ``test``) is a pickled dict, written by Python 2 (protocol 2), with
bytes keys: ``b"data"``, a uint8 numpy array ``[N, 3072]`` (the R, G and B 32×32 planes of each
image), ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` and ``b"coarse_labels"`` (CIFAR-100), lists
of ints, plus ``b"batch_label"`` and ``b"filenames"``. The fine labels of CIFAR-100 are used.

Unpickling can run any code a file asks for, so these files are read with a restricted
unpickler that admits only the globals such a file contains: numpy's array reconstructor
(``numpy.core.multiarray._reconstruct``, spelled ``numpy._core.multiarray._reconstruct`` by
numpy ≥ 2), ``numpy.ndarray``, ``numpy.dtype`` and, for files re-written by Python 3 with
protocol 2, ``_codecs.encode`` limited to latin-1 (how such files store bytes). Any other global
— or a damaged, truncated or different file — is a :class:`~sbnkit.errors.UserError`
``not a CIFAR python batch``, raised before anything the file names is called.

The downloaded archive itself (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) is read
too, member by member in memory (:func:`read_cifar_python_archive`; nothing is extracted).
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import struct
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import UserError

__all__ = ["read_cifar_python", "read_cifar_python_archive", "write_cifar_python"]

IMAGE_BYTES = 3 * 32 * 32

_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's own array reconstructor


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes: latin-1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"encoding {encoding!r} is not latin-1")
    return codecs.encode(text, "latin1")


_ADMITTED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :data:`_ADMITTED`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ADMITTED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}") from None


_DAMAGED = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    struct.error,
    UnicodeDecodeError,
)


def _refuse(where: str, why: str) -> UserError:
    return UserError(
        f"{where} is not a CIFAR python batch ({why}); re-download the python version "
        "(cifar-10-python.tar.gz or cifar-100-python.tar.gz) and unpack it"
    )


def _field(batch: dict, key: str) -> Any:
    return batch.get(key.encode(), batch.get(key))


def _unpickle(stream: IO[bytes], where: str) -> dict:
    try:
        batch = _CifarUnpickler(stream, encoding="bytes").load()
    except _DAMAGED as exc:
        raise _refuse(where, str(exc) or type(exc).__name__) from None
    if not isinstance(batch, dict):
        raise _refuse(where, f"it holds a {type(batch).__name__}, not a dict")
    return batch


def read_cifar_python(
    path: str | os.PathLike, num_classes: int = 10, data: bytes | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 3, 32, 32], labels int64 [N])`` from one CIFAR python batch.

    ``num_classes`` is 10 (labels ``b"labels"``) or 100 (labels ``b"fine_labels"``). ``data``:
    the file's bytes when they were already read (e.g. from an archive); ``path`` then only
    names it in messages. Raises :class:`UserError` for anything but a well-formed batch (see
    the module docstring) and :class:`OSError` when the file cannot be read.
    """
    where = str(path)
    if data is None:
        with open(path, "rb") as f:
            batch = _unpickle(f, where)
    else:
        batch = _unpickle(io.BytesIO(data), where)
    images = _field(batch, "data")
    key = "labels" if num_classes == 10 else "fine_labels"
    labels = _field(batch, key)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        raise _refuse(where, "no uint8 image array under b'data'")
    if images.shape[1] != IMAGE_BYTES:
        raise _refuse(where, f"images of {images.shape[1]} bytes, expected {IMAGE_BYTES}")
    if not isinstance(labels, (list, np.ndarray)):
        raise _refuse(where, f"no label list under b'{key}'")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise _refuse(where, f"the labels under b'{key}' are not integers") from None
    if y.shape[0] != images.shape[0]:
        raise UserError(
            f"corrupt data file {where}: {images.shape[0]} images but {y.shape[0]} labels; "
            "re-download it"
        )
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise UserError(
            f"corrupt data file {where}: labels must lie in [0, {num_classes}), got range "
            f"[{int(y.min())}, {int(y.max())}]; re-download it"
        )
    return images.reshape(-1, 3, 32, 32), y


def read_cifar_python_archive(
    archive: str | os.PathLike, members: Sequence[str], num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """The batches ``members`` (e.g. ``cifar-10-batches-py/data_batch_1``) of a gzipped tar
    archive, read in memory and concatenated in the order given, as :func:`read_cifar_python`.

    Raises :class:`UserError` when the archive is damaged or lacks a member, or a member is not a
    well-formed batch; :class:`OSError` when it cannot be read.
    """
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for info in tar:
                if info.name in members and info.isfile():
                    f = tar.extractfile(info)
                    if f is not None:
                        found[info.name] = f.read()
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise UserError(
            f"cannot read the archive {archive} ({' '.join(str(exc).split())}); it is damaged, "
            "re-download it"
        ) from None
    missing = [m for m in members if m not in found]
    if missing:
        raise UserError(
            f"the archive {archive} lacks {', '.join(missing)}; it is not the CIFAR python "
            "distribution, re-download it"
        )
    parts = [read_cifar_python(f"{archive}:{m}", num_classes, found[m]) for m in members]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def write_cifar_python(
    path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, num_classes: int = 10
) -> None:
    """Write uint8 ``images [N, 3, 32, 32]`` and ``labels [N]`` as a CIFAR python batch: a
    protocol-2 pickle of a dict with bytes keys, as the original files (CIFAR-100: fine labels,
    coarse labels ``label // 5``)."""
    images = np.ascontiguousarray(images, dtype=np.uint8).reshape(-1, IMAGE_BYTES)
    labels = [int(v) for v in np.asarray(labels).reshape(-1)]
    batch: dict[bytes, Any] = {b"batch_label": b"sbnkit test batch"}
    if num_classes == 10:
        batch[b"labels"] = labels
    else:
        batch[b"fine_labels"] = labels
        batch[b"coarse_labels"] = [v // 5 for v in labels]
    batch[b"data"] = images
    batch[b"filenames"] = [f"image_{i}.png".encode() for i in range(len(labels))]
    Path(path).write_bytes(pickle.dumps(batch, protocol=2))
