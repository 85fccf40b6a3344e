"""The model behind a CLI argument: a checkpoint (``model.pt``) or a TOML config."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from ..network import SBN
from ..train import build_model, checkpoint, config_from_dict, load_config

__all__ = ["load_model"]


def load_model(path: str | os.PathLike, allow_config: bool = True) -> SBN:
    """The model of checkpoint ``path`` with its weights, or the untrained model of a config.

    Raises :class:`UserError` for a missing or unreadable file, or weights that do not fit.
    """
    path = Path(path)
    if path.suffix == ".toml":
        if not allow_config:
            raise UserError(f"{path} is a config; pass the model.pt of a trained run")
        return build_model(load_config(path))
    saved = checkpoint.load(path)
    model = build_model(config_from_dict(saved["config"]))
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError:
        raise UserError(
            f"the weights in {path} do not fit the model of its config; "
            "the checkpoint is damaged or was written by another sbnkit version"
        ) from None
    return model
