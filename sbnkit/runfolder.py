"""Run folders: the one way an sbnkit command writes a folder of results.

A run folder is created by sbnkit and carries a record, ``run.json``: the command that wrote it,
its state (``running``, ``complete``, ``interrupted``), the files it wrote and the run's
provenance. The rules every writing command shares:

* **Checked before compute.** :func:`check_folder` validates the path without writing anything;
  commands call it before loading data or training.
* **Never someone else's folder.** A folder is accepted only when it does not exist, is empty, or
  holds an sbnkit run of the same command; anything else is refused and left untouched.
* **No silent overwrite.** A finished or interrupted run is replaced only with ``overwrite``; its
  files move aside to ``.previous/`` and come back if the new run fails before it saved any work.
* **One writer.** The folder is locked (``fcntl.flock`` on ``.lock``) while a run is in progress;
  a second writer is refused. A lock is released by the kernel when its process dies, so a run
  killed with SIGKILL is recognised as interrupted.
* **Appended logs in sub-folders.** A writer that appends to files of its own naming (TensorBoard)
  gets a sub-folder (:meth:`RunFolder.folder`) that the record lists like a file: it moves aside,
  is kept and is removed as a whole, and is reused by a resumed run.
* **No lost work, nothing else removed.** On failure (an error, SIGTERM, Ctrl-C) files marked
  ``keep`` that record finished work (e.g. the log of finished epochs) stay, with the record's
  state ``interrupted``, and the command says what was kept. Everything else this run wrote is
  removed, and so are the folder and its parents if this run created them and they are empty.
  Nothing that this run did not write is ever removed.

Every file is written atomically: to a temporary name in the folder, then ``os.replace``
(except inside the sub-folders of appending writers).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from .errors import UserError

__all__ = ["RECORD", "RunFolder", "check_folder", "read_record"]

RECORD = "run.json"
LOCK = ".lock"
PREVIOUS = ".previous"
FORMAT = "sbnkit-run"
State = Literal["running", "complete", "interrupted"]

try:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

except ImportError:  # Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``run.json`` record of ``folder``, or ``None`` when it holds no sbnkit run record."""
    try:
        record = json.loads((Path(folder) / RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return None
    return record


def _locked(folder: Path) -> bool:
    """Whether a live process holds the lock of ``folder`` (tested without writing)."""
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)


def _describe(folder: Path, record: dict[str, Any]) -> str:
    """One phrase: what ``folder``'s run is and how far it got."""
    state = record.get("state")
    if state == "running":
        state = "interrupted (its process was killed)"
    done = record.get("progress") or "no finished work"
    return f"{folder} holds a `{record.get('command')}` run that is {state} ({done})"


def check_folder(
    path: str | os.PathLike | None,
    command: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    can_resume: bool = False,
    option: str = "--out",
) -> Path:
    """The absolute folder ``path``, after checking that ``command`` may write there.

    ``resume``: the folder must hold an unfinished run of ``command`` to continue;
    ``can_resume``: errors suggest ``--resume`` for an unfinished run. Writes nothing.
    Raises :class:`~sbnkit.errors.UserError` when ``path`` is empty, is a file, is a non-empty
    folder that sbnkit did not create, holds a run of another command, is in use, or holds a run
    that only ``overwrite`` may replace (or, resuming, holds no run to continue).
    """
    if path is None or not str(path).strip():
        raise UserError(f"{option} is empty; pass the name of a new folder")
    folder = Path(os.path.abspath(Path(path).expanduser()))
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder} exists and is not a folder; pass another {option}")
    if resume and read_record(folder) is None:
        raise UserError(f"{option} {folder} holds no sbnkit run to resume; pass a run folder")
    if not folder.is_dir():
        return folder
    entries = {p.name for p in folder.iterdir()}
    if not entries:
        return folder
    record = read_record(folder)
    if record is None:
        raise UserError(
            f"{option} {folder} is a folder that sbnkit did not create and it is not empty; "
            f"pass a new or empty folder (nothing in it was touched)"
        )
    if record.get("command") != command:
        raise UserError(
            f"{_describe(folder, record)}, not a `{command}` run; pass another {option}"
        )
    if _locked(folder):
        raise UserError(
            f"{option} {folder} is in use by another sbnkit process; wait for it to finish or "
            f"pass another {option}"
        )
    finished = record.get("state") == "complete"
    if resume and finished:
        raise UserError(f"{_describe(folder, record)}: there is nothing to resume")
    if not overwrite and not resume:
        hint = f"--resume {folder} to continue it, " if can_resume and not finished else ""
        raise UserError(
            f"{_describe(folder, record)}; pass {hint}--overwrite to replace it, or another "
            f"{option}"
        )
    return folder


class RunFolder:
    """The run folder of one command invocation; use as a context manager.

    ``report`` receives one line on failure saying what was kept or removed. ``provenance`` is
    stored in the record. Raises :class:`~sbnkit.errors.UserError` as :func:`check_folder` does,
    and on entering when the folder cannot be created or another process holds it.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        command: str,
        *,
        overwrite: bool = False,
        resume: bool = False,
        option: str = "--out",
        provenance: dict[str, Any] | None = None,
        report: Callable[[str], None] = print,
    ) -> None:
        self.path = check_folder(
            path, command, overwrite=overwrite, resume=resume, can_resume=resume, option=option
        )
        self.command, self.overwrite, self.resume, self.option = command, overwrite, resume, option
        self.provenance = dict(provenance or {})
        self.report = report
        self.written: dict[str, bool] = {}
        self.progress = ""
        self._created: list[Path] = []
        self._lock_fd: int | None = None
        self._previous: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> RunFolder:
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                self.path.mkdir()
        except OSError as exc:
            raise UserError(
                f"cannot create {self.option} {self.path}: {exc.strerror or exc}; "
                "pass a folder you can write to"
            ) from None
        self._created = [p for p in missing if p.exists()]
        try:
            self._lock()
            self._take_over()
        except BaseException:
            self._release()
            self._remove_created()
            raise
        self._write_record("running")
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        try:
            if exc_type is None:
                self._write_record("complete")
                shutil.rmtree(self.path / PREVIOUS, ignore_errors=True)
            else:
                self._fail()
        finally:
            self._release()

    def _lock(self) -> None:
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            raise UserError(
                f"{self.option} {self.path} is in use by another sbnkit process; wait for it "
                f"to finish or pass another {self.option}"
            )
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _take_over(self) -> None:
        """Under the lock: re-check the folder, and move an earlier run aside with overwrite."""
        others = {p.name for p in self.path.iterdir()} - {LOCK}
        if not others:
            return
        record = read_record(self.path)
        consent = self.overwrite or (self.resume and record and record.get("state") != "complete")
        if record is None or record.get("command") != self.command or not consent:
            check_folder(self.path, self.command, overwrite=self.overwrite, option=self.option)
            raise UserError(f"{self.option} {self.path} changed while starting; try again")
        if self.resume:
            self.written = {name: True for name in record.get("files", [])}
            self.progress = record.get("progress", "")
            earlier = record.get("provenance", {})
            resumed = [*earlier.get("resumed", []), self.provenance]
            self.provenance = {**earlier, "resumed": resumed}
            return
        aside = self.path / PREVIOUS
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir()
        for name in [*record.get("files", []), RECORD]:
            source = self.path / name
            if source.exists() and name not in (LOCK, PREVIOUS):
                os.replace(source, aside / name)
                self._previous.append(name)

    def _fail(self) -> None:
        kept = sorted(n for n, keep in self.written.items() if keep) if self.progress else []
        for name in self.written:
            if name not in kept:
                self._delete(name)
        self.written = {n: True for n in kept}
        if kept:
            self._write_record("interrupted")
            shutil.rmtree(self.path / PREVIOUS, ignore_errors=True)
            self.report(
                f"sbnkit: kept {', '.join(kept)} in {self.path} ({self.progress}); "
                "the run did not finish"
            )
            return
        (self.path / RECORD).unlink(missing_ok=True)
        for name in self._previous:
            os.replace(self.path / PREVIOUS / name, self.path / name)
        if self._previous:
            shutil.rmtree(self.path / PREVIOUS, ignore_errors=True)
            self.report(f"sbnkit: nothing was finished; the earlier run in {self.path} is back")
            return
        self._remove_created()

    def _delete(self, name: str) -> None:
        path = self.path / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def _remove_created(self) -> None:
        (self.path / LOCK).unlink(missing_ok=True)
        for folder in self._created:
            with contextlib.suppress(OSError):
                folder.rmdir()

    # ------------------------------------------------------------------ writing

    @property
    def previous(self) -> Path | None:
        """The folder holding the earlier run's files while this run replaces it, else ``None``."""
        return self.path / PREVIOUS if self._previous else None

    @contextlib.contextmanager
    def target(self, name: str, *, keep: bool = False) -> Iterator[Path]:
        """A temporary path to write ``name`` to; it replaces ``name`` when the block succeeds.

        ``keep``: the file records finished work and survives a failed run. Raises
        ``ValueError`` for a name with a ``/``, a leading dot or a name the folder reserves.
        """
        if "/" in name or name in (RECORD, LOCK, PREVIOUS) or name.startswith("."):
            raise ValueError(f"{name!r} is not a file name a run may write")
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        try:
            yield tmp
            os.replace(tmp, self.path / name)
        finally:
            tmp.unlink(missing_ok=True)
        self.written[name] = keep or self.written.get(name, False)

    def remove(self, name: str) -> None:
        """Delete the file (or :meth:`folder`) ``name`` that this run wrote.

        Raises ``ValueError`` for a name this run did not write.
        """
        if name not in self.written:
            raise ValueError(f"{name!r} was not written by this run")
        self._delete(name)
        del self.written[name]

    def folder(self, name: str, *, keep: bool = False) -> Path:
        """The sub-folder ``name`` for a writer that appends to files of its own (e.g.
        TensorBoard's), created now or, resuming, the earlier run's; recorded as written by this
        run, so it is moved aside, kept (``keep``) or removed as a whole like a file.

        Raises ``ValueError`` for a bad name and :class:`~sbnkit.errors.UserError` when ``name``
        exists but was not written by this run.
        """
        if "/" in name or name in (RECORD, LOCK, PREVIOUS) or name.startswith("."):
            raise ValueError(f"{name!r} is not a folder name a run may write")
        path = self.path / name
        if name not in self.written and (path.exists() or path.is_symlink()):
            raise UserError(f"{path} exists but this run did not create it; move it away")
        path.mkdir(exist_ok=True)
        self.written[name] = keep or self.written.get(name, False)
        self._write_record("running")
        return path

    def set_progress(self, progress: str) -> None:
        """Describe the finished work that a failure keeps, and record it.

        Raises ``OSError`` when the record cannot be written."""
        self.progress = progress
        self._write_record("running")

    def write_text(self, name: str, text: str, *, keep: bool = False) -> Path:
        """Write ``text`` to ``name`` atomically; returns the path.

        Raises ``ValueError`` for a bad name (see :meth:`target`), ``OSError`` when the file
        cannot be written."""
        with self.target(name, keep=keep) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return self.path / name

    def append_line(self, name: str, line: str, *, progress: str | None = None) -> None:
        """Append ``line`` to the kept file ``name`` (rewritten atomically) and, if given, set
        :attr:`progress`, the description of the finished work that a failure keeps.

        Raises as :meth:`write_text` does."""
        old = (self.path / name).read_text(encoding="utf-8") if name in self.written else ""
        self.write_text(name, old + line.rstrip("\n") + "\n", keep=True)
        if progress is not None:
            self.set_progress(progress)

    def append_row(self, name: str, row: Mapping[str, Any], *, progress: str | None = None) -> None:
        """Append ``row`` to the kept CSV file ``name`` (rewritten atomically), as
        :meth:`append_line` does. The header is written once, from the first row's keys; a later
        row with new keys appends them as columns (earlier rows leave them empty).

        Raises as :meth:`write_text` does."""
        columns: list[str] = []
        rows: list[dict[str, str]] = []
        if name in self.written:
            with open(self.path / name, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                columns, rows = list(reader.fieldnames or []), list(reader)
        columns += [k for k in row if k not in columns]
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows([*rows, row])
        self.write_text(name, text.getvalue(), keep=True)
        if progress is not None:
            self.set_progress(progress)

    def _write_record(self, state: State) -> None:
        record = {
            "format": FORMAT,
            "version": 1,
            "command": self.command,
            "state": state,
            "pid": os.getpid(),
            "updated": _now(),
            "progress": self.progress,
            "files": sorted(self.written),
            "provenance": self.provenance,
        }
        tmp = self.path / f".{RECORD}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, self.path / RECORD)
        finally:
            tmp.unlink(missing_ok=True)
