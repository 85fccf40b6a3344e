"""Devices: choosing one by name, and a check that no tensor is created on the wrong one.

sbnkit's computations create every tensor either from an input (``*_like``, ``x.new_*``, ops)
or with an explicit ``device=``, so they run wherever the model and the batch are. Without a
GPU to run on, :class:`NoImplicitDevice` checks that rule: inside it, a tensor factory
(``torch.zeros``, ``torch.arange``, ``torch.tensor``, ...) called from sbnkit's own code without
``device=`` raises, because on a CUDA run it would put that tensor on the CPU. The tests run every
estimator and a training step under it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .errors import UserError

__all__ = ["DEVICE_NAMES", "NoImplicitDevice", "resolve_device"]

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")

_PACKAGE = str(Path(__file__).resolve().parent)
_TORCH = str(Path(torch.__file__).resolve().parent)
_FACTORIES = frozenset(
    getattr(torch, name)
    for name in (
        "arange",
        "as_tensor",
        "empty",
        "eye",
        "full",
        "linspace",
        "logspace",
        "ones",
        "rand",
        "randint",
        "randn",
        "randperm",
        "tensor",
        "zeros",
    )
)


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (``auto`` = CUDA when present, else the CPU).

    Raises :class:`~sbnkit.errors.UserError` for an unknown name or a device this machine
    does not have.
    """
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use one of {', '.join(DEVICE_NAMES)}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"device {name!r} is not available: no CUDA GPU is visible to this torch "
                f'({torch.__version__}); use device "cpu" or "auto"'
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(
                f"device {name!r} is not available: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(
                f'device {name!r} is not available: no Apple GPU (MPS) here; use "cpu" or "auto"'
            )
        return device
    raise UserError(f"unknown device {name!r}; use one of {', '.join(DEVICE_NAMES)}")


def _caller_in_package() -> str | None:
    """``file:line`` of the innermost frame outside torch if it lies in sbnkit, else ``None``."""
    frame = sys._getframe(2)
    while frame is not None:
        path = str(Path(frame.f_code.co_filename).resolve())
        if not path.startswith(_TORCH) and path != __file__:
            if path.startswith(_PACKAGE):
                return f"{path}:{frame.f_lineno}"
            return None
        frame = frame.f_back
    return None


class NoImplicitDevice(TorchFunctionMode):
    """A mode in which sbnkit code may not create a tensor without naming its device."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple = (),
        kwargs: dict | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _FACTORIES and "device" not in kwargs:
            where = _caller_in_package()
            if where is not None:
                raise AssertionError(
                    f"{where}: torch.{func.__name__} without device= creates the tensor on "
                    "the default device, not the model's"
                )
        return func(*args, **kwargs)
