"""The ``sbnkit`` command line (also ``python -m sbnkit``).

* ``sbnkit train CONFIG.toml [key=value ...] [--out DIR] [--overwrite]``: train a model into the
  run folder ``DIR`` (default ``runs/<config stem>``; see :mod:`sbnkit.runfolder`): ``run.json``
  (state and provenance), ``config.toml``, ``log.jsonl`` and ``log.csv`` (and TensorBoard events
  in ``tensorboard/``, :mod:`sbnkit.train.events`) while it runs, then ``model.pt`` and
  ``metrics.json``. An interrupted run keeps its finished epochs' log; ``sbnkit train --resume
  DIR`` continues it (under ``torchrun`` with as many processes as it was trained with);
* ``sbnkit evaluate CHECKPOINT [--mode mode|sample|ensemble] [--samples K]
  [--sample auto|units|weights|both]``: test accuracy and NLL of a saved run;
* ``sbnkit plot DIR... [--out DIR] [--overwrite]``: learning curves and the
  accuracy-vs-ensemble-size curve of training runs as PNGs (:mod:`sbnkit.plots`);
* ``sbnkit gradeval ...``: the gradient-accuracy experiment (:mod:`sbnkit.gradeval`);
* ``sbnkit summary CHECKPOINT_OR_CONFIG`` / ``sbnkit export CHECKPOINT OUT [--overwrite]``:
  the layer table and the bit-packed export (:mod:`sbnkit.deploy`).
* ``sbnkit --version``.

Bad input prints one line ``sbnkit: error: ...`` to stderr, writes nothing and exits with status
2; SIGTERM exits with status 143 after saying what was kept.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__, compare, lrsearch
from . import data as data_lib
from .devices import resolve_device
from .distributed import leave
from .errors import ArgumentParser, Stopped, StopSignal, UserError
from .inference import EVAL_MODES, SAMPLE_CHOICES, resolve_sample
from .lrsearch import LR_KEYS, check_search, lr_search, lr_values, with_lr
from .plots import plot_runs
from .provenance import provenance
from .runfolder import RunFolder, check_folder
from .train import (
    Config,
    Run,
    checkpoint,
    events,
    fit,
    load_config,
    load_trained,
    prepare,
    state,
)
from .train.metrics import evaluate, log_summary

__all__ = ["main"]

STATE_FILE = "checkpoint.pt"


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="sbnkit", description="Stochastic binary networks: train and evaluate."
    )
    parser.add_argument("--version", action="version", version=f"sbnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="train a model from a TOML config",
        description="Train a model from a TOML config.",
    )
    train.add_argument("config", nargs="?", help="the TOML config file (not with --resume)")
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
    train.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the unfinished run in DIR from its saved training state, bit for bit",
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
        "--device",
        default="auto",
        help="where to evaluate: auto (CUDA when present), cpu, cuda, cuda:N or mps",
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
    lr = sub.add_parser(
        "lr-search",
        help="choose the learning rate by short trial runs",
        description="Golden-section search of log10(lr) minimising the final training loss of "
        "short trial runs from the same init and seed, constant lr (the PSA paper's protocol). "
        "Writes lr_search.json, lr_search.png and best.toml (the config with the chosen lr).",
    )
    lr.add_argument("config", help="the TOML config file")
    lr.add_argument("overrides", nargs="*", metavar="key=value", help="override a config value")
    lr.add_argument("--out", metavar="DIR", help="output folder (default: runs/<stem>-lr)")
    lr.add_argument("--overwrite", action="store_true", help="replace an earlier search in DIR")
    lr.add_argument("--trials", type=int, default=10, help="trial runs (default 10)")
    lr.add_argument("--epochs", type=int, default=5, help="epochs per trial (default 5)")
    lr.add_argument("--low", type=float, default=-6.0, help="lowest log10 lr (default -6)")
    lr.add_argument("--high", type=float, default=0.0, help="highest log10 lr (default 0)")
    lr.add_argument(
        "--keys",
        default=",".join(LR_KEYS),
        help="learning-rate keys moved together, ratios kept (default: both optimizers)",
    )
    lr.set_defaults(func=_lr_search)
    cmp = sub.add_parser(
        "compare",
        help="train configs over seeds and tabulate mean ± std",
        description="Train every CONFIG with seeds 1..S (each run a sub-folder of DIR), then "
        "write summary.md (mean ± std over seeds), summary.json and compare.png.",
    )
    cmp.add_argument("configs", nargs="+", metavar="CONFIG", help="TOML config files")
    cmp.add_argument("--seeds", type=int, default=3, help="seeds per config (default 3)")
    cmp.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    cmp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="key=value",
        help="override a value in every config (repeatable)",
    )
    cmp.add_argument("--out", metavar="DIR", default="runs/compare", help="(default runs/compare)")
    cmp.add_argument("--overwrite", action="store_true", help="replace an earlier comparison")
    cmp.set_defaults(func=_compare)
    sub.add_parser(
        "gradeval", help="gradient-accuracy experiment (arguments are forwarded)", add_help=False
    )
    _add_deploy_commands(sub)
    return parser


def _add_deploy_commands(sub) -> None:
    """The ``summary`` and ``export`` subcommands (:mod:`sbnkit.deploy`)."""
    summ = sub.add_parser(
        "summary",
        help="per-layer table: shapes, parameters by precision, memory, MACs",
        description="Per-layer table of a checkpoint's or a config's model.",
    )
    summ.add_argument("model", metavar="CHECKPOINT_OR_CONFIG", help="a model.pt or a TOML config")
    summ.set_defaults(func=_summary)
    exp = sub.add_parser(
        "export",
        help="write the bit-packed mode network of a checkpoint (.npz)",
        description="Fold and bit-pack a checkpoint's mode network into a safe .npz file.",
    )
    exp.add_argument("checkpoint", help="a model.pt written by `sbnkit train`")
    exp.add_argument("out", metavar="OUT", help="the .npz file to write")
    exp.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    exp.set_defaults(func=_export)


def _summary(args: argparse.Namespace) -> int:
    from . import deploy

    model, input_shape = deploy.source.load_model(args.model)
    print(deploy.summary(model, input_shape).table())
    return 0


def _export(args: argparse.Namespace) -> int:
    from . import deploy

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist; create it or pass another OUT")
    model, input_shape = deploy.source.load_model(args.checkpoint, allow_config=False)
    deploy.export(model, out, overwrite=args.overwrite, input_shape=input_shape)
    size, ckpt = out.stat().st_size, Path(args.checkpoint).stat().st_size
    print(f"wrote {out}: {size:,} B ({ckpt / size:.1f}x smaller than the checkpoint, {ckpt:,} B)")
    return 0


def _echo(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def _train_setup(args: argparse.Namespace, main: bool) -> tuple[Config, Path, dict | None]:
    """``(config, run folder, saved training state or None)``, checked before any compute (the
    folder by the ``main`` process only: the others never write)."""
    if args.resume is None:
        if args.config is None:
            raise UserError("pass the TOML config to train, or --resume DIR")
        cfg = load_config(args.config, args.overrides)
        events.wanted(cfg.train.tensorboard)
        out = args.out if args.out is not None else Path("runs") / Path(args.config).stem
        if not main:
            return cfg, Path(out), None
        folder = check_folder(out, "train", overwrite=args.overwrite, can_resume=True)
        return cfg, folder, None
    if args.config is not None or args.overrides or args.out is not None or args.overwrite:
        raise UserError(
            "--resume DIR continues a run with its own config.toml: pass no config, overrides, "
            "--out or --overwrite with it"
        )
    folder = Path(args.resume)
    if main:
        folder = check_folder(args.resume, "train", resume=True, option="--resume")
    if not (folder / STATE_FILE).is_file():
        raise UserError(
            f"{folder} holds no saved training state ({STATE_FILE}): it stopped before its "
            f"first checkpoint; start it again with --overwrite"
        )
    saved = state.load(folder / STATE_FILE)
    cfg = load_config(folder / "config.toml")
    events.wanted(cfg.train.tensorboard)
    return cfg, folder, saved


@contextlib.contextmanager
def _stop_on_signals(stop: StopSignal) -> Iterator[None]:
    """While training, SIGTERM and Ctrl-C ask the loop to save and stop (a second one stops
    at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request(signum: int, frame: object) -> None:
        if stop:
            raise Stopped(signum)
        stop.signum = signum

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _train(args: argparse.Namespace) -> int:
    cfg, out, saved = _train_setup(args, main=os.environ.get("RANK", "0") == "0")
    run = prepare(cfg)
    try:
        if saved is not None:
            state.check_world_size(saved, run.cluster.world_size)
        return _train_run(args, cfg, out, saved, run)
    finally:
        leave(run.cluster)


def _train_run(
    args: argparse.Namespace, cfg: Config, out: Path, saved: dict | None, run: Run
) -> int:
    stop = StopSignal()
    if not run.cluster.main:
        with _stop_on_signals(stop):
            fit(run, stop=stop, resume=saved)
        return 0
    record = provenance(args.argv, run.data_files)
    with RunFolder(
        out,
        "train",
        overwrite=args.overwrite,
        resume=saved is not None,
        provenance=record,
        report=_echo,
    ) as rf:
        if saved is None:
            rf.write_text("config.toml", cfg.to_toml(), keep=True)
        else:
            logged = saved["position"].logged  # the logs may hold epochs the state has not
            for name, keep in (("log.jsonl", logged), ("log.csv", logged + 1)):
                if name in rf.written:
                    lines = (rf.path / name).read_text(encoding="utf-8").splitlines(keepends=True)
                    rf.write_text(name, "".join(lines[:keep]), keep=True)

        tensorboard = _event_log(rf, cfg, saved)

        def log_epoch(entry: dict) -> None:
            n = entry["epoch"]
            rf.append_line("log.jsonl", json.dumps(entry))
            rf.append_row("log.csv", entry, progress=_done(n))
            if tensorboard is not None:
                tensorboard.add(entry)

        def save_state(at: state.LoopPosition, write: Callable[[Path], None]) -> None:
            with rf.target(STATE_FILE, keep=True) as tmp:
                write(tmp)
            where = f"epoch {at.epoch} step {at.step}" if at.step else f"epoch {at.logged}'s end"
            rf.set_progress(
                f"{_done(at.logged)}; training state at {where} in {STATE_FILE}: continue with "
                f"`sbnkit train --resume {rf.path}`"
            )

        with _stop_on_signals(stop), tensorboard or contextlib.nullcontext():
            metrics = fit(
                run, on_epoch=log_epoch, echo=_echo, save_state=save_state, stop=stop, resume=saved
            )
        log = (rf.path / "log.jsonl").read_text(encoding="utf-8").splitlines()
        metrics.update(log_summary([json.loads(line) for line in log]))
        with rf.target("model.pt") as tmp:
            checkpoint.save(tmp, run.model, cfg.to_dict(), metrics)
        rf.write_text("metrics.json", json.dumps(metrics, indent=2) + "\n")
        if STATE_FILE in rf.written:
            rf.remove(STATE_FILE)
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
    if "best_val_epoch" in metrics:
        print(
            f"best validation epoch {metrics['best_val_epoch']}: its test accuracy (mode "
            f"network) {metrics['test_acc_mode_at_best_val']:.4f}"
        )
    print(f"{metrics['epochs']} epochs in {metrics['seconds']:.0f} s; run saved to {rf.path}")
    return 0


def _event_log(rf: RunFolder, cfg: Config, saved: dict | None) -> events.EventLog | None:
    """The TensorBoard event log of the run in ``rf`` (``None`` when not wanted). A resumed run
    adds a file that hides the epochs after its checkpoint; when the interrupted run wrote no
    events, the logged epochs are written first."""
    if not events.wanted(cfg.train.tensorboard):
        return None
    earlier = events.FOLDER in rf.written
    first = 1 if saved is None else saved["position"].logged + 1
    log = events.EventLog(rf.folder(events.FOLDER, keep=True), first)
    if saved is not None and not earlier and "log.jsonl" in rf.written:
        for line in (rf.path / "log.jsonl").read_text(encoding="utf-8").splitlines():
            log.add(json.loads(line))
    return log


def _done(epochs: int) -> str:
    return f"{epochs} finished epoch{'s' * (epochs != 1)} in log.jsonl and log.csv"


def _evaluate(args: argparse.Namespace) -> int:
    if args.samples is not None and args.samples < 1:
        raise UserError(f"--samples must be a positive integer, got {args.samples}")
    device = resolve_device(args.device)
    model, cfg = load_trained(args.checkpoint)
    torch.set_num_threads(cfg.train.threads)
    model = model.to(device)
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


def _lr_search(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out = args.out if args.out is not None else Path("runs") / f"{Path(args.config).stem}-lr"
    check_folder(out, "lr-search", overwrite=args.overwrite)
    keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    with_lr(cfg, keys, 0.0)  # checks the keys before any compute
    check_search(args.low, args.high, args.trials, args.epochs)
    record = provenance(args.argv)
    with RunFolder(
        out, "lr-search", overwrite=args.overwrite, provenance=record, report=_echo
    ) as rf:
        trials = lr_search(
            cfg,
            keys=keys,
            low=args.low,
            high=args.high,
            trials=args.trials,
            epochs=args.epochs,
            log=_echo,
        )
        best = min(trials, key=lambda t: t.loss)
        if best.loss == float("inf"):
            raise UserError(
                f"every trial diverged in [1e{args.low:g}, 1e{args.high:g}]; lower --low/--high "
                "or set train.grad_clip"
            )
        chosen = with_lr(cfg, keys, best.log10_lr)
        chosen.train.lr_schedule = cfg.train.lr_schedule
        rf.write_text("best.toml", chosen.to_toml())
        summary = {
            "trials": [vars(t) for t in trials],
            "best_log10_lr": best.log10_lr,
            "chosen": lr_values(chosen, keys),
            "epochs_per_trial": args.epochs,
        }
        rf.write_text("lr_search.json", json.dumps(summary, indent=1, default=str) + "\n")
        with rf.target("lr_search.png") as tmp:
            lrsearch.plot(trials, tmp)
    lrs = ", ".join(f"{k} = {v:.4g}" for k, v in summary["chosen"].items())
    print(f"chosen: {lrs} (final training loss {best.loss:.4f}); config in {rf.path}/best.toml")
    return 0


def _compare(args: argparse.Namespace) -> int:
    runs = compare.plan(args.configs, args.seeds)
    for path in {spec.config for spec in runs}:
        load_config(path, args.set)  # every config and override is checked before any compute
    if args.jobs < 1:
        raise UserError(f"--jobs must be a positive integer, got {args.jobs}")
    check_folder(args.out, "compare", overwrite=args.overwrite)
    record = provenance(args.argv)
    with RunFolder(
        args.out, "compare", overwrite=args.overwrite, provenance=record, report=_echo
    ) as rf:

        def done(results: dict[str, dict]) -> None:
            rf.write_text("runs.json", json.dumps(sorted(results)) + "\n", keep=True)
            rf.set_progress(f"{len(results)} of {len(runs)} runs finished (runs.json)")

        metrics = compare.train_all(
            runs,
            rf.path,
            jobs=args.jobs,
            overrides=args.set,
            overwrite=args.overwrite,
            log=_echo,
            on_done=done,
        )
        table, by_config = compare.summarise(runs, metrics)
        rf.write_text("summary.md", table)
        rf.write_text("summary.json", json.dumps(by_config, indent=1) + "\n")
        with rf.target("compare.png") as tmp:
            compare.plot(by_config, tmp)
    print(table, end="")
    print(f"{len(runs)} runs in {rf.path}")
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


def _terminate(signum: int, frame: object) -> None:
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status.

    SIGTERM exits with status 143 after the run folder kept its finished work (and said so).
    Raises nothing for bad input (:class:`~sbnkit.errors.UserError` and ``OSError`` become one
    line and status 2); a programming error propagates with its traceback.
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
    except Stopped as exc:
        print(f"sbnkit: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    # one write call, so that the lines of several processes (torchrun ranks) never interleave
    sys.stderr.write(f"sbnkit: error: {message}\n")
    sys.stderr.flush()
    return 2
