"""The PSA authors' network file format and the toy network of the gradient-accuracy study.

A network file is a JSON object: ``layers[k].weight`` ``[out, in]``, ``layers[k].bias``
``[1, out]`` of a plain SBN MLP with one output, the toy points ``X`` and their labels ``y``
(``±1``), plus optional fields (``epoch``, ``training``, ``exact_expected_loss``, the paper's
readings ``paper_relative_rmse_at_one_sample``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models import ap2_init_, mlp
from ..network import SBN, Stage

__all__ = [
    "LAYER_SIZES",
    "init_network",
    "layers",
    "load_network",
    "network_from_json",
    "network_to_json",
    "toy_loss",
]

LAYER_SIZES = (2, 5, 5, 5, 1)


def toy_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example logistic loss ``softplus(-y η)`` with ``y ∈ {-1, +1}``."""
    return F.softplus(-y * logits[:, 0])


def layers(model: SBN) -> list[nn.Linear]:
    """The parameter groups of a plain SBN MLP: each binary stage's Linear, then the head's.

    Raises :class:`UserError` for any other model.
    """
    ok = all(isinstance(s, Stage) and s.norm is None for s in model.stages)
    if not ok or not all(type(op) is nn.Linear and op.bias is not None for op in model.ops[:-1]):
        raise UserError("gradeval needs a plain SBN MLP (sbnkit.models.mlp without norm)")
    return model.ops


def init_network(X: torch.Tensor, seed: int, sizes: Sequence[int] = LAYER_SIZES) -> SBN:
    """A float64 SBN MLP with ``W, b ~ U(-1, 1)`` (seeded), then
    :func:`~sbnkit.models.ap2_init_` on ``X``."""
    gen = torch.Generator().manual_seed(int(seed))
    model = mlp((sizes[0],), sizes[-1], hidden=tuple(sizes[1:-1])).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(2 * torch.rand(p.shape, generator=gen, dtype=p.dtype) - 1)
    ap2_init_(model, X)
    return model


def network_to_json(
    model: SBN, X: torch.Tensor, y: torch.Tensor, *, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The file format's object of ``model`` (a plain SBN MLP), ``X``, ``y`` and ``extra``
    fields. Raises :class:`UserError` for another model."""
    return {
        "layers": [
            {"weight": op.weight.tolist(), "bias": [op.bias.tolist()]} for op in layers(model)
        ],
        "X": X.tolist(),
        "y": y.tolist(),
        **(extra or {}),
    }


def network_from_json(data: dict[str, Any], source: str) -> tuple[SBN, torch.Tensor, torch.Tensor]:
    """``(model, X, y)`` from the file format's object, float64.

    Raises :class:`UserError` (naming ``source``) for missing fields or inconsistent shapes.
    """
    try:
        ws = [torch.tensor(layer["weight"], dtype=torch.float64) for layer in data["layers"]]
        bs = [
            torch.tensor(layer["bias"], dtype=torch.float64).flatten() for layer in data["layers"]
        ]
        X = torch.tensor(data["X"], dtype=torch.float64)
        y = torch.tensor(data["y"], dtype=torch.float64)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise UserError(
            f"{source}: not a gradeval network file ({exc!r}); it needs "
            "layers[k].weight, layers[k].bias, X and y"
        ) from None
    sizes = [ws[0].shape[-1], *(w.shape[0] for w in ws)] if ws and ws[0].dim() == 2 else []
    shapes_ok = (
        len(ws) >= 2
        and all(w.dim() == 2 for w in ws)
        and all(w.shape[1] == n for w, n in zip(ws, sizes[:-1], strict=True))
        and all(b.shape == (w.shape[0],) for w, b in zip(ws, bs, strict=True))
        and sizes[-1] == 1
        and X.dim() == 2
        and X.shape[1] == sizes[0]
        and y.shape == (X.shape[0],)
        and bool(((y == 1) | (y == -1)).all())
    )
    if not shapes_ok:
        raise UserError(f"{source}: inconsistent layer shapes, X or y (y must be ±1, one output)")
    model = mlp((sizes[0],), sizes[-1], hidden=tuple(sizes[1:-1])).double()
    with torch.no_grad():
        for op, w, b in zip(layers(model), ws, bs, strict=True):
            op.weight.copy_(w)
            op.bias.copy_(b)
    return model, X, y


def load_network(path: str | Path) -> tuple[SBN, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(model, X, y, data)`` from a network file (see :func:`network_from_json`).

    Raises :class:`UserError` for a missing, unreadable or malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"network file {str(path)!r} not found; pass a gradeval network JSON")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read network file {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a gradeval network file (expected a JSON object)")
    return (*network_from_json(data, str(path)), data)
