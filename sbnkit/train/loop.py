"""The training loop: build everything from a :class:`Config`, train, log, evaluate.

:func:`prepare` seeds, loads the data and builds the model, estimator and optimizers without
writing anything, so every bad input fails before a run folder exists. :func:`fit` trains,
hands one record per finished epoch to its ``on_epoch`` callback (the CLI appends it to
``log.jsonl``), and returns the final metrics.

Metric names say which network they measure: ``*_mode`` is the deterministic mode network,
``*_sample`` one random network, ``*_ensemble`` the average of ``eval.samples`` random networks.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import data as data_lib
from .. import estimators
from ..errors import UserError
from ..estimators import Estimator
from ..models import MODELS, data_init_
from ..network import SBN
from ..weights import clip_latents_, latent_parameters, real_parameters
from .config import Config, OptimizerConfig
from .metrics import evaluate, final_metrics

Tensors = tuple[torch.Tensor, torch.Tensor]


def build_model(cfg: Config) -> SBN:
    """The model of ``cfg.model`` for the shapes of ``cfg.data`` (not yet data-initialised)."""
    m, ds = cfg.model, data_lib.get(cfg.data.name)
    options = dict(
        norm=m.norm,
        binary_weights=m.binary_weights,
        binary_first=m.binary_first,
        binary_head=m.binary_head,
        noise=m.noise,
        noise_scale=m.noise_scale,
        weight_noise=m.weight_noise,
        weight_noise_scale=m.weight_noise_scale,
        weight_mode=m.weight_mode,
        latent_clip=m.latent_clip or None,
    )
    if m.name == "mlp":
        n_in = math.prod(ds.input_shape)
        return MODELS["mlp"](
            [n_in, *m.hidden, ds.num_classes], input_shape=ds.input_shape, **options
        )
    channels, height, width = ds.input_shape
    if height != width:
        raise UserError(f"model {m.name!r} needs square images, {ds.name} has {height}×{width}")
    if m.name == "convnet":
        return MODELS["convnet"](channels, ds.num_classes, m.channels, height, **options)
    return MODELS[m.name](channels, ds.num_classes, height, **options)


def _optimizer(params: list[nn.Parameter], o: OptimizerConfig) -> torch.optim.Optimizer:
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
    )


def build_optimizers(cfg: Config, model: nn.Module) -> dict[str, torch.optim.Optimizer]:
    """``{"latent": ..., "real": ...}`` optimizers of ``cfg.optim`` (empty groups left out)."""
    groups = {"latent": latent_parameters(model), "real": real_parameters(model)}
    return {k: _optimizer(p, getattr(cfg.optim, k)) for k, p in groups.items() if p}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Run:
    """Everything a training run needs, built by :func:`prepare`."""

    config: Config
    model: SBN
    estimator: Estimator
    optimizers: dict[str, torch.optim.Optimizer]
    train: Tensors
    val: Tensors | None
    test: Tensors
    data_files: list[Path]


def prepare(cfg: Config) -> Run:
    """Seed, set the thread count, load and split the data, build model/estimator/optimizers."""
    torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    d = cfg.data
    files = [p for split in data_lib.SPLITS for p in data_lib.find_files(d.name, split, d.root)]
    train = data_lib.load(d.name, "train", d.root or None, d.standardize)
    test = data_lib.load(d.name, "test", d.root or None, d.standardize)
    val = None
    if d.val_fraction > 0:
        train, val = data_lib.split_validation(*train, d.val_fraction, cfg.train.seed)
    if train[0].shape[0] < 2:
        raise UserError(
            f"the training set has {train[0].shape[0]} examples, at least 2 are needed; "
            "lower data.val_fraction"
        )
    model = build_model(cfg)
    estimator = estimators.get(cfg.estimator.name, **cfg.estimator.options)
    return Run(cfg, model, estimator, build_optimizers(cfg, model), train, val, test, files)


def _lr_factor(cfg: Config, steps_per_epoch: int) -> Callable[[int], float]:
    t = cfg.train
    total = t.epochs * steps_per_epoch
    if t.lr_schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if t.lr_schedule == "step":
        return lambda step: t.lr_gamma ** ((step // steps_per_epoch) // t.lr_step_epochs)
    return lambda step: 1.0


def fit(
    run: Run,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict[str, float | int]:
    """Train ``run`` for ``config.train.epochs`` epochs.

    ``on_epoch`` receives each finished epoch's record (``epoch``, ``train_loss``,
    ``test_acc_mode``, ``test_nll_mode``, ``val_*_mode`` with a validation split, ``seconds``,
    ``elapsed``, learning rates); ``progress``: show a tqdm bar on stderr (default: when stderr
    is a terminal); ``echo`` receives a one-line summary per epoch. Returns the final metrics
    (see :func:`~sbnkit.train.metrics.final_metrics`) plus ``epochs``, ``seconds`` and
    ``train_seconds``. Raises :class:`~sbnkit.errors.UserError` when the loss diverges.
    """
    cfg, model, est = run.config, run.model, run.estimator
    t, e = cfg.train, cfg.eval
    start = time.perf_counter()
    progress = sys.stderr.isatty() if progress is None else progress
    shuffle = torch.Generator().manual_seed(t.seed)
    transform = data_lib.augmenter(
        cfg.data.augment, cfg.data.crop_padding, torch.Generator().manual_seed(t.seed + 1)
    )
    batches = data_lib.Batches(
        *run.train,
        t.batch_size,
        shuffle=True,
        generator=shuffle,
        drop_last=True,
        transform=transform,
    )
    if cfg.model.init == "data":
        data_init_(model, next(iter(batches))[0])
    factor = _lr_factor(cfg, len(batches))
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in run.optimizers.values()]
    params = [p for p in model.parameters() if p.requires_grad]
    train_seconds = 0.0
    for epoch in range(1, t.epochs + 1):
        lrs = {f"lr_{k}": o.param_groups[0]["lr"] for k, o in run.optimizers.items()}
        model.train()
        tic, total, steps = time.perf_counter(), 0.0, 0
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{t.epochs}",
            leave=False,
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        for xb, yb in bar:
            loss = est.loss(model, xb, yb)
            for o in run.optimizers.values():
                o.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                for p in params:
                    if p.grad is not None:
                        p.grad.clamp_(-t.grad_clip, t.grad_clip)
            for o in run.optimizers.values():
                o.step()
            clip_latents_(model)
            for s in schedulers:
                s.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise UserError(
                    f"training diverged (loss {value} in epoch {epoch}); lower the learning "
                    "rates or set train.grad_clip"
                )
            total, steps = total + value, steps + 1
            if steps % 20 == 0:
                bar.set_postfix(loss=f"{total / steps:.4f}")
        seconds = time.perf_counter() - tic
        train_seconds += seconds
        record = {"epoch": epoch, "train_loss": total / steps}
        if run.val is not None:
            val = evaluate(model, *run.val, "mode", batch_size=e.batch_size)
            record.update(val_acc_mode=val["acc"], val_nll_mode=val["nll"])
        test = evaluate(model, *run.test, "mode", batch_size=e.batch_size)
        record.update(
            test_acc_mode=test["acc"],
            test_nll_mode=test["nll"],
            seconds=round(seconds, 3),
            elapsed=round(time.perf_counter() - start, 3),
            **lrs,
        )
        if on_epoch is not None:
            on_epoch(record)
        if echo is not None:
            extra = f" val_acc {record['val_acc_mode']:.4f}" if run.val is not None else ""
            echo(
                f"epoch {epoch}/{t.epochs}: loss {record['train_loss']:.4f}{extra} "
                f"test_acc {test['acc']:.4f} ({seconds:.1f}s)"
            )
    metrics = final_metrics(model, *run.test, e.samples, e.batch_size, sample=e.sample)
    if run.val is not None:
        val = evaluate(model, *run.val, "mode", batch_size=e.batch_size)
        metrics.update(val_acc_mode=val["acc"], val_nll_mode=val["nll"])
    metrics.update(
        epochs=t.epochs,
        train_seconds=round(train_seconds, 3),
        seconds=round(time.perf_counter() - start, 3),
    )
    return metrics
