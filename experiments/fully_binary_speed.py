"""Cost of candidate fully binary Fashion-MNIST networks: images/s of training steps and of one
sampled evaluation pass, at one thread, as wall and as process CPU time.

Each candidate is ``configs/fmnist_default.toml`` plus ``key=value`` overrides (``;`` separates
candidates). The model, estimator and optimizers are built as ``sbnkit train`` builds them and
trained on random batches of the data set's shape (no data files needed). CPU time is the
estimate to trust on a shared machine: it hardly changes with the load, wall time does.

    .venv/bin/python experiments/fully_binary_speed.py [--steps 12] \\
        "model.name=convnet model.strides=[2,2,2] model.head=flatten; model.hidden=[2048,2048]"
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from sbnkit import data as data_lib
from sbnkit import estimators
from sbnkit.inference import predict_proba
from sbnkit.train import build_model, load_config, train_step
from sbnkit.train.loop import build_optimizers

ROOT = Path(__file__).resolve().parents[1]


def measure(overrides: list[str], steps: int, eval_batch: int = 2000) -> dict[str, float]:
    """``train_wall``/``train_cpu``: training images/s; ``eval_wall``/``eval_cpu``: images/s of
    one sampled forward pass (units drawn, as each draw of the final ensemble evaluation)."""
    cfg = load_config(ROOT / "configs" / "fmnist_default.toml", overrides)
    torch.manual_seed(0)
    ds = data_lib.get(cfg.data.name)
    model = build_model(cfg)
    est = estimators.get(cfg.estimator.name, **cfg.estimator.options)
    opts = list(build_optimizers(cfg, model, 60_000).values())
    bs = cfg.train.batch_size
    x, y = torch.randn(bs, *ds.input_shape), torch.randint(0, ds.num_classes, (bs,))

    def step() -> None:
        train_step(model, est, opts, x, y)

    model.train()
    for _ in range(2):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model.eval()
    xe = torch.randn(eval_batch, *ds.input_shape)
    with torch.no_grad():
        predict_proba(model, xe, "sample", 1)
        ewall, ecpu = time.perf_counter(), time.process_time()
        predict_proba(model, xe, "sample", 1)
        ewall, ecpu = time.perf_counter() - ewall, time.process_time() - ecpu
    return {
        "train_wall": steps * bs / wall,
        "train_cpu": steps * bs / cpu,
        "eval_wall": eval_batch / ewall,
        "eval_cpu": eval_batch / ecpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", help="';'-separated candidates of key=value overrides")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for text in args.candidates.split(";"):
        overrides = text.split()
        r = measure(overrides, args.steps)
        print(
            f"{' '.join(overrides) or '(default)'}: train {r['train_cpu']:.0f} images/s CPU "
            f"({r['train_wall']:.0f} wall), sampled eval pass {r['eval_cpu']:.0f} CPU "
            f"({r['eval_wall']:.0f} wall); load {os.getloadavg()[0]:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
