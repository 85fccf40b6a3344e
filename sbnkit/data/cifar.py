"""Reader of the CIFAR-10/100 *binary* distribution (never the pickled Python version).

CIFAR-10 (``cifar-10-batches-bin``): files of 3073-byte records, ``<label> <3072 pixels>``, the
pixels as three 32×32 planes (R, G, B). CIFAR-100 (``cifar-100-binary``): 3074-byte records,
``<coarse label> <fine label> <3072 pixels>``; the fine label is used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError

__all__ = ["IMAGE_BYTES", "read_cifar_bin", "write_cifar_bin"]

IMAGE_BYTES = 3 * 32 * 32


def read_cifar_bin(
    path: str | os.PathLike, label_bytes: int = 1, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 3, 32, 32], labels int64 [N])`` from one binary CIFAR file.

    ``label_bytes`` is 1 for CIFAR-10 and 2 for CIFAR-100 (the last label byte is used).
    Raises :class:`UserError` for a corrupt file (a partial record, a label out of range).
    """
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + IMAGE_BYTES
    if data.size == 0 or data.size % record:
        raise UserError(
            f"corrupt data file {path}: {data.size} bytes is not a multiple of the "
            f"{record}-byte CIFAR record; re-install or re-download it"
        )
    rows = data.reshape(-1, record)
    labels = rows[:, label_bytes - 1].astype(np.int64)
    if int(labels.max()) >= num_classes:
        raise UserError(
            f"corrupt data file {path}: label {int(labels.max())} is out of range "
            f"[0, {num_classes}); re-install or re-download it"
        )
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def write_cifar_bin(
    path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, label_bytes: int = 1
) -> None:
    """Write uint8 ``images [N, 3, 32, 32]`` and ``labels [N]`` as a binary CIFAR file."""
    images = np.asarray(images, dtype=np.uint8).reshape(-1, IMAGE_BYTES)
    labels = np.asarray(labels, dtype=np.uint8).reshape(-1, 1)
    head = np.repeat(labels, label_bytes, axis=1)
    Path(path).write_bytes(np.concatenate([head, images], axis=1).tobytes())
