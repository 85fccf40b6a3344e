"""The user's model for ``sbnkit gradeval RUN_OR_CONFIG``: a run folder, a checkpoint or a TOML
config, with a fixed seeded batch of its training data."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import data as data_lib
from ..errors import UserError
from ..estimators.walk import sampled_bernoulli
from ..models import data_init_
from ..network import SBN
from ..train import Config, build_model, load_config, load_trained
from ..train.loop import seed_everything

__all__ = ["Target", "load_target"]


@dataclass
class Target:
    """A model to study, float64 in eval mode, with its batch ``x``, labels ``y`` (int64), a
    label for file names, the files read, and notes on what was changed for the study."""

    model: SBN
    x: torch.Tensor
    y: torch.Tensor
    label: str
    files: list[Path]
    notes: list[str] = field(default_factory=list)


def _model_and_config(path: Path) -> tuple[nn.Module, Config, Path, list[str]]:
    """``(model, config, file read, notes)`` of a run folder, checkpoint or config."""
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise UserError(f"{path} is a folder without model.pt; pass a training run folder")
        path = path / "model.pt"
    if path.suffix == ".toml":
        cfg = load_config(path)
        seed_everything(cfg.train.seed)
        return build_model(cfg), cfg, path, ["untrained: the model of the config at its init"]
    model, cfg = load_trained(path)
    return model, cfg, path, []


def _fix_binary_weights(model: SBN) -> None:
    """Binary weights in ``mode``/``mean`` mode become fixed real weights of the same value;
    sampled ones are refused (one draw per pass is shared by the batch's samples)."""
    for op in model.ops:
        if not parametrize.is_parametrized(op, "weight"):
            continue
        if sampled_bernoulli(op) is not None:
            raise UserError(
                "the model samples its binary weights (weight_mode = 'sample'): one draw is "
                "shared by every sample of a batched pass, so per-sample estimates would not be "
                "independent; gradeval measures the units' noise, use weight_mode = 'mode'"
            )
        parametrize.remove_parametrizations(op, "weight", leave_parametrized=True)


def load_target(path: str | os.PathLike, *, examples: int, seed: int) -> Target:
    """The model of ``path`` (run folder, ``model.pt`` or ``.toml``) in its current state, and
    ``examples`` training examples drawn with ``seed``.

    A config's model is built as training would build it (seeded with ``train.seed``; with
    ``init = "data"`` data-initialised on a seeded batch of ``train.batch_size`` training
    examples). The model is studied in float64 and eval mode (BatchNorm uses its running
    statistics); binary weights in ``mode``/``mean`` mode are studied as fixed weights. Raises
    :class:`UserError` for a missing or unreadable file, a model that is not an SBN, sampled
    binary weights, missing data or too few examples.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a run folder, a model.pt or a .toml config")
    model, cfg, source, notes = _model_and_config(path)
    if not isinstance(model, SBN):
        raise UserError(
            f"model {cfg.model.name!r} has no stochastic binary units (real ReLU activations); "
            "gradeval measures SBNs: mlp, convnet, cifar_s1"
        )
    d = cfg.data
    x_all, y_all = data_lib.load(d.name, "train", d.root or None, d.standardize)
    files = [source, *data_lib.find_files(d.name, "train", d.root or None)]
    if not 1 <= examples <= x_all.shape[0]:
        raise UserError(
            f"--examples must lie in [1, {x_all.shape[0]}] (the training set of {d.name}), "
            f"got {examples}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(x_all.shape[0], generator=gen)[:examples]
    if source.suffix == ".toml" and cfg.model.init == "data":
        init_idx = torch.randperm(x_all.shape[0], generator=gen)[: cfg.train.batch_size]
        data_init_(model, x_all[init_idx])
        notes.append(f"data-initialised on {len(init_idx)} seeded training examples")
    has_binary = any(parametrize.is_parametrized(op, "weight") for op in model.ops)
    _fix_binary_weights(model)
    if has_binary:
        notes.append("binary weights studied as fixed weights (gradients w.r.t. their values)")
    model = model.double().eval()
    label = (
        path.stem if path.suffix == ".toml" else (path.name if path.is_dir() else path.parent.name)
    )
    return Target(model, x_all[idx].double(), y_all[idx], label or "model", files, notes)
