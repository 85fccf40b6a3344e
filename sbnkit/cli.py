"""The ``sbnkit`` command line (also ``python -m sbnkit``).

* ``sbnkit train CONFIG.toml [key=value ...] [--out DIR]``: train a model; the run (``log.jsonl``,
  ``metrics.json``, ``model.pt``, ``config.toml``) is built in a hidden sibling folder and renamed
  to ``DIR`` (default ``runs/<config stem>``) only when it succeeded; an earlier run in ``DIR`` is
  replaced, any other existing folder is refused;
* ``sbnkit evaluate CHECKPOINT [--mode mode|sample|ensemble] [--samples K]``: test accuracy and
  NLL of a saved run;
* ``sbnkit gradeval ...``: the gradient-accuracy experiment (:mod:`sbnkit.gradeval`);
* ``sbnkit summary CHECKPOINT_OR_CONFIG`` / ``sbnkit export CHECKPOINT OUT [--overwrite]``:
  the layer table and the bit-packed export (:mod:`sbnkit.deploy`).

Bad input prints one line ``sbnkit: error: ...`` to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from . import data as data_lib
from .errors import UserError
from .inference import EVAL_MODES
from .train import build_model, checkpoint, config_from_dict, fit, load_config, prepare
from .train.loop import seed_everything
from .train.metrics import evaluate


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one-line :class:`UserError` s."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message}; see `{self.prog} --help`")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sbnkit", description="Stochastic binary networks: train and evaluate.")
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
    ev.set_defaults(func=_evaluate)
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

    print(deploy.summary(deploy.source.load_model(args.model)).table())
    return 0


def _export(args: argparse.Namespace) -> int:
    from . import deploy

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist; create it or pass another OUT")
    model = deploy.source.load_model(args.checkpoint, allow_config=False)
    deploy.export(model, out, overwrite=True)
    size, ckpt = out.stat().st_size, Path(args.checkpoint).stat().st_size
    print(f"wrote {out}: {size:,} B ({ckpt / size:.1f}x smaller than the checkpoint, {ckpt:,} B)")
    return 0


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary sibling folder of ``out`` that becomes ``out`` on success, else vanishes."""
    missing = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old, out)
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in missing:
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


RUN_FILES = frozenset({"config.toml", "log.jsonl", "metrics.json", "model.pt"})


def _check_out(out: Path) -> Path:
    """``out`` made absolute; a :class:`UserError` unless it is new, empty or an earlier run."""
    out = out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder; pass another --out")
    if out.is_dir() and not {p.name for p in out.iterdir()} <= RUN_FILES:
        raise UserError(
            f"output folder {out} exists and is not an sbnkit run; remove it or pass another --out"
        )
    return out


def _echo(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out = _check_out(Path(args.out) if args.out else Path("runs") / Path(args.config).stem)
    run = prepare(cfg)
    with _staging(out) as tmp:
        (tmp / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
        metrics = fit(run, tmp, echo=_echo)
        checkpoint.save(tmp / "model.pt", run.model, cfg.to_dict(), metrics)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    k = metrics["ensemble_samples"]
    print(
        f"test accuracy (mode network): {metrics['test_acc']:.4f}  "
        f"NLL {metrics['test_nll_mode']:.4f}"
    )
    print(
        f"test accuracy (one sample):   {metrics['test_acc_sample']:.4f}  "
        f"NLL {metrics['test_nll_sample']:.4f}"
    )
    print(
        f"test accuracy (ensemble K={k}): {metrics['test_acc_ensemble']:.4f}  "
        f"NLL {metrics['test_nll']:.4f}"
    )
    print(f"{metrics['epochs']} epochs in {metrics['seconds']:.0f} s; run saved to {out}")
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
    result = evaluate(model, x, y, args.mode, samples, cfg.eval.batch_size)
    label = {"mode": "mode network", "sample": "one sample"}.get(args.mode, f"ensemble K={samples}")
    print(f"test accuracy ({label}): {result['acc']:.4f}  NLL {result['nll']:.4f}")
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
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status.

    SIGTERM exits with status 143 after removing a half-written run folder.
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
        return args.func(args)
    except UserError as exc:
        message = " ".join(str(exc).split())
    except OSError as exc:
        message = " ".join(_os_message(exc).split())
    except KeyboardInterrupt:
        print("sbnkit: interrupted", file=sys.stderr)
        return 130
    print(f"sbnkit: error: {message}", file=sys.stderr)
    return 2
