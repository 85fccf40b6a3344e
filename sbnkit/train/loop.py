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
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import data as data_lib
from .. import estimators, models
from .. import optim as optim_lib
from ..devices import resolve_device
from ..distributed import (
    Cluster,
    agree,
    all_reduce_gradients,
    check_batch_norm,
    gather,
    join,
    leave,
    use_batch_norm,
)
from ..errors import Stopped, StopSignal, UserError
from ..estimators import Estimator
from ..models import data_init_
from ..weights import (
    BernoulliWeight,
    clip_latents_,
    latent_parameters,
    real_parameters,
    unsaturated_ratio,
)
from . import checkpoint, state
from .config import Config, OptimizerConfig, config_from_dict, latent_method, model_options
from .metrics import evaluate, final_metrics

__all__ = [
    "Run",
    "build_model",
    "build_optimizers",
    "fit",
    "load_trained",
    "prepare",
    "seed_everything",
    "train_step",
    "weight_factory",
]

Tensors = tuple[torch.Tensor, torch.Tensor]

UNSATURATED_WARNING = 0.25
"""The final ``unsaturated_ratio`` above which :func:`fit` warns (through ``echo``). A tripwire,
not a guarantee: MD-tanh-S runs whose β schedule completes end near 0.15 (harmless on the
Fashion-MNIST MLP, 12 points lost by the sign network of the ×0.125 VGG), a schedule cut short
near 0.8 (the VGG's sign network at chance); EXPERIMENTS.md."""


def weight_factory(cfg: Config) -> Callable[[], nn.Module]:
    """New binary-weight parametrizations of the ``[optim.latent]`` method: for ``md`` (and
    ``adam`` / ``sgd``) Bernoulli weights of the ``[model]`` ``weight_*`` keys.

    Raises :class:`~sbnkit.errors.UserError` for an unknown method."""
    m = cfg.model
    name, options = latent_method(cfg.optim.latent)
    if name == "md":
        return lambda: BernoulliWeight(
            m.weight_noise, m.weight_noise_scale, m.weight_mode, m.latent_clip or None
        )
    method = optim_lib.get(name)
    weight_options = method.split(options)[0]
    return lambda: method.make_parametrization(**weight_options)


def build_model(cfg: Config) -> nn.Module:
    """The model of ``cfg.model`` for the shapes of ``cfg.data`` (not yet data-initialised),
    its binary weights parametrized by the ``[optim.latent]`` method. Raises
    :class:`~sbnkit.errors.UserError` for an unknown model or a bad option."""
    ds = data_lib.get(cfg.data.name)
    options = model_options(cfg.model, weight=weight_factory(cfg))
    return models.get(cfg.model.name)(ds.input_shape, ds.num_classes, **options)


def load_trained(path: str | Path) -> tuple[nn.Module, Config]:
    """The model of checkpoint ``path`` (a ``model.pt``) with its weights, and its config.

    Every random generator is seeded with the run's ``train.seed`` before the model is built (as
    training did), so an evaluation that samples is reproducible. Raises
    :class:`~sbnkit.errors.UserError` for a missing, unreadable or damaged file, or weights that
    do not fit the model of its config.
    """
    saved = checkpoint.load(path)
    cfg = config_from_dict(saved["config"])
    seed_everything(cfg.train.seed)
    model = build_model(cfg)
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError:
        raise UserError(
            f"the weights in {path} do not fit the model of its config; "
            "the checkpoint is damaged or was written by another sbnkit version"
        ) from None
    return model, cfg


def _optimizer(params: list[nn.Parameter], o: OptimizerConfig) -> torch.optim.Optimizer:
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
    )


def build_optimizers(
    cfg: Config, model: nn.Module, train_size: int | None = None
) -> dict[str, torch.optim.Optimizer]:
    """``{"latent": ..., "real": ...}`` optimizers of ``cfg.optim`` (empty groups left out); the
    latent one is the ``[optim.latent]`` method's, with ``train_size`` (the number of training
    examples) unless the config sets it.

    Raises :class:`~sbnkit.errors.UserError` for an unknown method or a missing required option.
    """
    out = {}
    latent, real = latent_parameters(model), real_parameters(model)
    if latent:
        name, options = latent_method(cfg.optim.latent)
        method = optim_lib.get(name)
        optim_options = method.split(options)[1]
        if "train_size" in method.required and train_size is not None:
            optim_options.setdefault("train_size", train_size)
        out["latent"] = method.make_optimizer(latent, **optim_options)
    if real:
        out["real"] = _optimizer(real, cfg.optim.real)
    return out


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Run:
    """Everything a training run needs, built by :func:`prepare`."""

    config: Config
    model: nn.Module
    estimator: Estimator
    optimizers: dict[str, torch.optim.Optimizer]
    train: Tensors
    val: Tensors | None
    test: Tensors
    data_files: list[Path]
    device: torch.device
    cluster: Cluster = field(default_factory=Cluster)


def prepare(cfg: Config) -> Run:
    """Seed, set the thread count, load and split the data, build model/estimator/optimizers.

    The model goes to ``train.device``; the data stay on the CPU and travel batch by batch.
    Under ``torchrun`` this process joins the group (:mod:`sbnkit.distributed`): every rank
    builds the same model (with SyncBatchNorm for ``train.batch_norm = "sync"``), then draws its
    noise from its own stream. Raises :class:`~sbnkit.errors.UserError` for missing data, an
    unavailable device, a batch size that the processes cannot share equally, or synchronised
    BatchNorm off CUDA; the process leaves its group when it fails.
    """
    device = resolve_device(cfg.train.device)
    cluster = join(device.type)
    try:
        return _prepare(cfg, device, cluster)
    except BaseException:
        leave(cluster)
        raise


def _prepare(cfg: Config, device: torch.device, cluster: Cluster) -> Run:
    if device.type == "cuda" and cluster.world_size > 1:
        device = torch.device("cuda", cluster.local_rank)
        torch.cuda.set_device(device)
    if cfg.train.batch_size % cluster.world_size:
        raise UserError(
            f"train.batch_size = {cfg.train.batch_size} cannot be split equally over "
            f"{cluster.world_size} processes; use a multiple of {cluster.world_size}"
        )
    check_batch_norm(cfg.train.batch_norm, cluster, device)
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
    model = use_batch_norm(build_model(cfg).to(device), cfg.train.batch_norm, cluster, device)
    estimator = estimators.get(cfg.estimator.name, **cfg.estimator.options)
    optimizers = build_optimizers(cfg, model, train[0].shape[0])
    if cluster.rank:
        torch.manual_seed(cfg.train.seed + cluster.rank)
    return Run(cfg, model, estimator, optimizers, train, val, test, files, device, cluster)


def _lr_factor(cfg: Config, steps_per_epoch: int) -> Callable[[int], float]:
    t = cfg.train
    total = t.epochs * steps_per_epoch
    if t.lr_schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if t.lr_schedule == "step":
        return lambda step: t.lr_gamma ** ((step // steps_per_epoch) // t.lr_step_epochs)
    return lambda step: 1.0


def train_step(
    model: nn.Module,
    estimator: Estimator,
    optimizers: Iterable[torch.optim.Optimizer],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    grad_clip: float = 0.0,
    world_size: int = 1,
) -> torch.Tensor:
    """One training step on the batch ``(x, y)``, as :func:`fit` makes it: the estimator's
    loss, ``zero_grad`` and backward, the gradients averaged over ``world_size`` processes and
    clamped to ``±grad_clip`` (0: not clamped), every optimizer's ``step``, then the latents
    clipped where the weights ask for it. Returns the loss (detached)."""
    optimizers = list(optimizers)
    loss = estimator.loss(model, x, y)
    for o in optimizers:
        o.zero_grad(set_to_none=True)
    loss.backward()
    if world_size > 1 or grad_clip > 0:
        params = [p for p in model.parameters() if p.requires_grad]  # the same on every rank
        all_reduce_gradients(params, world_size)
        for p in params if grad_clip > 0 else ():
            if p.grad is not None:
                p.grad.clamp_(-grad_clip, grad_clip)
    for o in optimizers:
        o.step()
    clip_latents_(model)
    return loss.detach()


def fit(
    run: Run,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
    *,
    save_state: Callable[[state.LoopPosition, Callable[[Path], None]], None] | None = None,
    stop: StopSignal | None = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, float | int]:
    """Train ``run`` for ``config.train.epochs`` epochs.

    ``on_epoch`` receives each finished epoch's record (``epoch``, ``train_loss``,
    ``flip_ratio`` (the fraction of binary weights whose sign the epoch changed),
    ``unsaturated_ratio`` (for soft parametrizations such as MD-tanh-S: the fraction of their
    weights whose training value is still far from the evaluated ``±1``,
    :func:`~sbnkit.weights.unsaturated_ratio`), ``val_*_mode`` with a validation split,
    ``test_acc_mode``, ``test_nll_mode``, ``seconds``, ``images_per_s``, ``elapsed``, learning
    rates); ``progress``: show a tqdm bar on stderr (default: when stderr is a terminal);
    ``echo`` receives a one-line summary per epoch, and a warning when the final
    ``unsaturated_ratio`` exceeds :data:`UNSATURATED_WARNING`.

    ``save_state(position, write)`` is called every ``train.checkpoint_every`` epochs and when
    ``stop`` is set (by a signal handler); it calls ``write(path)`` to write the training state
    (:mod:`.state`) to ``path``. When ``stop`` is set the loop finishes its step, saves and raises
    :class:`~sbnkit.errors.Stopped`. ``resume``: a state loaded by :func:`.state.load`; training
    continues from it exactly as the uninterrupted run would have, each process from its own
    random streams. With several processes every rank calls ``fit`` (only rank 0 with
    ``save_state``): each checkpoint gathers the ranks' streams to rank 0.

    Returns the final metrics (see :func:`~sbnkit.train.metrics.final_metrics`) plus
    ``unsaturated_ratio`` (when the model has it), ``epochs``, ``seconds`` and
    ``train_seconds``. Raises :class:`~sbnkit.errors.UserError` when the loss diverges, or
    ``resume`` does not fit the model or was saved by another number of processes.
    """
    cfg, model, est, cluster = run.config, run.model, run.estimator, run.cluster
    t, e = cfg.train, cfg.eval
    start = time.perf_counter()
    progress = sys.stderr.isatty() if progress is None else progress
    progress = progress and cluster.main
    shuffle = torch.Generator().manual_seed(t.seed)
    augment = torch.Generator().manual_seed(t.seed + 1)
    samples = torch.Generator().manual_seed(t.seed + 2)  # BayesBiNN's: one sample for all ranks
    optim_lib.share_sample_generator(model, samples)
    generators = {"shuffle": shuffle, "augment": augment, "samples": samples}
    transform = data_lib.augmenter(cfg.data.augment, cfg.data.crop_padding, augment)
    batches = data_lib.Batches(
        *run.train,
        t.batch_size,
        shuffle=True,
        generator=shuffle,
        drop_last=True,
        transform=transform,
    )
    if cfg.model.init == "data" and resume is None:
        data_init_(model, next(iter(batches))[0].to(run.device))
    factor = _lr_factor(cfg, len(batches))
    schedulers = {
        k: torch.optim.lr_scheduler.LambdaLR(o, factor) for k, o in run.optimizers.items()
    }
    hooks = optim_lib.Schedules(model, run.optimizers.values())
    at = state.LoopPosition(epoch=1, step=0, loss_total=0.0, logged=0, train_seconds=0.0)
    epoch_rng = None
    if resume is not None:
        state.check_world_size(resume, cluster.world_size)
        at = resume["position"]
        try:
            model.load_state_dict(resume["model"])
        except RuntimeError:
            raise UserError(
                "the saved training state does not fit the model of its config; it is damaged "
                "or was written by another sbnkit version"
            ) from None
        for k, o in run.optimizers.items():
            o.load_state_dict(resume["optimizers"][k])
            schedulers[k].load_state_dict(resume["schedulers"][k])
        mine = resume["ranks"][cluster.rank]
        epoch_rng = mine["rng"]
        state.restore_rank(mine, model, generators)

    latents = latent_parameters(model)
    signs = []  # the binary weights' signs at the start of the epoch in progress
    if resume is not None:
        signs = [x.to(lat.device) for x, lat in zip(resume["epoch_signs"], latents, strict=True)]

    def checkpoint_now(rng: dict[str, Any]) -> None:
        if save_state is None and cluster.world_size == 1:
            return
        ranks = gather(state.rank_state(model, rng), cluster)  # every rank takes part
        if save_state is not None and ranks is not None:
            save_state(
                at,
                lambda path: state.save(path, at, model, run.optimizers, schedulers, ranks, signs),
            )

    for epoch in range(at.epoch, t.epochs + 1):
        lrs = {  # at the epoch's start, also when it is resumed from inside
            f"lr_{k}": s.base_lrs[0] * factor((epoch - 1) * len(batches))
            for k, s in schedulers.items()
        }
        model.train()
        tic = time.perf_counter()
        if at.step == 0:
            hooks.epoch_start()
            epoch_rng = state.capture_rng(generators)
            signs = [lat.detach() >= 0 for lat in latents]
        else:  # resuming inside an epoch: redraw its order, then continue every stream
            shuffle.set_state(epoch_rng["shuffle"])
        steps_done = at.step
        bar = tqdm(
            batches.starting_at(at.step),
            total=len(batches) - at.step,
            desc=f"epoch {epoch}/{t.epochs}",
            leave=False,
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        for xb, yb in bar:
            xb, yb = cluster.shard(xb), cluster.shard(yb)
            xb, yb = xb.to(run.device, non_blocking=True), yb.to(run.device, non_blocking=True)
            loss = train_step(
                model,
                est,
                run.optimizers.values(),
                xb,
                yb,
                grad_clip=t.grad_clip,
                world_size=cluster.world_size,
            )
            for s in schedulers.values():
                s.step()
            hooks.step_end()
            value, stopping = agree(float(loss.detach()), bool(stop), cluster, run.device)
            if not math.isfinite(value):
                raise UserError(
                    f"training diverged (loss {value} in epoch {epoch}); lower the learning "
                    "rates or set train.grad_clip"
                )
            at.loss_total, at.step = at.loss_total + value, at.step + 1
            if at.step % 20 == 0:
                bar.set_postfix(loss=f"{at.loss_total / at.step:.4f}")
            if stopping:
                at.epoch = epoch
                at.train_seconds += time.perf_counter() - tic
                rng = state.capture_rng(generators)
                rng["shuffle"] = epoch_rng["shuffle"]
                checkpoint_now(rng)
                raise Stopped(stop.signum if stop else signal.SIGTERM)
        seconds = time.perf_counter() - tic
        at.train_seconds += seconds
        images_per_s = (at.step - steps_done) * t.batch_size / max(seconds, 1e-9)
        record = {"epoch": epoch, "train_loss": at.loss_total / at.step}
        if latents:
            flips = sum(
                int(((lat.detach() >= 0) != s).sum()) for lat, s in zip(latents, signs, strict=True)
            )
            record["flip_ratio"] = flips / sum(lat.numel() for lat in latents)
        unsaturated = unsaturated_ratio(model)
        if unsaturated is not None:
            record["unsaturated_ratio"] = unsaturated
        if run.val is not None:
            val = evaluate(model, *run.val, "mode", batch_size=e.batch_size)
            record.update(val_acc_mode=val["acc"], val_nll_mode=val["nll"])
        test = evaluate(model, *run.test, "mode", batch_size=e.batch_size)
        record.update(
            test_acc_mode=test["acc"],
            test_nll_mode=test["nll"],
            seconds=round(seconds, 3),
            images_per_s=round(images_per_s, 1),
            elapsed=round(time.perf_counter() - start, 3),
            **lrs,
        )
        if on_epoch is not None:
            on_epoch(record)
        at = state.LoopPosition(epoch + 1, 0, 0.0, epoch, at.train_seconds)
        if t.checkpoint_every and epoch % t.checkpoint_every == 0:
            checkpoint_now(state.capture_rng(generators))
        if echo is not None:
            extra = f" val_acc {record['val_acc_mode']:.4f}" if run.val is not None else ""
            echo(
                f"epoch {epoch}/{t.epochs}: loss {record['train_loss']:.4f}{extra} "
                f"test_acc {test['acc']:.4f} ({seconds:.1f}s, {images_per_s:.0f} images/s)"
            )
    metrics = final_metrics(
        model, *run.test, e.samples, e.batch_size, sample=e.sample, curve_max=e.curve_max
    )
    unsaturated = unsaturated_ratio(model)
    if unsaturated is not None:
        metrics["unsaturated_ratio"] = unsaturated
        if unsaturated > UNSATURATED_WARNING and echo is not None:
            echo(
                f"warning: {unsaturated:.1%} of the binary weights end training unsaturated "
                "(MD-tanh-S: beta·|theta| < 1), so the evaluated ±1 network is not the trained "
                "one and its BatchNorm statistics are those of the soft weights; let beta grow "
                "more within the run (smaller optim.latent.beta_interval), or re-estimate the "
                "statistics (sbnkit.recalibrate_batch_norm)"
            )
    if run.val is not None:
        val = evaluate(model, *run.val, "mode", batch_size=e.batch_size)
        metrics.update(val_acc_mode=val["acc"], val_nll_mode=val["nll"])
    metrics.update(
        world_size=cluster.world_size,
        epochs=t.epochs,
        train_seconds=round(at.train_seconds, 3),
        seconds=round(time.perf_counter() - start, 3),
    )
    return metrics
