"""One full training step (forward, backward, SGD step) of CIFAR_S1 at batch 64: PSA vs ST.

Interleaved in one process (st, psa[auto], psa[fused], ... per round), median over rounds; the
reference kernel is slow, so it gets fewer rounds. Peak memory of each method is the growth of the
max RSS over the set-up in a fresh subprocess running two steps (numba's JIT included).

    python benchmarks/bench_psa_step.py [--rounds 5] [--threads 2] [--reference-rounds 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

import sbnkit
from sbnkit.models import cifar_s1, data_init_

METHODS = {
    "st": {"name": "st"},
    "psa[auto]": {"name": "psa", "kernel": "auto"},
    "psa[fused]": {"name": "psa", "kernel": "fused"},
    "psa[series]": {"name": "psa", "kernel": "series"},
    "psa[reference]": {"name": "psa", "kernel": "reference"},
}


def setup(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """CIFAR_S1 with the PSA paper's data-dependent init on a random batch of 64 images."""
    torch.manual_seed(seed)
    model = cifar_s1((3, 32, 32), 10)
    x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    data_init_(model, x)
    return model, x, y


def step(model, opt, est, x, y) -> float:
    """Seconds for one forward + backward + optimizer step."""
    t = time.perf_counter()
    opt.zero_grad()
    est.loss(model, x, y).backward()
    opt.step()
    return time.perf_counter() - t


def estimator(method: str):
    options = dict(METHODS[method])
    return sbnkit.estimators.get(options.pop("name"), **options)


def peak_memory(method: str, threads: int) -> float:
    """Growth of the max RSS in MB over the set-up, in a fresh process running two steps."""
    out = subprocess.run(
        [sys.executable, __file__, "--memory-of", method, "--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reference-rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y = setup()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    if args.memory_of:
        est = estimator(args.memory_of)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(2):
            step(model, opt, est, x, y)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
        return
    ests = {m: estimator(m) for m in METHODS}
    for est in ests.values():  # warm-up: numba compile, allocator
        step(model, opt, est, x, y)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(args.rounds):
        for m, est in ests.items():
            if m == "psa[reference]" and r >= args.reference_rounds:
                continue
            times[m].append(step(model, opt, est, x, y))
    st = statistics.median(times["st"])
    rows = []
    for m in METHODS:
        med = statistics.median(times[m])
        mem = peak_memory(m, args.threads)
        rows.append(
            {
                "method": m,
                "median_s": med,
                "ratio_to_st": med / st,
                "rounds": len(times[m]),
                "peak_rss_mb": mem,
            }
        )
        print(
            f"{m:16s} {med * 1000:9.0f} ms  x{med / st:5.2f}  ({len(times[m])} rounds)  "
            f"peak RSS growth {mem:6.0f} MB",
            flush=True,
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
