"""TensorBoard events of a training run (``train.tensorboard``; the ``tensorboard`` extra).

Each finished epoch's record (the fields of ``log.jsonl``: losses, accuracies, NLL, flip ratio,
learning rates, images/s, seconds) becomes one scalar per field, tagged with the field's name, at
step = epoch, in the run folder's ``tensorboard/`` sub-folder. The event file is appended to by
TensorBoard's writer and flushed after every epoch; each record carries a checksum, so a file cut
short by a kill loses at most its last record. A resumed run starts a new event file in the same
folder that purges the steps from its first epoch on, so epochs re-run after the last checkpoint
are not shown twice. ``tensorboard --logdir runs`` shows every run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError

__all__ = ["FOLDER", "EventLog", "TensorBoardSetting", "installed", "wanted"]

FOLDER = "tensorboard"
TensorBoardSetting = bool | Literal["auto"]


def installed() -> bool:
    """Whether the ``tensorboard`` package can be imported (without importing it)."""
    return importlib.util.find_spec("tensorboard") is not None


def wanted(setting: TensorBoardSetting) -> bool:
    """Whether a run with ``train.tensorboard = setting`` writes events: ``"auto"`` when the
    package is installed.

    Raises :class:`~sbnkit.errors.UserError` for ``true`` without the package.
    """
    if setting == "auto":
        return installed()
    if setting and not installed():
        raise UserError(
            "train.tensorboard = true but the tensorboard package is not installed; "
            "pip install 'sbnkit[tensorboard]' or set train.tensorboard = \"auto\""
        )
    return bool(setting)


class EventLog:
    """A TensorBoard event file in ``folder``; ``first_epoch`` > 1 (a resumed run) hides the
    steps from ``first_epoch`` on that earlier files hold. Use as a context manager.

    Raises ``ImportError`` without the ``tensorboard`` package (check :func:`wanted` first)."""

    def __init__(self, folder: Path, first_epoch: int = 1) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = first_epoch if first_epoch > 1 else None
        self._writer = SummaryWriter(log_dir=str(folder), purge_step=purge)

    def add(self, record: Mapping[str, Any]) -> None:
        """Write the numeric fields of one epoch's ``record`` at step ``record["epoch"]``."""
        step = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
