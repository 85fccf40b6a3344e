"""Learning-rate search on the validation split for the binary-weight recipes.

``sbnkit lr-search`` scores a trial by its final *training* loss (the PSA protocol). This script
keeps its golden-section search over ``log10(lr)`` (:func:`sbnkit.lrsearch.golden_section`) and
its trials (same seed and initialisation, constant lr, :func:`sbnkit.lrsearch.with_lr`), but
scores a trial by the validation error of the mode network after the last trial epoch (ties and
NaN: validation NLL breaks ties; a diverged trial scores 1.0). The test set is never looked at.
The final test evaluation of :func:`sbnkit.train.fit` (64 sampled passes) is skipped in trials.

    python experiments/bw_lr_search.py configs/fmnist_md.toml --span 2 --trials 6 --epochs 2 \\
        [key=value ...] --out runs/bw/lr/fmnist_md

The bracket is ``log10(recipe lr) ± span``. Writes ``OUT/lr_search.json`` (every trial, the
bracket, the chosen lr) and prints one line per trial.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any
from unittest import mock

from sbnkit.errors import UserError
from sbnkit.lrsearch import golden_section, lr_values, with_lr
from sbnkit.train import Config, fit, load_config, prepare
from sbnkit.train import loop as train_loop

KEY = "optim.latent.lr"


def trial(cfg: Config, log10_lr: float) -> dict[str, float]:
    """Train one trial of ``cfg`` at ``10**log10_lr``; its last epoch's
    validation accuracy / NLL and training loss (``val_err = 1.0`` if it diverged)."""
    run = prepare(with_lr(cfg, [KEY], log10_lr))
    records: list[dict[str, Any]] = []
    tic = time.perf_counter()
    try:
        with mock.patch.object(train_loop, "final_metrics", lambda *a, **k: {}):
            fit(run, on_epoch=records.append, progress=False)
    except UserError as exc:
        if "diverged" not in str(exc):
            raise
        return {"log10_lr": log10_lr, "val_err": 1.0, "val_nll": math.inf, "train_loss": math.inf}
    last = records[-1]
    return {
        "log10_lr": log10_lr,
        "val_err": 1.0 - last["val_acc_mode"],
        "val_nll": last["val_nll_mode"],
        "train_loss": last["train_loss"],
        "seconds": round(time.perf_counter() - tic, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the search for one config and write ``OUT/lr_search.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    ap.add_argument("--span", type=float, default=2.0, help="decades either side of the recipe lr")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    cfg = load_config(args.config, args.overrides)
    if cfg.data.val_fraction <= 0:
        raise SystemExit("the config has no validation split (data.val_fraction = 0)")
    cfg.train.epochs = args.epochs
    centre = math.log10(lr_values(cfg, [KEY])[KEY])
    low, high = centre - args.span, centre + args.span
    trials: list[dict[str, float]] = []

    def score(x: float) -> float:
        t = trial(cfg, x)
        trials.append(t)
        print(
            f"lr 10^{x:.3f} = {10**x:.3g}: val err {t['val_err']:.4f} "
            f"val nll {t['val_nll']:.4f} train loss {t['train_loss']:.4f}",
            flush=True,
        )
        # lexicographic (val error, val NLL) as one float: NLL only breaks ties
        return t["val_err"] + 1e-6 * min(t["val_nll"], 1e3)

    golden_section(score, low, high, args.trials)
    best = min(trials, key=lambda t: (t["val_err"], t["val_nll"]))
    summary = {
        "config": args.config,
        "overrides": args.overrides,
        "key": KEY,
        "bracket_log10": [low, high],
        "trials": trials,
        "epochs_per_trial": args.epochs,
        "schedule": "constant",
        "score": "validation error of the mode network after the last trial epoch",
        "chosen_lr": 10 ** best["log10_lr"],
        "chosen_log10_lr": best["log10_lr"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lr_search.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"chosen lr {summary['chosen_lr']:.3g} (val err {best['val_err']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
