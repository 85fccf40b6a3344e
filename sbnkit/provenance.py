"""Provenance of a run: what it read, which software ran it, with what command line and when."""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__

__all__ = ["file_record", "git_commit", "provenance"]


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "bytes", "sha256"}`` of the file ``path`` (absolute path).

    Raises ``OSError`` when the file cannot be read."""
    path = Path(path).absolute()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def git_commit(folder: str | os.PathLike | None = None) -> str | None:
    """The commit of the git checkout holding ``folder`` (default: sbnkit's source), with
    ``+dirty`` when it has uncommitted changes; ``None`` outside a checkout or without git."""
    where = str(Path(folder) if folder is not None else Path(__file__).resolve().parent)
    try:
        head = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def provenance(argv: Sequence[str] | None = None, files: Iterable[os.PathLike] = ()) -> dict:
    """The provenance record of a run that read ``files``, started with ``argv`` (default
    ``sys.argv``): data files with sizes and SHA-256, software versions, git commit, date.

    Raises ``OSError`` when one of ``files`` cannot be read."""
    return {
        "command_line": list(sys.argv if argv is None else argv),
        "cwd": str(Path.cwd()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sbnkit": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "data_files": [file_record(p) for p in files],
    }
