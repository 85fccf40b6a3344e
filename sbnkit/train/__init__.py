"""Training runs from TOML configs: schema (:mod:`.config`), loop (:mod:`.loop`), checkpoints."""

from . import checkpoint
from .config import Config, config_from_dict, load_config, parse_config
from .loop import Run, build_model, fit, load_trained, prepare, train_step

__all__ = [
    "Config",
    "Run",
    "build_model",
    "checkpoint",
    "config_from_dict",
    "fit",
    "load_config",
    "load_trained",
    "parse_config",
    "prepare",
    "train_step",
]
