"""Argument checks shared by the binary-weight optimizers and parametrizations.

Each raises :class:`~sbnkit.errors.UserError` (a ``ValueError``) with one line that starts with
the parameter's name, so a config can prefix it with its section (``optim.latent.``).
"""

from __future__ import annotations

import math

from ..errors import UserError

__all__ = ["at_least", "choice", "in_range", "positive", "real"]


def real(name: str, value: object) -> float:
    """``value`` as a finite float, else a :class:`UserError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def positive(name: str, value: object) -> float:
    """``value`` if it is a finite number ``> 0``."""
    v = real(name, value)
    if not v > 0:
        raise UserError(f"{name} must be > 0, got {value!r}")
    return v


def in_range(name: str, value: object, low: float, high: float, high_open: bool = True) -> float:
    """``value`` if ``low <= value < high`` (``<= high`` when ``high_open`` is false)."""
    v = real(name, value)
    if not (low <= v and (v < high if high_open else v <= high)):
        raise UserError(
            f"{name} must lie in [{low:g}, {high:g}{')' if high_open else ']'}, got {v!r}"
        )
    return v


def choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def at_least(name: str, value: object, low: float) -> float:
    """``value`` if it is a finite number ``>= low``."""
    v = real(name, value)
    if v < low:
        raise UserError(f"{name} must be >= {low:g}, got {value!r}")
    return v
