"""The training state of a run, saved so that a resumed run ends bit for bit where an
uninterrupted one would (on the same device and thread count).

It holds the model, every optimizer and LR scheduler, where the loop stands (epoch, steps done in
it, the running loss sum) and every random stream: torch's global generator (unit and weight
noise), the CUDA generators, NumPy's and Python's, and the loop's own data-order and augmentation
generators. Only tensors and plain data are stored, so the file loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from . import checkpoint

__all__ = ["FORMAT", "LoopPosition", "capture_rng", "load", "restore_rng", "save"]

FORMAT = "sbnkit-training-state"


@dataclass
class LoopPosition:
    """Where the loop stands: ``epoch`` (1-based) in progress with ``step`` steps done and
    ``loss_total`` their summed loss; ``logged`` epochs are in the log."""

    epoch: int
    step: int
    loss_total: float
    logged: int
    train_seconds: float


def capture_rng(shuffle: torch.Generator, augment: torch.Generator) -> dict[str, Any]:
    """Every random stream of a training run, as tensors and plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "shuffle": shuffle.get_state(),
        "augment": augment.get_state(),
    }


def restore_rng(rng: dict[str, Any], shuffle: torch.Generator, augment: torch.Generator) -> None:
    """Set every random stream from :func:`capture_rng`'s record."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = rng["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    shuffle.set_state(rng["shuffle"])
    augment.set_state(rng["augment"])


def save(
    path: str | os.PathLike,
    position: LoopPosition,
    model: torch.nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    rng: dict[str, Any],
    epoch_signs: list[torch.Tensor],
) -> None:
    """Write the training state to ``path`` atomically (``epoch_signs``: the binary weights'
    signs at the start of the epoch in progress, for its flip ratio)."""
    checkpoint.write(
        path,
        {
            "format": FORMAT,
            "version": checkpoint.VERSION,
            "position": vars(position),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
            "rng": rng,
            "epoch_signs": [x.cpu() for x in epoch_signs],
        },
    )


def load(path: str | os.PathLike) -> dict[str, Any]:
    """The training state in ``path``; ``position`` is a :class:`LoopPosition`.

    Raises :class:`~sbnkit.errors.UserError` for a missing, unreadable or damaged file.
    """
    payload = checkpoint.read(
        path, FORMAT, "sbnkit training state", "the run cannot be resumed; start it again"
    )
    try:
        payload["position"] = LoopPosition(**payload["position"])
        for key in ("model", "optimizers", "schedulers", "rng"):
            if not isinstance(payload[key], dict):
                raise TypeError(key)
        if not isinstance(payload["epoch_signs"], list):
            raise TypeError("epoch_signs")
    except (KeyError, TypeError):
        raise UserError(
            f"training state {path} is incomplete or damaged; the run cannot be resumed"
        ) from None
    return payload
