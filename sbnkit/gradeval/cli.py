"""``sbnkit gradeval``: the gradient-accuracy study from the command line, on the user's model
(``RUN_OR_CONFIG``) or as the reproduction of Shekhovtsov, Yanush & Flach (2020, §5) on the
toy network."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ArgumentParser, UserError
from .coords import PARAMS
from .methods import METHODS, PSA_ORDER_PREFIX
from .paper import ExactLossMismatch
from .reference import REFERENCE_CHOICES
from .report import summary_table
from .study import SAMPLED_DTYPES, StudyConfig, run, run_model

__all__ = ["build_parser", "cli_main"]

TOY_SAMPLES = 20000
MODEL_SAMPLES = 1024


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
        description="Accuracy of SBN gradient estimators: per layer, relative RMSE and cosine "
        "against a reference gradient vs the number of averaged samples, bias and variance, "
        "and time per sample. With RUN_OR_CONFIG: on your model (a run folder, model.pt or "
        ".toml config) and a fixed batch of its training data; the reference is the exact "
        "gradient when enumeration is feasible, else a many-sample ARM (or REINFORCE) mean, "
        "whose own noise is removed from the errors. Without it: the study of Shekhovtsov, "
        "Yanush & Flach 2020 ('Path sample-analytic gradient estimators for stochastic binary "
        "networks', §5) on a 2-5-5-5-1 toy SBN (--network FILE, or REINFORCE-trained at "
        "--train-checkpoints epochs, kept in --out and reused by a later run with --overwrite).",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "source",
        nargs="?",
        metavar="RUN_OR_CONFIG",
        help="your model: a training run folder, its model.pt, or a TOML config (untrained)",
    )
    src.add_argument(
        "--network",
        metavar="FILE",
        help="a network JSON (layers, X, y), e.g. the PSA authors' trained 2-5-5-5-1 network "
        "(psa_gradeval_5-5-5_chk100.json, from the paper's public code)",
    )
    src.add_argument(
        "--train-checkpoints",
        type=_int_list,
        default=None,
        metavar="E1,E2",
        help="epochs of REINFORCE training of the toy network to study (default 100,2000)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        metavar="N",
        help=f"single-sample estimates per method (default {TOY_SAMPLES} on the toy network, "
        f"{MODEL_SAMPLES} on your model; M = 1, 2, 4, … up to N there)",
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
        "--examples",
        type=int,
        default=16,
        metavar="N",
        help="training examples of your model's batch, drawn with --seed (default 16)",
    )
    p.add_argument(
        "--reference",
        choices=REFERENCE_CHOICES,
        default="auto",
        help="reference gradient: auto (exact when at most --max-states states per example, "
        "else arm, or reinforce with a baseline for non-logistic noise), exact, arm, reinforce",
    )
    p.add_argument(
        "--reference-samples",
        type=int,
        default=50000,
        metavar="N",
        help="samples of a sampled reference (default 50000; its standard error falls as "
        "1/sqrt(N) and is reported)",
    )
    p.add_argument(
        "--max-states",
        type=int,
        default=2**20,
        metavar="N",
        help="largest per-stage state table of exact enumeration (default 2^20)",
    )
    p.add_argument(
        "--sampled-dtype",
        choices=SAMPLED_DTYPES,
        default=None,
        help="dtype of the study when the reference is sampled (default float32 on your model, "
        "several times faster for conv layers; float64 on the toy network)",
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
        default=None,
        help="weights whose gradient errors are measured (and, on the toy network, that SGD "
        "trains): 01 = the authors' 0/1-state weights W01 = 2W, b01 = b - W·1 of layers reading "
        "binary units (the toy network's default, matches the paper's figures), pm1 = the "
        "±1-state weights W, b (your model's, the only choice there)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="sampling processes, one torch thread each (default 2)",
    )
    return p


def cli_main(argv: list[str]) -> int:
    """Run ``sbnkit gradeval`` with ``argv``; print the summary; return the exit code (2 for a
    :class:`UserError`, 1 for an exact-loss mismatch with a network file)."""
    try:
        args = build_parser().parse_args(argv)
        methods = tuple(METHODS)
        if args.methods is not None:
            methods = tuple(m for arg in args.methods for m in arg.split(",") if m)
        mine = args.source is not None
        samples = args.samples
        if samples is None:
            samples = MODEL_SAMPLES if mine else TOY_SAMPLES
        config = StudyConfig(
            samples=samples,
            methods=methods,
            seed=args.seed,
            param=args.param or ("pm1" if mine else "01"),
            workers=args.workers,
            grid="pow2" if mine else "paper",
            reference=args.reference,
            reference_samples=args.reference_samples,
            max_states=args.max_states,
            sampled_dtype=args.sampled_dtype or ("float32" if mine else "float64"),
        )
        log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
        full_argv = ["sbnkit", "gradeval", *argv]
        if mine:
            results = run_model(
                args.source,
                args.out,
                config,
                examples=args.examples,
                log=log,
                overwrite=args.overwrite,
                argv=full_argv,
            )
        else:
            results = run(
                args.out,
                config,
                network=args.network,
                train_checkpoints=args.train_checkpoints or [100, 2000],
                log=log,
                overwrite=args.overwrite,
                argv=full_argv,
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
    tr = results.training
    train = "none" if tr is None else "reused" if tr.reused else f"{tr.time_train_s:.1f} s"
    where = Path(args.out).absolute()
    print(f"study {results.timings['study_s']:.1f} s; training {train}; results in {where}")
    return 0
