"""Time the flip-difference kernels on the CIFAR_S1 conv layers (batch 64, float32, 2 threads).

Each layer is timed for ``conv2d_input`` (one transposed conv of the same shape: the yardstick),
the series kernel at its automatic order, the exact fused kernel and the reference; the kernels
are interleaved within each repetition and the medians are printed with their ratio to the
yardstick, as a markdown table. The numba compile time is measured first, in a subprocess with
an empty cache directory (cold) and again with that cache filled (warm). ``--orders 4,6,8``
prints instead the series at forced orders against the fused kernel, for these convs and two
dense layers (yardstick: the matmul ``G @ W``): the data of the ``auto`` cost model.

    .venv/bin/python benchmarks/bench_kernels.py            # full: batch 64, 5 repetitions
    .venv/bin/python benchmarks/bench_kernels.py --quick    # batch 16, 3 repetitions
    .venv/bin/python benchmarks/bench_kernels.py --threads 1 --cpu-time --orders 4,6,8,10,12
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from torch.nn.grad import conv2d_input

from sbnkit import kernels

# (C_in, C_out, K, stride, input H = W); padding 0 everywhere
LAYERS = [
    (96, 96, 3, 1, 30),
    (96, 96, 3, 2, 28),
    (96, 192, 3, 1, 13),
    (192, 192, 3, 1, 11),
    (192, 192, 3, 2, 9),
    (192, 192, 3, 1, 4),
    (192, 192, 1, 1, 2),
]

DENSE = [(784, 1024), (1024, 1024)]  # (n_in, n_out)

COMPILE_SNIPPET = """
import time, torch
from sbnkit.kernels import flip_delta_conv2d_fused
for dt in (torch.float32, torch.float64):
    x = torch.ones(1, 2, 3, 3, dtype=dt)
    w = torch.full((2, 2, 3, 3), 0.1, dtype=dt)
    g = torch.ones(1, 2, 1, 1, dtype=dt)
    t = time.perf_counter()
    flip_delta_conv2d_fused(g, g, w, x, 1, 0)
    print(f"{time.perf_counter() - t:.2f}")
"""


def compile_times() -> tuple[list[str], list[str]]:
    """First-call seconds (float32, float64) with an empty numba cache, then with it filled."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = []
        for _ in range(2):
            out = subprocess.run(
                [sys.executable, "-c", COMPILE_SNIPPET],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(out.stdout.split())
    return runs[0], runs[1]


def make_layer(
    c_in: int, c_out: int, k: int, stride: int, size: int, batch: int, gain: float
) -> tuple[torch.Tensor, ...]:
    """±1 inputs, weights ``N(0, gain²/fan_in)``, pre-activations ``N(0, 2²)``, G ``N(0, 1)``."""
    out = (size - k) // stride + 1
    x = torch.randint(0, 2, (batch, c_in, size, size)).float() * 2 - 1
    w = torch.randn(c_out, c_in, k, k) * gain / (c_in * k * k) ** 0.5
    a = torch.randn(batch, c_out, out, out) * 2
    g = torch.randn(batch, c_out, out, out)
    return g, a, w, x


def timed(fn: Callable[[], torch.Tensor], clock: Callable[[], float]) -> tuple[float, torch.Tensor]:
    t = clock()
    res = fn()
    return clock() - t, res


def bench_layer(
    layer: tuple[int, int, int, int, int],
    batch: int,
    gain: float,
    reps: int,
    ref_reps: int,
    clock: Callable[[], float],
) -> str:
    """One markdown table row: medians in ms and their ratios to ``conv2d_input``."""
    c_in, c_out, k, stride, size = layer
    g, a, w, x = make_layer(c_in, c_out, k, stride, size, batch, gain)
    r = 2 * float(w.abs().max())
    order = kernels.select_order(r)
    runs: dict[str, Callable[[], torch.Tensor]] = {
        "conv": lambda: conv2d_input(x.shape, w, g, stride, 0),
        "fused": lambda: kernels.flip_delta_conv2d_fused(g, a, w, x, stride, 0),
    }
    if order is not None:
        runs["series"] = lambda: kernels.flip_delta_conv2d_series(g, a, w, x, stride, 0)
    for fn in runs.values():
        fn()  # warm-up (and numba cache load)
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, torch.Tensor] = {}
    for _ in range(reps):
        for name, fn in runs.items():
            t, results[name] = timed(fn, clock)
            times[name].append(t)
    for _ in range(ref_reps):
        t, _res = timed(lambda: kernels.flip_delta_conv2d_reference(g, a, w, x, stride, 0), clock)
        times.setdefault("reference", []).append(t)
    med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    base = med["conv"]

    def cell(name: str) -> str:
        if name not in med:
            return "skipped" if name == "reference" else "unsupported"
        return f"{med[name]:.1f} ({med[name] / base:.1f}×)"

    err = "-"
    if "series" in results:
        diff = (results["series"] - results["fused"]).norm() / results["fused"].norm()
        err = f"{float(diff):.1e}"
    out = (size - k) // stride + 1
    name = f"{c_in}→{c_out} k{k} s{stride} {size}²→{out}²"
    return (
        f"| {name} | {r:.2f} | {order or '-'} | {base:.1f} | {cell('series')} | "
        f"{cell('fused')} | {cell('reference')} | {err} | {kernels.choose_kernel(a, w)} |"
    )


def bench_orders(
    layer: tuple[int, ...],
    batch: int,
    gain: float,
    reps: int,
    orders: list[int],
    clock: Callable[[], float],
) -> str:
    """One row: the fused kernel and the series at each forced order, × the yardstick."""
    if len(layer) == 2:
        n_in, n_out = layer
        w = torch.randn(n_out, n_in) * gain / n_in**0.5
        x = torch.randint(0, 2, (batch, n_in)).float() * 2 - 1
        g, a = torch.randn(batch, n_out), torch.randn(batch, n_out) * 2
        name = f"dense {n_in}→{n_out}"
        runs: dict[str, Callable[[], torch.Tensor]] = {
            "base": lambda: g @ w,
            "fused": lambda: kernels.flip_delta_dense_fused(g, a, w, x),
        }
        for n in orders:
            runs[f"N={n}"] = lambda n=n: kernels.flip_delta_dense_series(g, a, w, x, order=n)
    else:
        c_in, c_out, k, stride, size = layer
        g, a, w, x = make_layer(c_in, c_out, k, stride, size, batch, gain)
        name = f"{c_in}→{c_out} k{k} s{stride} {size}²"
        runs = {
            "base": lambda: conv2d_input(x.shape, w, g, stride, 0),
            "fused": lambda: kernels.flip_delta_conv2d_fused(g, a, w, x, stride, 0),
        }
        for n in orders:
            runs[f"N={n}"] = lambda n=n: kernels.flip_delta_conv2d_series(
                g, a, w, x, stride, 0, order=n
            )
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(reps):
        for key, fn in runs.items():
            times[key].append(timed(fn, clock)[0])
    med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
    cells = " | ".join(f"{med[key] / med['base']:.1f}×" for key in runs if key != "base")
    return f"| {name} | {med['base']:.1f} | {cells} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 16, 3 repetitions")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--gain", type=float, default=3.0, help="weight std × sqrt(fan_in)")
    parser.add_argument("--threads", type=int, default=2, help="torch and numba threads")
    parser.add_argument(
        "--reference-reps", type=int, default=1, help="the reference is slow; 0 skips it"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process CPU clock (with --threads 1: robust on a shared machine)",
    )
    parser.add_argument("--orders", default="", help="comma-separated forced series orders")
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    batch = args.batch or (16 if args.quick else 64)
    reps = args.reps or (3 if args.quick else 5)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.orders:
        orders = [int(n) for n in args.orders.split(",")]
        print(
            f"batch {batch}, float32, {args.threads} threads, gain {args.gain}, medians of {reps}"
        )
        print()
        print("| layer | yardstick ms | fused | " + " | ".join(f"N={n}" for n in orders) + " |")
        print("|---" * (3 + len(orders)) + "|")
        for layer in [*LAYERS, *DENSE]:
            print(bench_orders(layer, batch, args.gain, reps, orders, clock), flush=True)
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")
        return

    cold, warm = compile_times()
    print(f"numba first call, cold cache: float32 {cold[0]} s, float64 {cold[1]} s")
    print(f"numba first call, warm cache: float32 {warm[0]} s, float64 {warm[1]} s")
    print(
        f"batch {batch}, float32, {torch.get_num_threads()} threads, gain {args.gain}, "
        f"medians of {reps} ({args.reference_reps} for the reference), "
        f"{'process CPU time' if args.cpu_time else 'wall clock'}"
    )
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print()
    print(
        "| layer | r = max 2abs(W) | auto N | conv2d_input ms | series ms (×) | "
        "fused ms (×) | reference ms (×) | series rel. err | auto picks |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for layer in LAYERS:
        print(bench_layer(layer, batch, args.gain, reps, args.reference_reps, clock), flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
