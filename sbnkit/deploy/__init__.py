"""Deployment of binary networks: layer summary, bit-packed export and a packed engine.

* :func:`summary` — per-layer shapes, parameters by precision, memory and MACs;
* :func:`export` — fold the mode network into a safe ``.npz`` (:mod:`.format`, :mod:`.fold`);
* :func:`load` — an :class:`~.engine.Engine` whose ``predict`` maps float32 inputs to logits.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from ..network import SBN
from . import format as deploy_format
from . import source
from .engine import KERNELS, Engine
from .fold import fold_model
from .summary import Summary, summary

__all__ = ["KERNELS", "Engine", "Summary", "export", "load", "source", "summary"]


def export(model: SBN, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``model``'s mode network to ``path`` (atomically); return the path.

    Raises :class:`UserError` if ``path`` exists and ``overwrite`` is false, or if the model
    holds modules that cannot be exported.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass a file name for the export")
    layers, input_shape = fold_model(model)
    deploy_format.write(path, layers, input_shape)
    return path


def load(path: str | os.PathLike, kernel: str = "numba") -> Engine:
    """The engine of the deploy file ``path`` (``kernel``: ``numba`` or ``numpy``).

    Raises :class:`UserError` (one line) for missing, damaged or mismatched files.
    """
    return Engine.load(path, kernel)
