"""Deployment of binary networks: layer summary, bit-packed export and a packed engine.

* :func:`summary` — per-layer shapes, parameters by precision, memory and MACs;
* :func:`export` — fold the mode network into a safe ``.npz`` (:mod:`.format`, :mod:`.fold`);
* :func:`load` — an :class:`~.engine.Engine` whose ``predict`` maps float32 inputs to logits.

Exportable: :class:`~sbnkit.network.SBN` models (binary units, binary or real weights), and the
binary-weight networks with real activations — ``nn.Sequential`` models of Linear, Conv2d,
BatchNorm, ReLU, MaxPool2d/AvgPool2d, Dropout and Flatten (``vgg16``, ``vgg_binaryconnect``,
``mlp_binaryconnect``) and :class:`~sbnkit.models.ResNet18` (``resnet18``), with weights of any
:class:`~sbnkit.weights.LatentWeight` parametrization at their mode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..errors import UserError
from . import format as deploy_format
from . import source
from .engine import KERNELS, Engine, Kernel
from .fold import fold_model
from .summary import Summary, summary

__all__ = ["KERNELS", "Engine", "Kernel", "Summary", "export", "load", "source", "summary"]


def export(
    model: nn.Module,
    path: str | os.PathLike,
    overwrite: bool = False,
    input_shape: Sequence[int] | None = None,
) -> Path:
    """Write ``model``'s mode network to ``path`` (atomically); return the path.

    ``input_shape`` (``[C, H, W]`` or ``[F]``, one example) is needed for models that do not
    carry it (an SBN does). Raises :class:`UserError` if ``path`` exists and ``overwrite`` is
    false or is a folder, if the model holds modules that cannot be exported, or if
    ``input_shape`` is missing or wrong; nothing is written then.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass a file name for the export")
    layers, shape = fold_model(model, input_shape)
    deploy_format.write(path, layers, shape)
    return path


def load(path: str | os.PathLike, kernel: Kernel = "numba") -> Engine:
    """The engine of the deploy file ``path`` (``kernel``: ``numba`` or ``numpy``).

    Raises :class:`UserError` (one line) for missing, damaged or mismatched files or an unknown
    ``kernel``.
    """
    return Engine.load(path, kernel)
