"""Time of ``import sbnkit`` in fresh processes, for one or more source trees, interleaved.

    .venv/bin/python benchmarks/bench_import.py [--reps 15] [TREE ...]

Each TREE is a checkout whose ``sbnkit`` package is imported (``PYTHONPATH=TREE``); default: this
repository. With two trees the ratio of their medians is printed (first / second).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

CODE = "import time; t = time.perf_counter(); import sbnkit; print(time.perf_counter() - t)"


def once(tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", type=Path, default=[Path(__file__).parents[1]])
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    times: dict[Path, list[float]] = {t: [] for t in args.trees}
    for t in args.trees:
        once(t)  # warm the file cache and numba's on-disk cache
    for _ in range(args.reps):
        for t in args.trees:
            times[t].append(once(t))
    medians = {t: statistics.median(v) for t, v in times.items()}
    for t, m in medians.items():
        print(f"{t}: median {m * 1e3:.0f} ms over {args.reps} (min {min(times[t]) * 1e3:.0f})")
    if len(args.trees) == 2:
        a, b = args.trees
        print(f"ratio {a.name} / {b.name}: {medians[a] / medians[b]:.2f}")


if __name__ == "__main__":
    main()
