"""Comparisons: train several configs over several seeds and tabulate mean ± std.

Every (config, seed) is an ordinary ``sbnkit train`` run in its own sub-folder of the comparison's
run folder, started as a separate process (``jobs`` at a time), so runs never share a process's
random state or thread pool.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

__all__ = ["COLUMNS", "RunSpec", "mean_std", "plan", "plot", "summarise", "train_all"]

COLUMNS = (
    ("test_acc_mode", "test acc (mode)", 100.0),
    ("test_acc_sample", "test acc (1 sample)", 100.0),
    ("test_acc_ensemble", "test acc (ensemble)", 100.0),
    ("test_nll_ensemble", "test NLL (ensemble)", 1.0),
)


@dataclass(frozen=True)
class RunSpec:
    """One training run of the comparison: ``config`` with ``train.seed = seed`` into ``name``."""

    config: Path
    seed: int
    name: str


def plan(configs: Sequence[str | os.PathLike], seeds: int) -> list[RunSpec]:
    """The runs of ``configs`` × seeds ``1..seeds``. Raises :class:`UserError` for a missing
    config, repeated config names, or ``seeds < 1``."""
    if seeds < 1:
        raise UserError(f"--seeds must be a positive integer, got {seeds}")
    paths = [Path(c) for c in configs]
    for p in paths:
        if not p.is_file():
            raise UserError(f"config {p} does not exist; pass TOML config files")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise UserError(f"config names repeat ({', '.join(stems)}); give each config its own name")
    return [RunSpec(p, s, f"{p.stem}-s{s}") for p in paths for s in range(1, seeds + 1)]


def train_all(
    runs: Sequence[RunSpec],
    folder: Path,
    *,
    jobs: int = 1,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    on_done: Callable[[dict[str, dict]], None] | None = None,
) -> dict[str, dict]:
    """Train every run into ``folder/<name>`` (``jobs`` processes at a time); returns the
    metrics of each by name, also handed to ``on_done`` after each finished run. Raises
    :class:`UserError` naming the first run that failed."""
    if jobs < 1:
        raise UserError(f"--jobs must be a positive integer, got {jobs}")

    def one(spec: RunSpec) -> tuple[str, subprocess.CompletedProcess]:
        argv = [sys.executable, "-m", "sbnkit", "train", str(spec.config), *overrides]
        argv += [f"train.seed={spec.seed}", "--out", str(folder / spec.name)]
        if overwrite:
            argv.append("--overwrite")
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        log(f"{spec.name}: {'done' if done.returncode == 0 else 'FAILED'}")
        return spec.name, done

    results: dict[str, dict] = {}
    with ThreadPoolExecutor(jobs) as pool:
        for name, done in pool.map(one, runs):
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
                raise UserError(f"run {name} failed: {last}")
            results[name] = json.loads((folder / name / "metrics.json").read_text())
            if on_done is not None:
                on_done(results)
    return results


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """``"mean ± std"`` of ``values`` times ``scale`` (sample standard deviation; the mean alone
    for one value). Raises ``statistics.StatisticsError`` for no values."""
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def summarise(runs: Sequence[RunSpec], metrics: dict[str, dict]) -> tuple[str, dict]:
    """``(markdown table, {config: {column: [values over seeds]}})``: mean ± sample standard
    deviation over seeds per config, and seconds per training epoch. Raises ``KeyError`` when
    ``metrics`` lacks a run of ``runs`` or a column."""
    by_config: dict[str, dict[str, list[float]]] = {}
    for spec in runs:
        m = metrics[spec.name]
        row = by_config.setdefault(spec.config.stem, {})
        for key, _, _ in COLUMNS:
            row.setdefault(key, []).append(float(m[key]))
        row.setdefault("s_per_epoch", []).append(m["train_seconds"] / m["epochs"])
    header = "| config | seeds | " + " | ".join(t for _, t, _ in COLUMNS) + " | s/epoch |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]
    for config, row in by_config.items():
        cells = [mean_std(row[key], scale) for key, _, scale in COLUMNS]
        seconds = statistics.fmean(row["s_per_epoch"])
        lines.append(
            f"| {config} | {len(row['s_per_epoch'])} | " + " | ".join(cells) + f" | {seconds:.1f} |"
        )
    return "\n".join(lines) + "\n", by_config


def plot(by_config: dict[str, dict[str, list[float]]], path: Path) -> None:
    """A bar chart of the accuracy columns (mean, with ± std error bars) per config, to ``path``
    as PNG. Raises ``OSError`` when ``path`` cannot be written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(by_config)
    accs = [(key, title) for key, title, scale in COLUMNS if scale == 100.0]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.6))
    width = 0.8 / len(accs)
    for k, (key, title) in enumerate(accs):
        means = [100 * statistics.fmean(by_config[n][key]) for n in names]
        stds = [
            100 * statistics.stdev(by_config[n][key]) if len(by_config[n][key]) > 1 else 0.0
            for n in names
        ]
        xs = [i + (k - (len(accs) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=title)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("test accuracy (%)")
    low = min(100 * min(v) for row in by_config.values() for key, _ in accs for v in [row[key]])
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
