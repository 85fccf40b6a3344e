"""Training throughput: the default Fashion-MNIST SBN (``st``) vs its float twin.

The SBN is built from a training config (default ``configs/fmnist_default.toml``): binary
Bernoulli weights and stochastic binary units, trained with its estimator and optimizers. The twin
has the same Linear/BatchNorm layers with float weights and ``tanh`` (or ``htanh``) activations,
trained by plain backprop with Adam. Both train on the same synthetic batches of the data set's
shape in ONE process; timings are interleaved (SBN, float, SBN, ...) and the median over
repetitions is reported.

    .venv/bin/python benchmarks/bench_train_speed.py [--config FILE] [--reps 7] [--steps 20]
        [--threads N] [key=value ...]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from sbnkit import data as data_lib
from sbnkit import estimators
from sbnkit.network import Stage
from sbnkit.train import build_model, load_config, train_step
from sbnkit.train.loop import build_optimizers

ROOT = Path(__file__).resolve().parent.parent


def float_twin(sbn: nn.Module, activation: str) -> nn.Module:
    """The SBN's layers with float weights and ``activation`` in place of the binary units."""
    act = {"tanh": nn.Tanh, "htanh": nn.Hardtanh}[activation]
    layers: list[nn.Module] = []
    for stage in sbn.stages:
        if not isinstance(stage, Stage):
            layers.append(type(stage)())
            continue
        op = stage.op
        if isinstance(op, nn.Linear):
            layers.append(nn.Linear(op.in_features, op.out_features, bias=op.bias is not None))
        else:
            layers.append(
                nn.Conv2d(
                    op.in_channels,
                    op.out_channels,
                    op.kernel_size,
                    op.stride,
                    op.padding,
                    bias=op.bias is not None,
                )
            )
        if stage.norm is not None:
            layers.append(type(stage.norm)(layers[-1].weight.shape[0]))
        layers.append(act())
    if sbn.head.pool == "avg":
        layers.append(nn.AdaptiveAvgPool2d(1))
    layers += [nn.Flatten(), nn.Linear(sbn.head.linear.in_features, sbn.head.linear.out_features)]
    return nn.Sequential(*layers)


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (as ``lscpu`` shows it), else the machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "fmnist_default.toml"))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions")
    parser.add_argument("--steps", type=int, default=20, help="training steps per repetition")
    parser.add_argument("--activation", default="tanh", choices=("tanh", "htanh"))
    parser.add_argument("--threads", type=int, help="torch threads (default: the config's)")
    args = parser.parse_args()

    cfg = load_config(args.config, args.overrides)
    threads = args.threads or cfg.train.threads
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ds = data_lib.get(cfg.data.name)
    bs = cfg.train.batch_size
    batches = [
        (torch.randn(bs, *ds.input_shape), torch.randint(0, ds.num_classes, (bs,)))
        for _ in range(args.steps)
    ]

    sbn = build_model(cfg)
    est = estimators.get(cfg.estimator.name, **cfg.estimator.options)
    sbn_opts = list(build_optimizers(cfg, sbn).values())
    twin = float_twin(sbn, args.activation)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=cfg.optim.real.lr)
    loss_fn = nn.CrossEntropyLoss()

    def sbn_step(x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(sbn, est, sbn_opts, x, y)

    def twin_step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(twin(x), y)
        twin_opt.zero_grad(set_to_none=True)
        loss.backward()
        twin_opt.step()

    def images_per_second(step) -> float:
        tic = time.perf_counter()
        for x, y in batches:
            step(x, y)
        return bs * len(batches) / (time.perf_counter() - tic)

    sbn.train()
    twin.train()
    for step in (sbn_step, twin_step):
        for x, y in batches[:3]:
            step(x, y)
    sbn_rates, twin_rates = [], []
    for _ in range(args.reps):
        sbn_rates.append(images_per_second(sbn_step))
        twin_rates.append(images_per_second(twin_step))
    sbn_med, twin_med = statistics.median(sbn_rates), statistics.median(twin_rates)
    sizes = "-".join(map(str, [math.prod(ds.input_shape), *cfg.model.hidden, ds.num_classes]))
    print(
        f"config: {Path(args.config).name} ({cfg.model.name} {sizes}, batch {bs}, "
        f"weight_mode {cfg.model.weight_mode}, estimator {cfg.estimator.name})"
    )
    cpu = cpu_model()
    print(f"torch {torch.__version__}, {threads} threads, {cpu}")
    print(f"reps {args.reps} x {args.steps} steps, interleaved; median images/s:")
    print(
        f"  SBN (binary weights + units, {cfg.estimator.name}): {sbn_med:8.0f}"
        f"  (range {min(sbn_rates):.0f}-{max(sbn_rates):.0f})"
    )
    print(
        f"  float twin ({args.activation}, backprop):      {twin_med:8.0f}"
        f"  (range {min(twin_rates):.0f}-{max(twin_rates):.0f})"
    )
    print(f"  ratio float/SBN images/s (SBN slowdown): {twin_med / sbn_med:.2f}x")


if __name__ == "__main__":
    main()
