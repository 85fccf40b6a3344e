"""One training step of each binary-weight method vs plain Adam on the same model.

Each method is built from its recipe ``configs/fmnist_<method>.toml`` (model, estimator,
parametrization, optimizers). The baseline is the same recipe with ``model.binary_weights =
false``: the same network with float weights, every parameter trained by ``torch.optim.Adam``.
A step is what the training loop does per mini-batch: the estimator's loss, ``zero_grad``,
backward, every optimizer's ``step``, the latent clipping and the per-step schedule hooks.

All models run in ONE process on the same synthetic batches of the data set's shape. Each
repetition times ``--steps`` steps of every model in turn (interleaved, the order rotated every
repetition); the table gives the median seconds per step and the median over repetitions of
the per-repetition ratio to Adam (goal ≤ 1.3×).

``--draw`` adds two rows that only draw uniforms for every latent of the model: BayesBiNN's
Philox draw (``philox.uniform_like``, the one part of its step that no kernel can skip: its cost
bounds BayesBiNN's ratio from below by ``1 + that row's ratio``) and ``torch.rand_like``, the
draw it replaced.

    .venv/bin/python benchmarks/bench_optim_step.py [--reps 15] [--steps 20] [--threads 1]
        [--methods adaste,bop] [--draw] [key=value ...]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sbnkit import data as data_lib
from sbnkit import estimators
from sbnkit import optim as optim_lib
from sbnkit.optim import philox
from sbnkit.train import Config, build_model, load_config, train_step
from sbnkit.train.loop import build_optimizers
from sbnkit.weights import latent_parameters

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("binaryconnect", "md", "md_tanh_s", "bayesbinn", "adaste", "bop")
TRAIN_SIZE = 54_000  # the Fashion-MNIST training split of the recipes (N of bayesbinn / adaste)

Batch = tuple[torch.Tensor, torch.Tensor]


def stepper(cfg: Config) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step (as the training loop makes it) of a fresh model of ``cfg``."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    model.train()
    est = estimators.get(cfg.estimator.name, **cfg.estimator.options)
    opts = list(build_optimizers(cfg, model, TRAIN_SIZE).values())
    hooks = optim_lib.Schedules(model, opts)
    hooks.epoch_start()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(model, est, opts, x, y)
        hooks.step_end()

    return step


def drawer(cfg: Config, draw: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., None]:
    """``draw(λ)`` for every latent of ``cfg``'s model."""
    latents = [p.detach() for p in latent_parameters(build_model(cfg))]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        for lam in latents:
            draw(lam)

    return step


def seconds_per_step(
    step: Callable[[torch.Tensor, torch.Tensor], None], batches: list[Batch]
) -> float:
    """Wall seconds per step over ``batches``."""
    tic = time.perf_counter()
    for x, y in batches:
        step(x, y)
    return (time.perf_counter() - tic) / len(batches)


def main(argv: list[str] | None = None) -> int:
    """Time every method and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every recipe")
    ap.add_argument("--reps", type=int, default=15, help="interleaved repetitions")
    ap.add_argument("--steps", type=int, default=20, help="steps per model and repetition")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    ap.add_argument(
        "--draw", action="store_true", help="add rows: BayesBiNN's draw, and rand_like, alone"
    )
    args = ap.parse_args(argv)
    if args.reps < 1 or args.steps < 1 or args.threads < 1:
        raise SystemExit("--reps, --steps and --threads must be positive")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if not (ROOT / "configs" / f"fmnist_{m}.toml").is_file():
            raise SystemExit(f"unknown method {m!r}; choose from {', '.join(METHODS)}")

    torch.set_num_threads(args.threads)
    recipe = ROOT / "configs" / f"fmnist_{methods[0]}.toml"
    base = load_config(recipe, [*args.overrides, "model.binary_weights=false"])
    steps = {"adam (float weights)": stepper(base)}
    for m in methods:
        steps[m] = stepper(load_config(ROOT / "configs" / f"fmnist_{m}.toml", args.overrides))
    if args.draw:
        cfg = load_config(ROOT / "configs" / "fmnist_bayesbinn.toml", args.overrides)
        steps["Philox uniforms of every latent (alone)"] = drawer(
            cfg, lambda lam: philox.uniform_like(lam, philox.draw_key())
        )
        steps["torch.rand_like of every latent (alone)"] = drawer(cfg, torch.rand_like)

    ds = data_lib.get(base.data.name)
    bs = base.train.batch_size
    torch.manual_seed(0)
    batches = [
        (torch.randn(bs, *ds.input_shape), torch.randint(0, ds.num_classes, (bs,)))
        for _ in range(args.steps)
    ]
    names = list(steps)
    for name in names:  # warm-up
        for x, y in batches[:3]:
            steps[name](x, y)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(seconds_per_step(steps[name], batches))

    adam = times[names[0]]
    print(
        f"model {base.model.name} width {base.model.width}, batch {bs}, {args.threads} threads, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    print(f"{args.reps} interleaved repetitions x {args.steps} steps; medians")
    print("| method | ms/step | ratio to Adam (median of per-repetition ratios) |")
    print("|---|---|---|")
    for name in names:
        ratio = statistics.median(t / a for t, a in zip(times[name], adam, strict=True))
        print(f"| {name} | {1e3 * statistics.median(times[name]):.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
