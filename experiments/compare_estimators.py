"""Train Fashion-MNIST SBNs with each estimator and tabulate the results.

Runs ``sbnkit train`` for every (architecture, seed, estimator) with the same epoch budget and
writes ``OUT/summary.json`` and ``OUT/summary.md`` after every run, so a partial sweep is usable.

    python experiments/compare_estimators.py [--out runs/compare] [--quick] [--plan mlp:1,conv:1]

Finished runs (their ``metrics.json``) are reused, so sweeps over disjoint ``--plan`` s can run
side by side and a broken-off sweep resumes where it stopped (an interrupted run is restarted).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from sbnkit.compare import mean_std

ESTIMATORS = ("psa", "st", "hard_st", "concrete", "reinforce", "adf")
PLAN = (("mlp", 1), ("conv", 1), ("mlp", 2), ("mlp", 3))  # mlp: 3 seeds, conv: 1 seed
ROOT = Path(__file__).resolve().parents[1]


def run_one(arch: str, seed: int, estimator: str, out: Path, extra: list[str]) -> dict:
    """Train one configuration (reusing a finished run) and return its metrics."""
    run_dir = out / f"{arch}-s{seed}-{estimator}"
    metrics = run_dir / "metrics.json"
    if not metrics.exists():
        cmd = [
            sys.executable,
            "-m",
            "sbnkit",
            "train",
            str(ROOT / "configs/compare" / f"{arch}.toml"),
            f"estimator.name={estimator}",
            f"train.seed={seed}",
            *extra,
            "--out",
            str(run_dir),
            "--overwrite",
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(metrics.read_text())


def _cell(rows: list[dict], key: str, scale: float = 100.0, digits: int = 2) -> str:
    """Mean (± standard deviation over seeds) of ``key`` in ``rows``."""
    return mean_std([r[key] for r in rows], scale, digits)


def summarise(results: list[dict]) -> str:
    """A markdown table: mean ± spread over seeds per architecture and estimator."""
    lines = [
        "| model | estimator | seeds | test acc (mode) | test acc (1 sample) | "
        "test acc (16-sample ens.) | test NLL (ens.) | s/epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch in ("mlp", "conv"):
        for est in ESTIMATORS:
            rows = [r for r in results if r["arch"] == arch and r["estimator"] == est]
            if not rows:
                continue

            per_epoch = statistics.fmean(r["train_seconds"] / r["epochs"] for r in rows)
            lines.append(
                f"| {arch} | {est} | {len(rows)} | {_cell(rows, 'test_acc_mode')} | "
                f"{_cell(rows, 'test_acc_sample')} | {_cell(rows, 'test_acc_ensemble')} | "
                f"{_cell(rows, 'test_nll_ensemble', 1.0, 3)} | {per_epoch:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/compare")
    parser.add_argument("--quick", action="store_true", help="1 epoch, mlp seed 1 only")
    parser.add_argument(
        "--summary-only", action="store_true", help="tabulate finished runs, train nothing"
    )
    parser.add_argument("--plan", help="ARCH:SEED,... to run (default: mlp seeds 1-3, conv seed 1)")
    args = parser.parse_args()
    extra = ["train.epochs=1"] if args.quick else []
    plan = PLAN[:1] if args.quick else PLAN
    if args.plan:
        plan = [
            (arch, int(seed)) for arch, seed in (item.split(":") for item in args.plan.split(","))
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for arch, seed in plan:
        for est in ESTIMATORS:
            if args.summary_only and not (args.out / f"{arch}-s{seed}-{est}/metrics.json").exists():
                continue
            metrics = run_one(arch, seed, est, args.out, extra)
            results.append({"arch": arch, "seed": seed, "estimator": est, **metrics})
            (args.out / "summary.json").write_text(json.dumps(results, indent=1))
            (args.out / "summary.md").write_text(summarise(results))
            print(f"{arch} seed {seed} {est}: test acc {metrics['test_acc_mode']:.4f}", flush=True)
    print(summarise(results))


if __name__ == "__main__":
    main()
