"""The ``sbnkit`` command line (also ``python -m sbnkit``).

* ``sbnkit train CONFIG.toml [key=value ...] [--out DIR] [--overwrite]``: train a model into the
  run folder ``DIR`` (default ``runs/<config stem>``; see :mod:`sbnkit.runfolder`): ``run.json``
  (state and provenance), ``config.toml``, ``log.jsonl`` and ``log.csv`` while it runs, then
  ``model.pt`` and ``metrics.json``. An interrupted run keeps its finished epochs' log;
* ``sbnkit evaluate CHECKPOINT [--mode mode|sample|ensemble] [--samples K]
  [--sample auto|units|weights|both]``: test accuracy and NLL of a saved run;
* ``sbnkit plot DIR... [--out DIR] [--overwrite]``: learning curves and the
  accuracy-vs-ensemble-size curve of training runs as PNGs (:mod:`sbnkit.plots`);
* ``sbnkit gradeval ...``: the gradient-accuracy experiment (:mod:`sbnkit.gradeval`);
* ``sbnkit --version``.

Bad input prints one line ``sbnkit: error: ...`` to stderr, writes nothing and exits with status
2; SIGTERM exits with status 143 after saying what was kept.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import threading
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__
from . import data as data_lib
from .errors import UserError
from .inference import EVAL_MODES, SAMPLE_CHOICES, resolve_sample
from .plots import plot_runs
from .provenance import provenance
from .runfolder import RunFolder, check_folder
from .train import build_model, checkpoint, config_from_dict, fit, load_config, prepare
from .train.loop import seed_everything
from .train.metrics import evaluate


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one-line :class:`UserError` s."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message}; see `{self.prog} --help`")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sbnkit", description="Stochastic binary networks: train and evaluate.")
    parser.add_argument("--version", action="version", version=f"sbnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="train a model from a TOML config",
        description="Train a model from a TOML config.",
    )
    train.add_argument("config", help="the TOML config file")
    train.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override a config value, e.g. train.epochs=5 model.norm=affine",
    )
    train.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config stem>)")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in the run folder (it comes back if this run fails early)",
    )
    train.set_defaults(func=_train)
    ev = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint on the test set",
        description="Evaluate a checkpoint (model.pt) on its test split.",
    )
    ev.add_argument("checkpoint", help="a model.pt written by `sbnkit train`")
    ev.add_argument(
        "--mode",
        default="mode",
        choices=EVAL_MODES,
        help="mode network, one sample, or the ensemble of --samples samples",
    )
    ev.add_argument(
        "--samples",
        type=int,
        metavar="K",
        help="ensemble size (default: eval.samples of the run's config)",
    )
    ev.add_argument(
        "--sample",
        choices=SAMPLE_CHOICES,
        help="what a sample draws: units, weights or both; auto = what training drew "
        "(default: eval.sample of the run's config)",
    )
    ev.set_defaults(func=_evaluate)
    plot = sub.add_parser(
        "plot",
        help="draw learning curves and the ensemble-size curve of training runs",
        description="Draw learning curves (loss, accuracy, lr) of training runs, overlaid, and "
        "their accuracy-vs-ensemble-size curve into PNGs.",
    )
    plot.add_argument("dirs", nargs="+", metavar="DIR", help="run folders of `sbnkit train`")
    plot.add_argument(
        "--out", metavar="DIR", help="folder for the PNGs (default DIR/plots for one run)"
    )
    plot.add_argument(
        "--overwrite", action="store_true", help="replace an earlier plot in the --out folder"
    )
    plot.set_defaults(func=_plot)
    sub.add_parser(
        "gradeval", help="gradient-accuracy experiment (arguments are forwarded)", add_help=False
    )
    return parser


def _echo(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out = args.out if args.out is not None else Path("runs") / Path(args.config).stem
    check_folder(out, "train", overwrite=args.overwrite)
    run = prepare(cfg)
    record = provenance(args.argv, run.data_files)
    with RunFolder(out, "train", overwrite=args.overwrite, provenance=record, report=_echo) as rf:
        rf.write_text("config.toml", cfg.to_toml(), keep=True)

        def log_epoch(entry: dict) -> None:
            n = entry["epoch"]
            done = f"{n} finished epoch{'s' * (n > 1)} in log.jsonl and log.csv"
            rf.append_line("log.jsonl", json.dumps(entry))
            rf.append_row("log.csv", entry, progress=done)

        metrics = fit(run, on_epoch=log_epoch, echo=_echo)
        with rf.target("model.pt") as tmp:
            checkpoint.save(tmp, run.model, cfg.to_dict(), metrics)
        rf.write_text("metrics.json", json.dumps(metrics, indent=2) + "\n")
    k = metrics["ensemble_samples"]
    for label, key in (
        ("mode network", "mode"),
        ("one sample", "sample"),
        (f"ensemble K={k}", "ensemble"),
    ):
        print(
            f"test accuracy ({label}): {metrics[f'test_acc_{key}']:.4f}  "
            f"NLL {metrics[f'test_nll_{key}']:.4f}"
        )
    print(f"{metrics['epochs']} epochs in {metrics['seconds']:.0f} s; run saved to {rf.path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.samples is not None and args.samples < 1:
        raise UserError(f"--samples must be a positive integer, got {args.samples}")
    saved = checkpoint.load(args.checkpoint)
    cfg = config_from_dict(saved["config"])
    torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    model = build_model(cfg)
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError:
        raise UserError(
            f"the weights in {args.checkpoint} do not fit the model of its config; "
            "the checkpoint is damaged or was written by another sbnkit version"
        ) from None
    d = cfg.data
    x, y = data_lib.load(d.name, "test", d.root or None, d.standardize)
    samples = args.samples or cfg.eval.samples
    sample = args.sample or cfg.eval.sample
    result = evaluate(model, x, y, args.mode, samples, cfg.eval.batch_size, sample)
    drawn = f", sampling {resolve_sample(model, sample)}"
    label = {"mode": "mode network", "sample": f"one sample{drawn}"}.get(
        args.mode, f"ensemble K={samples}{drawn}"
    )
    print(f"test accuracy ({label}): {result['acc']:.4f}  NLL {result['nll']:.4f}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    for path in plot_runs(args.dirs, args.out, overwrite=args.overwrite, argv=args.argv):
        print(path)
    return 0


def _gradeval(argv: list[str]) -> int:
    try:
        module = importlib.import_module("sbnkit.gradeval")
    except ModuleNotFoundError as exc:
        if exc.name != "sbnkit.gradeval":
            raise
        raise UserError(
            "the gradeval command is not available in this installation "
            "(module sbnkit.gradeval is missing); reinstall sbnkit"
        ) from None
    return int(module.cli_main(argv))


def _os_message(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    where = f" {exc.filename}" if exc.filename else ""
    return f"cannot access{where}: {what}"


class _Terminated(BaseException):
    """SIGTERM arrived: unwind (run folders keep finished work), then exit 128 + 15."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status.

    SIGTERM exits with status 143 after the run folder kept its finished work (and said so).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str]) -> int:
    try:
        if argv and argv[0] == "gradeval":
            return _gradeval(argv[1:])
        args = _parser().parse_args(argv)
        args.argv = ["sbnkit", *argv]
        return args.func(args)
    except UserError as exc:
        message = " ".join(str(exc).split())
    except OSError as exc:
        message = " ".join(_os_message(exc).split())
    except KeyboardInterrupt:
        print("sbnkit: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except _Terminated:
        print("sbnkit: stopped by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    print(f"sbnkit: error: {message}", file=sys.stderr)
    return 2
