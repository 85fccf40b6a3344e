"""The schedule protocol: per-epoch and per-step hooks that the training loop calls generically.

Any parametrization in the model or any optimizer may define ``epoch_start()`` (called before
the first step of every epoch, e.g. AdaSTE's ``β`` annealing) and/or ``step_end()`` (called after
every optimizer step, e.g. MD-tanh-S's ``β`` schedule). :class:`Schedules` finds and calls them.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["Schedules"]


class Schedules:
    """The ``epoch_start`` / ``step_end`` hooks of ``model``'s submodules and of ``optimizers``."""

    def __init__(self, model: nn.Module, optimizers: Iterable[object] = ()) -> None:
        owners = [*model.modules(), *optimizers]
        self._epoch = [o.epoch_start for o in owners if callable(getattr(o, "epoch_start", None))]
        self._step = [o.step_end for o in owners if callable(getattr(o, "step_end", None))]

    def __bool__(self) -> bool:
        return bool(self._epoch or self._step)

    def epoch_start(self) -> None:
        """Call every ``epoch_start`` hook."""
        for hook in self._epoch:
            hook()

    def step_end(self) -> None:
        """Call every ``step_end`` hook."""
        for hook in self._step:
            hook()
