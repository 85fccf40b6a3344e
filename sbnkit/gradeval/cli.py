"""``sbnkit gradeval``: the gradient-accuracy study of Shekhovtsov, Yanush & Flach (2020, §5)
from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ArgumentParser, UserError
from .study import METHODS, PARAMS, PSA_ORDER_PREFIX, ExactLossMismatch, run, summary_table


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The ``sbnkit gradeval`` argument parser."""
    p = ArgumentParser(
        prog="sbnkit gradeval",
        description="Accuracy of SBN gradient estimators against the exact gradient "
        "(relative RMSE and cosine vs the number of averaged samples; Shekhovtsov, Yanush & "
        "Flach 2020, 'Path sample-analytic gradient estimators for stochastic binary networks', "
        "§5). Without --network, a 2-5-5-5-1 SBN is trained with REINFORCE on the toy set and "
        "studied at the given epochs; the checkpoints are kept in --out and reused by a later "
        "run with --overwrite.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--network",
        metavar="FILE",
        help="a network JSON (layers, X, y), e.g. the PSA authors' trained 2-5-5-5-1 network "
        "(psa_gradeval_5-5-5_chk100.json, from the paper's public code)",
    )
    src.add_argument(
        "--train-checkpoints",
        type=_int_list,
        default=[100, 2000],
        metavar="E1,E2",
        help="epochs of REINFORCE training to study (default 100,2000)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=20000,
        metavar="N",
        help="single-sample estimates per method (default 20000)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="M",
        help=f"methods (space or comma separated; default all): {', '.join(METHODS)}"
        f", or {PSA_ORDER_PREFIX}N for PSA with the order-N series kernel",
    )
    p.add_argument(
        "--out",
        default="runs/gradeval",
        metavar="DIR",
        help="output folder: new, empty, or an earlier gradeval run with --overwrite "
        "(default runs/gradeval)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier gradeval run in --out (reusing its REINFORCE checkpoints)",
    )
    p.add_argument("--seed", type=int, default=1, help="training and sampling seed (default 1)")
    p.add_argument(
        "--param",
        choices=PARAMS,
        default="01",
        help="weights that SGD trains and whose gradient errors are measured: 01 = the "
        "authors' 0/1-state weights W01 = 2W, b01 = b - W·1 of layers reading binary units "
        "(default, matches the paper's figures), pm1 = the ±1-state weights W, b",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="sampling processes, one torch thread each (default 2)",
    )
    return p


def cli_main(argv: list[str]) -> int:
    """Run ``sbnkit gradeval`` with ``argv``; print the summary table; return the exit code."""
    try:
        args = build_parser().parse_args(argv)
        methods = list(METHODS)
        if args.methods is not None:
            methods = [m for arg in args.methods for m in arg.split(",") if m]
        results = run(
            args.out,
            network=args.network,
            train_checkpoints=args.train_checkpoints,
            samples=args.samples,
            methods=methods,
            seed=args.seed,
            param=args.param,
            workers=args.workers,
            log=lambda msg: print(msg, file=sys.stderr),
            overwrite=args.overwrite,
            argv=["sbnkit", "gradeval", *argv],
        )
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except UserError as exc:
        print(f"sbnkit: error: {exc}", file=sys.stderr)
        return 2
    except ExactLossMismatch as exc:
        print(f"sbnkit: error: {exc}", file=sys.stderr)
        return 1
    print(summary_table(results))
    tr = results["training"]
    train = "none" if tr is None else "reused" if tr["reused"] else f"{tr['time_train_s']:.1f} s"
    where = Path(args.out).absolute()
    print(f"study {results['timings']['study_s']:.1f} s; training {train}; results in {where}")
    return 0
