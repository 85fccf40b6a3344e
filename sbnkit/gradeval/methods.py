"""The study's methods: registered estimators with their options, under the paper's names."""

from __future__ import annotations

from typing import Any

from ..errors import UserError

__all__ = ["METHODS", "PSA_ORDER_PREFIX", "resolve_method"]

METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "psa": ("psa", {"kernel": "reference"}),
    "st": ("st", {}),
    "hard_st": ("hard_st", {}),
    "arm": ("arm", {}),
    "reinforce": ("reinforce", {}),
    "concrete_tau_0.1": ("concrete", {"tau": 0.1}),
    "concrete_tau_1": ("concrete", {"tau": 1.0}),
    "mean": ("mean", {}),
}
PSA_ORDER_PREFIX = "psa_order_"


def resolve_method(name: str) -> tuple[str, dict[str, Any]]:
    """``(registry name, options)`` of a study method; ``psa_order_N`` is series-kernel PSA.

    Raises :class:`UserError` for an unknown name.
    """
    if name in METHODS:
        return METHODS[name]
    if name.startswith(PSA_ORDER_PREFIX) and name[len(PSA_ORDER_PREFIX) :].isdigit():
        return "psa", {"kernel": "series", "order": int(name[len(PSA_ORDER_PREFIX) :])}
    known = ", ".join([*METHODS, PSA_ORDER_PREFIX + "N"])
    raise UserError(f"unknown gradeval method {name!r}; known methods: {known}")
