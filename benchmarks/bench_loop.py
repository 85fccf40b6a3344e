"""Training-loop throughput of two source trees, interleaved: does a change slow the 1-process loop?

Each measurement is a fresh process that imports ``sbnkit`` from one TREE (``PYTHONPATH``),
builds the training run of a config on synthetic Fashion-MNIST-shaped IDX files (written once
to a temporary folder) and times ``fit`` for ``--epochs`` epochs; the images/s of the training
steps come from each epoch's own ``seconds`` (evaluation excluded). Trees alternate A, B, A, B,
... and the median per tree and the ratio A / B are printed.

    .venv/bin/python benchmarks/bench_loop.py OLD_TREE NEW_TREE [--reps 5] [--train 12800]
        [--threads 1] [--config configs/fmnist_default.toml] [key=value ...]

A tree is a checkout (e.g. ``git worktree add /tmp/old <commit>``); the fit API of older trees
(``fit(run, out_dir, ...)`` writing ``log.jsonl``) is handled too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import inspect, json, sys, tempfile
from pathlib import Path
from sbnkit.train import fit, load_config, prepare
config, overrides = sys.argv[1], json.loads(sys.argv[2])
threads, epochs = int(sys.argv[3]), int(sys.argv[4])
cfg = load_config(config, [*overrides, f"train.threads={threads}", f"train.epochs={epochs}"])
run = prepare(cfg)
records = []
if "on_epoch" in inspect.signature(fit).parameters:
    fit(run, records.append, progress=False)
else:
    with tempfile.TemporaryDirectory() as d:
        fit(run, d, progress=False)
        records = [json.loads(l) for l in (Path(d) / "log.jsonl").read_text().splitlines()]
steps = len(run.train[0]) // cfg.train.batch_size
print(json.dumps([steps * cfg.train.batch_size / r["seconds"] for r in records]))
"""


def write_data(folder: Path, n_train: int, n_test: int = 200) -> None:
    """Synthetic IDX files with Fashion-MNIST's names and shapes."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for name, arr, code in (("images-idx3", images, 3), ("labels-idx1", labels, 1)):
            header = bytes([0, 0, 8, code]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            (folder / f"{prefix}-{name}-ubyte").write_bytes(header + arr.tobytes())


def measure(tree: Path, args: argparse.Namespace, data: Path) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "SBNKIT_DATA": str(data)}
    argv = [sys.executable, "-c", CHILD, args.config, json.dumps(args.overrides)]
    argv += [str(args.threads), str(args.epochs)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, type=Path, metavar="TREE")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--config", default=str(ROOT / "configs" / "fmnist_default.toml"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", type=int, default=12800, help="training images")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rates: dict[Path, list[float]] = {t: [] for t in args.trees}
    with tempfile.TemporaryDirectory() as tmp:
        write_data(Path(tmp), args.train)
        for _ in range(args.reps):
            for tree in args.trees:
                rates[tree] += measure(tree, args, Path(tmp))
    med = {t: statistics.median(v) for t, v in rates.items()}
    for t, v in rates.items():
        print(f"{t}: median {med[t]:.0f} images/s over {len(v)} epochs ({min(v):.0f}-{max(v):.0f})")
    a, b = args.trees
    print(f"ratio {a} / {b} images/s: {med[a] / med[b]:.3f}")


if __name__ == "__main__":
    main()
