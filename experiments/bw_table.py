"""The binary-weight comparison table from an ``sbnkit compare`` folder.

``sbnkit compare`` tabulates the final accuracies; this adds the test accuracy at the epoch of
best validation accuracy (model selection that never looks at the test set), the final test NLL
and ECE of the mode network, and seconds per training epoch. Mean ± sample standard deviation
over the seeds of each config (sub-folders ``<config>-s<seed>`` holding ``metrics.json``).

    python experiments/bw_table.py runs/bw/compare
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from sbnkit.compare import mean_std

COLUMNS = (
    ("test_acc_mode", "final test acc (mode)", 100.0, 2),
    ("test_acc_mode_at_best_val", "test acc at best-val epoch", 100.0, 2),
    ("test_nll_mode", "final test NLL", 1.0, 3),
    ("test_ece_mode", "final test ECE", 1.0, 4),
)


def collect(root: Path) -> dict[str, list[dict]]:
    """``{config: [metrics of each seed]}`` of the finished runs under ``root``."""
    out: dict[str, list[dict]] = {}
    for folder in sorted(root.iterdir()):
        match = re.fullmatch(r"(.+)-s(\d+)", folder.name)
        if match and (folder / "metrics.json").is_file():
            metrics = json.loads((folder / "metrics.json").read_text())
            out.setdefault(match.group(1), []).append(metrics)
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    args = ap.parse_args(argv)
    runs = collect(args.root)
    head = " | ".join(title for _, title, _, _ in COLUMNS)
    print(f"| config | seeds | {head} | s/epoch (loaded machine) |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for config, rows in runs.items():
        cells = [mean_std([r[k] for r in rows], scale, digits) for k, _, scale, digits in COLUMNS]
        seconds = statistics.fmean(r["train_seconds"] / r["epochs"] for r in rows)
        print(f"| {config} | {len(rows)} | {' | '.join(cells)} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
