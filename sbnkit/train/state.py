"""The training state of a run, saved so that a resumed run ends bit for bit where an
uninterrupted one would (on the same device and thread count).

It holds the model, every optimizer and LR scheduler, where the loop stands (epoch, steps done in
it, the running loss sum) and every random stream: torch's global generator (unit and weight
noise), the CUDA generators, NumPy's and Python's, and the loop's own data-order and augmentation
generators. With several processes (:mod:`sbnkit.distributed`) rank 0 writes the file, holding
every rank's streams and buffers (BatchNorm statistics of its own slices), and a resumed rank
restores its own; a run resumes only with the number of processes it was trained with. Only
tensors and plain data are stored, so the file loads with ``torch.load(..., weights_only=True)``.
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

__all__ = [
    "FORMAT",
    "LATER_GENERATORS",
    "LoopPosition",
    "capture_rng",
    "check_world_size",
    "load",
    "rank_state",
    "restore_rank",
    "restore_rng",
    "save",
]

FORMAT = "sbnkit-training-state"
LATER_GENERATORS = frozenset({"samples"})  # loop generators that states written before them lack


@dataclass
class LoopPosition:
    """Where the loop stands: ``epoch`` (1-based) in progress with ``step`` steps done and
    ``loss_total`` their summed loss; ``logged`` epochs are in the log."""

    epoch: int
    step: int
    loss_total: float
    logged: int
    train_seconds: float


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random stream of a training run, as tensors and plain data: the global ones and the
    loop's own ``generators`` (by name)."""
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
        **{name: g.get_state() for name, g in generators.items()},
    }


def restore_rng(rng: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Set every random stream from :func:`capture_rng`'s record. A generator of
    :data:`LATER_GENERATORS` that the record lacks (a state saved before it existed) keeps its
    state; any other missing one raises :class:`~sbnkit.errors.UserError` before anything is set."""
    missing = [name for name in generators if name not in rng and name not in LATER_GENERATORS]
    if missing:
        raise UserError(
            f"the saved training state lacks the random stream {missing[0]!r}; it is damaged or "
            "was written by another sbnkit version"
        )
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = rng["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    for name, g in generators.items():
        if name in rng:
            g.set_state(rng[name])


def rank_state(model: torch.nn.Module, rng: dict[str, Any]) -> dict[str, Any]:
    """What one process holds of its own: its random streams ``rng`` (:func:`capture_rng`) and
    ``model``'s buffers (BatchNorm statistics, which each rank gathers from its own slices)."""
    buffers = {k: b.detach().cpu().clone() for k, b in model.named_buffers()}
    return {"rng": rng, "buffers": buffers}


def restore_rank(
    saved: dict[str, Any],
    model: torch.nn.Module,
    generators: dict[str, torch.Generator],
) -> None:
    """Give ``model`` and the random streams the state of this process (``saved``: one entry of
    the state's ``ranks``), after the model's weights are loaded.

    Raises :class:`~sbnkit.errors.UserError` when the saved buffers do not fit ``model``.
    """
    buffers = dict(model.named_buffers())
    if buffers.keys() != saved["buffers"].keys() or any(
        b.shape != saved["buffers"][k].shape for k, b in buffers.items()
    ):
        raise UserError(
            "the saved training state does not fit the model of its config; it is damaged or "
            "was written by another sbnkit version"
        )
    restore_rng(saved["rng"], generators)
    with torch.no_grad():
        for name, b in buffers.items():
            b.copy_(saved["buffers"][name])


def save(
    path: str | os.PathLike,
    position: LoopPosition,
    model: torch.nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    ranks: list[dict[str, Any]],
    epoch_signs: list[torch.Tensor],
) -> None:
    """Write the training state to ``path`` atomically (``ranks``: every process's
    :func:`rank_state` in rank order; ``epoch_signs``: the binary weights' signs at the start of
    the epoch in progress, for its flip ratio).

    Raises ``OSError`` when the file cannot be written; nothing is left behind then."""
    checkpoint.write(
        path,
        {
            "format": FORMAT,
            "version": checkpoint.VERSION,
            "position": vars(position),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
            "world_size": len(ranks),
            "ranks": ranks,
            "epoch_signs": [x.cpu() for x in epoch_signs],
        },
    )


def check_world_size(saved: dict[str, Any], world_size: int) -> None:
    """Raise :class:`~sbnkit.errors.UserError` unless the state ``saved`` was written by a run
    of ``world_size`` processes (each rank resumes its own streams)."""
    n = saved["world_size"]
    if n != world_size:
        launch = "without torchrun" if n == 1 else f"with torchrun --nproc_per_node={n}"
        raise UserError(
            f"the run was trained with {n} process{'es' * (n != 1)}, not {world_size}; resume it "
            f"{launch} (its random streams are per process)"
        )


def load(path: str | os.PathLike) -> dict[str, Any]:
    """The training state in ``path``; ``position`` is a :class:`LoopPosition`, ``ranks`` each
    process's :func:`rank_state`.

    Raises :class:`~sbnkit.errors.UserError` for a missing, unreadable or damaged file.
    """
    payload = checkpoint.read(
        path, FORMAT, "sbnkit training state", "the run cannot be resumed; start it again"
    )
    try:
        payload["position"] = LoopPosition(**payload["position"])
        for key in ("model", "optimizers", "schedulers"):
            if not isinstance(payload[key], dict):
                raise TypeError(key)
        ranks = payload["ranks"]
        if not isinstance(payload["epoch_signs"], list) or not isinstance(ranks, list):
            raise TypeError("epoch_signs")
        if payload["world_size"] != len(ranks) or not ranks:
            raise TypeError("world_size")
        for r in ranks:
            if not isinstance(r["rng"], dict) or not isinstance(r["buffers"], dict):
                raise TypeError("ranks")
    except (KeyError, TypeError):
        raise UserError(
            f"training state {path} is incomplete or damaged; the run cannot be resumed"
        ) from None
    return payload
