"""The model behind a CLI argument: a checkpoint (``model.pt``) or a TOML config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from torch import nn

from .. import data as data_lib
from ..errors import UserError
from ..train import Config, build_model, load_config, load_trained

__all__ = ["Source", "load_model"]


class Source(NamedTuple):
    """A model and the shape of one of its inputs (``[C, H, W]`` or ``[F]``, from its data set)."""

    model: nn.Module
    input_shape: tuple[int, ...]


def _source(model: nn.Module, cfg: Config) -> Source:
    return Source(model, tuple(data_lib.get(cfg.data.name).input_shape))


def load_model(path: str | os.PathLike, allow_config: bool = True) -> Source:
    """The model of checkpoint ``path`` with its weights, or the untrained model of a config.

    Raises :class:`UserError` for a missing or unreadable file, a config where ``allow_config``
    is false, or weights that do not fit.
    """
    path = Path(path)
    if path.suffix == ".toml":
        if not allow_config:
            raise UserError(f"{path} is a config; pass the model.pt of a trained run")
        cfg = load_config(path)
        return _source(build_model(cfg), cfg)
    model, cfg = load_trained(path)
    return _source(model, cfg)
