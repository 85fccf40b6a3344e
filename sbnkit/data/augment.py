"""Per-image random horizontal flip and random crop with zero padding, vectorised over a batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch

from ..errors import UserError

__all__ = ["AUGMENTS", "Augment", "augmenter", "random_crop", "random_flip"]

Augment = Literal["none", "flip", "crop", "flipcrop"]
AUGMENTS: tuple[str, ...] = get_args(Augment)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of ``x [B, C, H, W]`` left-right with probability ½."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_crop(
    x: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad ``x [B, C, H, W]`` by ``padding`` and cut an ``H × W`` window per image."""
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def augmenter(
    kind: Augment, padding: int = 4, generator: torch.Generator | None = None
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function ``x -> augmented x`` for ``kind`` in :data:`AUGMENTS` (``None`` for none).
    Raises :class:`UserError` for an unknown kind; the function raises it for a batch that is
    not ``[B, C, H, W]``."""
    if kind not in AUGMENTS:
        raise UserError(f"unknown augmentation {kind!r}; known: {', '.join(AUGMENTS)}")
    if kind == "none":
        return None

    def apply(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise UserError(f"augmentation {kind!r} needs image batches [B, C, H, W]")
        if kind in ("flip", "flipcrop"):
            x = random_flip(x, generator)
        if kind in ("crop", "flipcrop"):
            x = random_crop(x, padding, generator)
        return x

    return apply
