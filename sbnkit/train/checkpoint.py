"""Checkpoints: the model's ``state_dict`` plus the run's config and metrics as JSON strings.

They are written atomically (a temporary file in the same folder, then ``os.replace``) and read
with ``torch.load(..., weights_only=True)`` only, so a file holding arbitrary pickled objects is
refused instead of executed.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError

__all__ = ["FORMAT", "VERSION", "load", "read", "save", "write"]

FORMAT = "sbnkit-checkpoint"
VERSION = 1


def write(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """``torch.save`` ``payload`` (tensors and plain data) to ``path`` atomically.

    Raises ``OSError`` when the file cannot be written; nothing is left behind then."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read(path: str | os.PathLike, fmt: str, name: str, hint: str) -> dict[str, Any]:
    """The payload of the file ``path`` of format ``fmt``; errors call it an ``name`` and end
    with ``hint``.

    Loads with ``weights_only=True``: nothing but tensors and plain data is ever unpickled.
    Raises :class:`~sbnkit.errors.UserError` for a missing, unreadable, foreign or damaged file.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; {hint}") from None
    except pickle.UnpicklingError:
        raise UserError(
            f"refusing to load {path}: it is not a weights-only file written by sbnkit "
            "(pickled objects other than tensors and plain data are never loaded)"
        ) from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder; {hint}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # torch's loader raises many types on damaged files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"{path} is not a readable {name} ({type(exc).__name__}: {first[:120]}); {hint}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise UserError(f"{path} is not an {name}; {hint}")
    if payload.get("version") != VERSION:
        raise UserError(
            f"{path} has version {payload.get('version')!r}; this sbnkit reads version {VERSION}"
        )
    return payload


def save(
    path: str | os.PathLike,
    model: nn.Module,
    config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> None:
    """Write ``model``'s weights with ``config`` and ``metrics`` (primitives) to ``path``."""
    write(
        path,
        {
            "format": FORMAT,
            "version": VERSION,
            "config": json.dumps(config, sort_keys=True),
            "metrics": json.dumps(metrics or {}, sort_keys=True),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
    )


def load(path: str | os.PathLike) -> dict[str, Any]:
    """``{"config": dict, "metrics": dict, "state_dict": dict}`` from the checkpoint ``path``.

    Raises :class:`~sbnkit.errors.UserError` for a missing, unreadable, foreign, damaged or
    non-finite checkpoint; never unpickles anything but tensors and plain data.
    """
    path = Path(path)
    payload = read(path, FORMAT, "sbnkit checkpoint", "pass the model.pt of a run")
    try:
        config = json.loads(payload["config"])
        metrics = json.loads(payload["metrics"])
        state = payload["state_dict"]
    except (KeyError, TypeError, json.JSONDecodeError):
        raise UserError(f"checkpoint {path} is incomplete or damaged; re-run training") from None
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise UserError(f"checkpoint {path} is incomplete or damaged; re-run training")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(
                f"checkpoint {path} is damaged ({name} is not a tensor); re-run training"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(
                f"checkpoint {path} holds non-finite values (NaN or Inf in {name}): the training "
                "diverged; re-train with lower learning rates or train.grad_clip"
            )
    return {"config": config, "metrics": metrics, "state_dict": state}
