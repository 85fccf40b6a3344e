"""``sbnkit plot``: learning curves and the accuracy-vs-ensemble-size curve of training runs.

Reads only run folders of ``sbnkit train`` (``run.json`` present): ``log.jsonl`` (one record per
finished epoch; a run still in progress or interrupted plots what it finished) and, once the run
is complete, ``metrics.json``. Writes PNGs into a run folder of its own (:mod:`sbnkit.runfolder`:
checked before anything is read or drawn, never a folder sbnkit did not create, ``--overwrite``
to replace an earlier plot):

* ``learning_curves.png``: train loss, accuracy (test and, with a validation split, validation;
  mode network) and learning rates per epoch, every run overlaid and labelled by its folder name;
* ``ensemble_curve.png``: test accuracy and NLL of the K-sample ensemble for K = 1, 2, 4, …, 64
  (``test_ensemble_curve`` of ``metrics.json``; log₂ K axis) with the mode network as a dashed
  line, as in the PSA paper; written when at least one run has the curve.

The default output folder is ``DIR/plots`` for one run; plots of several runs need ``--out``.
matplotlib is imported only when drawing (``import sbnkit`` does not import it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .provenance import provenance
from .runfolder import RunFolder, check_folder, read_record

__all__ = ["RunLog", "plot_ensemble_curve", "plot_learning_curves", "plot_runs", "read_run"]

LEARNING_CURVES = "learning_curves.png"
ENSEMBLE_CURVE = "ensemble_curve.png"


@dataclass
class RunLog:
    """What a training run folder holds for plotting."""

    path: Path
    label: str
    epochs: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def curve(self) -> dict[int, dict[str, float]]:
        """``{K: {"acc", "nll"}}`` of ``test_ensemble_curve`` (empty without it)."""
        raw = (self.metrics or {}).get("test_ensemble_curve") or {}
        return {int(k): v for k, v in sorted(raw.items(), key=lambda kv: int(kv[0]))}


def _json_dict(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON ({exc.msg}); it is damaged") from None
    if not isinstance(value, dict):
        raise UserError(f"{where} is not a JSON object; it is damaged")
    return value


def read_run(folder: str | os.PathLike) -> RunLog:
    """The epochs and metrics of the ``sbnkit train`` run folder ``folder``.

    Raises :class:`UserError` when ``folder`` is not such a folder or its log or metrics are
    damaged (not JSON objects, or a curve that is not ``{K: {"acc", "nll"}}``).
    """
    path = Path(os.path.abspath(Path(folder).expanduser()))
    record = read_record(path) if path.is_dir() else None
    if record is None or record.get("command") != "train":
        what = "does not exist" if not path.exists() else "is not a run folder of `sbnkit train`"
        raise UserError(f"{path} {what}; pass folders written by `sbnkit train` (with run.json)")
    run = RunLog(path, path.name)
    log = path / "log.jsonl"
    if log.is_file():
        run.files.append(log)
        lines = log.read_text(encoding="utf-8").splitlines()
        run.epochs = [_json_dict(s, f"{log} line {i}") for i, s in enumerate(lines, 1) if s]
    metrics = path / "metrics.json"
    if metrics.is_file():
        run.files.append(metrics)
        run.metrics = _json_dict(metrics.read_text(encoding="utf-8"), str(metrics))
        if not _valid_curve(run):
            raise UserError(
                f"{metrics}: test_ensemble_curve is not {{K: {{acc, nll}}}}; it is damaged"
            )
    return run


def _valid_curve(run: RunLog) -> bool:
    raw = (run.metrics or {}).get("test_ensemble_curve") or {}
    if not isinstance(raw, dict):
        return False
    for k, v in raw.items():
        if not (isinstance(k, str) and k.isdigit() and isinstance(v, dict)):
            return False
        if not all(isinstance(v.get(m), (int, float)) for m in ("acc", "nll")):
            return False
    return True


def _series(run: RunLog, key: str) -> tuple[list[float], list[float]]:
    pairs = [(e.get("epoch"), e.get(key)) for e in run.epochs]
    pairs = [
        (x, y) for x, y in pairs if isinstance(x, (int, float)) and isinstance(y, (int, float))
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _figure(panels: int) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.4 * panels, 3.6))
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def plot_learning_curves(runs: Sequence[RunLog], path: str | os.PathLike) -> None:
    """Draw train loss, accuracy and learning rates per epoch of ``runs`` into the PNG ``path``.

    Raises ``OSError`` when ``path`` cannot be written."""
    fig, (loss, acc, lr) = _figure(3)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for run, c in zip(runs, colors, strict=True):
        loss.plot(*_series(run, "train_loss"), color=c, marker=".", label=run.label)
        acc.plot(*_series(run, "test_acc_mode"), color=c, marker=".", label=f"{run.label} test")
        x, y = _series(run, "val_acc_mode")
        if x:
            acc.plot(x, y, color=c, ls="--", label=f"{run.label} val")
        for key, style in (("lr_real", "-"), ("lr_latent", ":")):
            x, y = _series(run, key)
            if x:
                lr.plot(x, y, color=c, ls=style, label=f"{run.label} {key[3:]}")
    from matplotlib.ticker import MaxNLocator

    for ax, title in (
        (loss, "train loss"),
        (acc, "accuracy (mode network)"),
        (lr, "learning rate"),
    ):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, lw=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if any(y > 0 for line in lr.lines for y in line.get_ydata()):
        lr.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")


def plot_ensemble_curve(runs: Sequence[RunLog], path: str | os.PathLike) -> None:
    """Draw test accuracy and NLL against the ensemble size K (log₂ axis) of ``runs`` that have
    the curve, with each run's mode network dashed, into the PNG ``path``.

    Raises ``OSError`` when ``path`` cannot be written."""
    fig, (acc, nll) = _figure(2)
    sizes = sorted({k for r in runs for k in r.curve})
    for i, run in enumerate(r for r in runs if r.curve):
        c = f"C{i % 10}"
        ks = list(run.curve)
        for ax, key in ((acc, "acc"), (nll, "nll")):
            ax.plot(ks, [run.curve[k][key] for k in ks], color=c, marker="o", label=run.label)
            mode = (run.metrics or {}).get(f"test_{key}_mode")
            if isinstance(mode, (int, float)):
                ax.axhline(mode, color=c, ls="--", lw=0.8, label=f"{run.label} mode network")
    for ax, title in ((acc, "test accuracy"), (nll, "test NLL")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(k) for k in sizes])
        ax.minorticks_off()
        ax.set_xlabel("ensemble size K")
        ax.set_title(title)
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")


def plot_runs(
    folders: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    argv: Sequence[str] | None = None,
    report: Callable[[str], None] = print,
) -> list[Path]:
    """Plot the training runs ``folders`` into the run folder ``out`` (default
    ``folders[0]/plots`` for one run); returns the PNGs written.

    Everything is read and checked before anything is written. Raises :class:`UserError` when
    no folder is given, several are given without ``out``, a folder is not a training run or is
    damaged, no run has a finished epoch, or ``out`` may not be written (see
    :func:`~sbnkit.runfolder.check_folder`).
    """
    if not folders:
        raise UserError("no run folder given; pass one or more folders written by `sbnkit train`")
    if out is None and len(folders) > 1:
        raise UserError("plots of several runs need --out DIR, the folder to write them to")
    runs = [read_run(f) for f in folders]
    if not any(r.epochs for r in runs):
        raise UserError("no finished epochs to plot: every log.jsonl is missing or empty")
    target = out if out is not None else runs[0].path / "plots"
    check_folder(target, "plot", overwrite=overwrite)
    record = provenance(argv, [f for r in runs for f in r.files])
    written = []
    with RunFolder(target, "plot", overwrite=overwrite, provenance=record, report=report) as rf:
        with rf.target(LEARNING_CURVES) as tmp:
            plot_learning_curves(runs, tmp)
        written.append(rf.path / LEARNING_CURVES)
        if any(r.curve for r in runs):
            with rf.target(ENSEMBLE_CURVE) as tmp:
                plot_ensemble_curve(runs, tmp)
            written.append(rf.path / ENSEMBLE_CURVE)
    return written
