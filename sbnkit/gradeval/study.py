"""The gradient-accuracy study: every method's single-sample gradient estimates on a network,
against a reference gradient (Shekhovtsov, Yanush & Flach 2020, §5, generalised to any SBN).

Each method draws ``N`` single-sample estimates of the gradient of ``mean_n E[loss_n]`` over a
fixed batch (one independent noise draw per point each), batched and split per sample by
:mod:`sbnkit.persample`. The reference is the exact gradient by enumeration when the state count
allows it, else the mean of many samples of an unbiased estimator (:mod:`.reference`), whose noise
is removed from the errors (:mod:`.stats`). Per parameter group (``layer0`` … ``layer{L-1}``, the
last is the real output layer) and number ``M`` of averaged samples the study reports the relative
RMSE, the cosine, the bias/variance split and each method's time per sample.

Two entry points write a run folder: :func:`run`, the reproduction on the paper's 2-5-5-5-1 toy
network (the PSA authors' network file, or REINFORCE-trained checkpoints), and :func:`run_model`,
the study of the user's own model (a run folder, checkpoint or config).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import UserError
from ..estimators.base import LossFn, cross_entropy
from ..provenance import provenance
from ..runfolder import RunFolder, check_folder
from . import training
from .coords import Param, check_param, reparam_grads
from .methods import METHODS, resolve_method
from .netfile import load_network, network_from_json, toy_loss
from .paper import (
    PAPER_PROVENANCE,
    PAPER_RMSE_M1,
    check_exact_loss,
    compare_with_paper,
    findings,
)
from .reference import REFERENCE_CHOICES, ReferenceChoice, exact_gradient, sampled_reference_spec
from .results import (
    EqualTime,
    LayerResult,
    MethodResult,
    NetworkResult,
    Reference,
    StudyResults,
    to_json,
)
from .sampling import MethodSpec, draw, probe, time_per_sample
from .stats import (
    bias_variance,
    gradient_metrics,
    loglog_slope,
    m_grid,
    pow2_grid,
    reference_noise,
)

__all__ = [
    "GRIDS",
    "SAMPLED_DTYPES",
    "Grid",
    "SampledDtype",
    "StudyConfig",
    "run",
    "run_model",
    "study_network",
]

Grid = Literal["paper", "pow2"]
GRIDS: tuple[Grid, ...] = ("paper", "pow2")
SampledDtype = Literal["float64", "float32"]
SAMPLED_DTYPES: tuple[SampledDtype, ...] = ("float64", "float32")
Log = Callable[[str], None]


@dataclass(frozen=True)
class StudyConfig:
    """What a study measures and how.

    ``samples`` single-sample estimates per method of ``methods`` (:data:`~.methods.METHODS`
    names or ``psa_order_N``), seeded by ``seed``; errors of the gradients w.r.t. the weights of
    parametrization ``param`` (:mod:`.coords`); ``grid`` the numbers ``M`` of averaged samples
    (``paper``: 1..9, 10..90, …; ``pow2``: 1, 2, 4, …); ``reference`` ``auto`` (exact when the
    model needs at most ``max_states`` states per example, else ARM, or REINFORCE with a
    baseline for non-logistic noise), ``exact``, ``arm`` or ``reinforce``, with
    ``reference_samples`` samples when sampled, in which case the model and data are converted
    to ``sampled_dtype`` first (float32 conv layers are several times faster on a CPU; exact
    enumeration always runs in the model's dtype); ``workers`` sampling processes of one thread
    each (1: in this process); ``chunk_rows`` rows per batched pass; ``timing_repeats`` plain
    passes timed per method (0: not timed).
    """

    samples: int = 20000
    methods: tuple[str, ...] = tuple(METHODS)
    seed: int = 1
    param: Param = "01"
    workers: int = 2
    chunk_rows: int = 200_000
    grid: Grid = "paper"
    reference: ReferenceChoice = "auto"
    reference_samples: int = 50_000
    max_states: int = 2**20
    sampled_dtype: SampledDtype = "float64"
    timing_repeats: int = 3

    def check(self) -> None:
        """Raise :class:`UserError` for a bad value of any field."""
        for name in ("samples", "workers", "chunk_rows", "reference_samples", "max_states"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.timing_repeats, int) or self.timing_repeats < 0:
            raise UserError(f"timing_repeats must be >= 0, got {self.timing_repeats!r}")
        check_param(self.param)
        if self.grid not in GRIDS:
            raise UserError(f"unknown grid {self.grid!r}; use one of {', '.join(GRIDS)}")
        if self.sampled_dtype not in SAMPLED_DTYPES:
            known = ", ".join(SAMPLED_DTYPES)
            raise UserError(f"unknown sampled dtype {self.sampled_dtype!r}; use one of {known}")
        if self.reference not in REFERENCE_CHOICES:
            known = ", ".join(REFERENCE_CHOICES)
            raise UserError(f"unknown reference {self.reference!r}; use one of {known}")
        if not self.methods:
            raise UserError("no methods given; pass at least one gradeval method")
        for name in self.methods:
            resolve_method(name)

    @property
    def m_grid(self) -> list[int]:
        """The numbers ``M`` of averaged samples with at least one trial."""
        return m_grid(self.samples) if self.grid == "paper" else pow2_grid(self.samples)

    def to_json(self) -> dict[str, Any]:
        """The config as recorded in ``gradeval.json``."""
        return {**asdict(self), "methods": list(self.methods), "M_grid": self.m_grid}


def _exact_reference(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: StudyConfig,
    *,
    loss_fn: LossFn,
) -> tuple[Reference | None, list[torch.Tensor], str]:
    """The exact :class:`Reference` and its gradient per group, or ``(None, [], why not)``."""
    if config.reference not in ("auto", "exact"):
        return None, [], f"--reference {config.reference}"
    t0 = time.perf_counter()
    try:
        loss, grads = exact_gradient(model, x, y, loss_fn=loss_fn, max_states=config.max_states)
    except UserError as exc:
        if config.reference == "exact":
            raise
        return None, [], str(exc)
    grads = reparam_grads(grads, model, config.param)
    names = [f"layer{k}" for k in range(len(grads))]
    ref = Reference(
        kind="exact",
        samples=0,
        expected_loss=loss,
        grad_norm={nm: float(g.norm()) for nm, g in zip(names, grads, strict=True)},
        relative_se={nm: 0.0 for nm in names},
        time_s=time.perf_counter() - t0,
        note="exact enumeration (forward filtering): no reference noise",
    )
    return ref, grads, ""


def _sampled_reference(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: StudyConfig,
    why_not_exact: str,
    *,
    loss_fn: LossFn,
    pool: Executor | None,
    log: Log,
) -> tuple[Reference, list[torch.Tensor], list[float]]:
    """The mean of ``config.reference_samples`` unbiased samples: the :class:`Reference`, its
    gradient per group and its noise ``V_ref/M_ref`` per group."""
    t0 = time.perf_counter()
    reg, opts = sampled_reference_spec(model, config.reference)
    spec = MethodSpec(f"reference/{reg}", reg, opts)
    reason = probe(model, x, y, spec, loss_fn=loss_fn)
    if reason is not None:
        raise UserError(f"no reference gradient: {reg} does not apply ({reason})")
    log(f"  reference: {config.reference_samples} samples of {reg} (exact: {why_not_exact})")
    ((_, drawn),) = draw(
        model,
        x,
        y,
        [spec],
        n_samples=config.reference_samples,
        seed=config.seed,
        loss_fn=loss_fn,
        chunk_rows=config.chunk_rows,
        pool=pool,
    )
    samples = reparam_grads(drawn.grads, model, config.param)
    means = [s.mean(0) for s in samples]
    noise = [reference_noise(s) for s in samples]
    names = [f"layer{k}" for k in range(len(means))]
    norms = [math.sqrt(max(float(g.dot(g)) - v, 0.0)) for g, v in zip(means, noise, strict=True)]
    ref = Reference(
        kind=reg,
        samples=config.reference_samples,
        expected_loss=drawn.loss_value_mean,
        grad_norm=dict(zip(names, norms, strict=True)),
        relative_se={
            nm: math.sqrt(v) / n if n > 0 else math.inf
            for nm, v, n in zip(names, noise, norms, strict=True)
        },
        time_s=time.perf_counter() - t0,
        note=(
            f"sampled reference: the mean of M_ref = {config.reference_samples} independent "
            f"samples of {reg} (unbiased), in {config.sampled_dtype}. "
            "E||g_M - g_ref||^2 = bias^2 + V_est/M + V_ref/M_ref, so every squared error has "
            "V_ref/M_ref (the reference's own noise, from its sample variance) subtracted, and "
            "||g||^2 is estimated as ||g_ref||^2 - V_ref/M_ref. "
            f"Exact enumeration was not used: {why_not_exact}"
        ),
    )
    return ref, means, noise


def _best(methods: dict[str, MethodResult], layer: str, index: Callable[[str], int]) -> str:
    return min(methods, key=lambda k: methods[k].layers[layer].rmse[index(k)])


def _equal_time(methods: dict[str, MethodResult], grid: list[int]) -> EqualTime | None:
    """The comparison at the slowest method's time per sample (:class:`EqualTime`)."""
    times = {k: m.time_per_sample_s for k, m in methods.items()}
    if not methods or any(t is None or t <= 0 for t in times.values()):
        return None
    budget = max(times.values())
    ms = {k: max(m for m in grid if m * t <= budget * (1 + 1e-9)) for k, t in times.items()}
    layers = list(next(iter(methods.values())).layers)
    rmse = {
        k: {nm: methods[k].layers[nm].rmse[grid.index(ms[k])] for nm in layers} for k in methods
    }
    best = {nm: min(methods, key=lambda k, nm=nm: rmse[k][nm]) for nm in layers}
    return EqualTime(budget, ms, rmse, best)


def study_network(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: StudyConfig,
    *,
    loss_fn: LossFn,
    pool: Executor | None = None,
    log: Log = print,
) -> NetworkResult:
    """The reference gradient and every applicable method's errors on one network.

    Methods that cannot draw per-sample estimates on ``model`` are skipped, with the reason in
    :attr:`NetworkResult.skipped`. Each method's samples are drawn in seeded parts, so the
    results do not depend on ``pool`` (a process pool, or ``None`` to sample here). With a
    sampled reference ``model`` is converted to ``config.sampled_dtype`` in place. Raises
    :class:`UserError` when no reference gradient can be computed, or ``config.reference`` is
    ``exact`` and the model is over ``config.max_states``.
    """
    ref, g_ref, why_not_exact = _exact_reference(model, x, y, config, loss_fn=loss_fn)
    noise = [0.0] * len(g_ref)
    if ref is None:
        dtype = getattr(torch, config.sampled_dtype)
        model.to(dtype)
        x = x.to(dtype)
        y = y.to(dtype) if y.is_floating_point() else y
        ref, g_ref, noise = _sampled_reference(
            model, x, y, config, why_not_exact, loss_fn=loss_fn, pool=pool, log=log
        )
    names = [f"layer{k}" for k in range(len(g_ref))]
    ms = config.m_grid
    skipped: dict[str, str] = {}
    specs = []
    for name in config.methods:
        spec = MethodSpec(name, *resolve_method(name))
        reason = probe(model, x, y, spec, loss_fn=loss_fn)
        if reason is None:
            specs.append(spec)
        else:
            skipped[name] = reason
            log(f"  {name:<18} skipped: {reason}")
    methods: dict[str, MethodResult] = {}
    drawn_all = draw(
        model,
        x,
        y,
        specs,
        n_samples=config.samples,
        seed=config.seed,
        loss_fn=loss_fn,
        chunk_rows=config.chunk_rows,
        pool=pool,
    )
    for spec, drawn in drawn_all:
        grads = reparam_grads(drawn.grads, model, config.param)
        lays = {}
        for nm, est, g, v in zip(names, grads, g_ref, noise, strict=True):
            curve = gradient_metrics(est, g, ms, ref_noise=v)
            bv = bias_variance(est, g, ref_noise=v)
            lays[nm] = LayerResult(
                **asdict(curve),
                relative_bias=math.sqrt(bv.bias2),
                slope=loglog_slope(curve),
                bias2=bv.bias2,
                variance=bv.variance,
            )
        entry = MethodResult(
            estimator=spec.estimator,
            options=spec.options,
            loss_value_mean=drawn.loss_value_mean,
            time_sampling_s=drawn.time_s,
            cpu_sampling_s=drawn.cpu_s,
            time_per_sample_s=None,
            layers=lays,
        )
        methods[spec.label] = entry
        log(
            f"  {spec.label:<18} {entry.time_sampling_s:6.1f} s ({entry.cpu_sampling_s:.1f} s CPU)"
            "  RMSE@M=1 " + " ".join(f"{entry.layers[nm].rmse[0]:.3g}" for nm in names)
        )
    for spec in specs if config.timing_repeats else []:  # once the workers are idle
        methods[spec.label].time_per_sample_s = time_per_sample(
            model, x, y, spec, loss_fn=loss_fn, repeats=config.timing_repeats, seed=config.seed
        )
    return NetworkResult(
        exact_expected_loss=ref.expected_loss if ref.kind == "exact" else None,
        exact_grad_norm=ref.grad_norm if ref.kind == "exact" else {},
        time_exact_s=ref.time_s if ref.kind == "exact" else 0.0,
        reference=ref,
        methods=methods,
        skipped=skipped,
        best_at_m1={nm: _best(methods, nm, lambda _: 0) for nm in names} if methods else {},
        equal_time=_equal_time(methods, ms),
    )


def _study_toy(
    label: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    data: dict[str, Any],
    config: StudyConfig,
    pool: Executor | None,
    log: Log,
) -> NetworkResult:
    """:func:`study_network` on a toy network plus the exact-loss check, the paper comparison
    and the findings."""
    log(f"{label}: {len(config.methods)} methods × {config.samples} samples")
    t0 = time.perf_counter()
    res = study_network(model, x, y, config, loss_fn=toy_loss, pool=pool, log=log)
    if "exact_expected_loss" in data:
        check_exact_loss(res.exact_expected_loss, float(data["exact_expected_loss"]), label)
    paper = data.get("paper_relative_rmse_at_one_sample")
    if paper is None and data.get("epoch") in PAPER_RMSE_M1:
        paper = PAPER_RMSE_M1[data["epoch"]]
        res.paper_note = (
            "the paper's values are for the authors' network at the same epoch, "
            "not this one: compare qualitatively"
        )
    if paper is not None:
        res.paper_rmse_m1 = {k: v for k, v in paper.items() if isinstance(v, list)}
        res.paper_provenance = PAPER_PROVENANCE
        res.paper_comparison = compare_with_paper(res, res.paper_rmse_m1)
    res.findings = findings(res)
    res.time_study_s = time.perf_counter() - t0
    return res


@contextmanager
def _sampling(config: StudyConfig) -> Iterator[Executor | None]:
    """One torch thread here, and a spawned pool of ``config.workers`` one-thread processes
    (``None`` for one worker); both undone on exit."""
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with ExitStack() as stack:
        stack.callback(torch.set_num_threads, saved_threads)
        pool = None
        if config.workers > 1:
            pool = ProcessPoolExecutor(
                config.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=torch.set_num_threads,
                initargs=(1,),
            )
            stack.callback(pool.shutdown, cancel_futures=True)
        yield pool


def _write(rf: RunFolder, results: StudyResults) -> None:
    from .plots import plot_network  # not at module level: worker processes need no matplotlib

    rf.write_text("gradeval.json", json.dumps(to_json(results), indent=1))
    for label, res in results.networks.items():
        plot_network(res, rf, label)


def run(
    out_dir: str | Path,
    config: StudyConfig = StudyConfig(),
    *,
    network: str | Path | None = None,
    train_checkpoints: Sequence[int] = (100, 2000),
    log: Log = print,
    overwrite: bool = False,
    argv: Sequence[str] | None = None,
) -> StudyResults:
    """The paper's study on ``network`` (a network file, :mod:`.netfile`) or on REINFORCE-trained
    checkpoints of the toy network at the epochs ``train_checkpoints``; writes ``gradeval.json``,
    the PNG plots and the checkpoints into the run folder ``out_dir``.

    The folder (:class:`~sbnkit.runfolder.RunFolder`) is checked before any compute; an earlier
    study there is replaced only with ``overwrite``, and its REINFORCE checkpoints are reused
    when the recipe matches. ``argv`` is the command line recorded in the run's provenance.
    ``config.param`` is the parametrization both of the training's SGD and of the gradients
    whose errors are measured; the paper's are those of ``"01"``. Raises
    :class:`~sbnkit.errors.UserError` for a bad config, an unusable output folder or a bad
    network file, and :class:`~.paper.ExactLossMismatch` when a network file's recorded exact
    loss disagrees with ours.
    """
    config.check()
    epochs = sorted({int(e) for e in train_checkpoints})
    if network is None and (not epochs or epochs[0] < 1):
        raise UserError(f"training checkpoints must be positive epochs, got {epochs}")
    check_folder(out_dir, "gradeval", overwrite=overwrite)
    loaded = load_network(network) if network is not None else None
    files = [] if network is None else [network]
    with ExitStack() as stack:
        rf = stack.enter_context(
            RunFolder(
                out_dir,
                "gradeval",
                overwrite=overwrite,
                provenance=provenance(argv, files),
                report=log,
            )
        )
        pool = stack.enter_context(_sampling(config))
        record = None
        if loaded is not None:
            nets = {Path(network).stem: loaded}
        else:
            saved, record = training.trained_networks(
                rf.previous, epochs, seed=config.seed, param=config.param, log=log
            )
            nets = {
                f"chk-{e}": (*network_from_json(saved[e], f"chk-{e}"), saved[e]) for e in epochs
            }
        results = StudyResults(
            config={
                **config.to_json(),
                "network": None if network is None else str(network),
                "torch": torch.__version__,
            },
            training=record,
            networks={},
        )
        t0 = time.perf_counter()
        for label, (model, x, y, data) in nets.items():
            res = _study_toy(label, model, x, y, data, config, pool, log)
            data.setdefault("exact_expected_loss", res.exact_expected_loss)
            results.networks[label] = res
        results.timings = {
            "study_s": time.perf_counter() - t0,
            "training_s": None if record is None or record.reused else record.time_train_s,
        }
        if record is not None:
            for e, net in saved.items():
                rf.write_text(f"chk-{e}.json", json.dumps(net))
            kept = {k: v for k, v in asdict(record).items() if k != "reused"}
            rf.write_text("training.json", json.dumps(kept, indent=1))
        _write(rf, results)
    return results


def run_model(
    source: str | Path,
    out_dir: str | Path,
    config: StudyConfig,
    *,
    examples: int = 16,
    log: Log = print,
    overwrite: bool = False,
    argv: Sequence[str] | None = None,
) -> StudyResults:
    """The study on the user's model (a run folder, ``model.pt`` or ``.toml`` config; see
    :func:`~.source.load_target`) in its current state, on ``examples`` seeded training
    examples with the cross-entropy loss; writes ``gradeval.json``, the PNG plots and
    ``summary.md`` (the most accurate method per layer at ``M = 1`` and at equal time) into the
    run folder ``out_dir``.

    ``config.param`` must be ``pm1`` (the 0/1 coordinates are the toy network's). Raises
    :class:`~sbnkit.errors.UserError` for a bad config or source, missing data, an unusable
    output folder, or a model for which no reference gradient can be computed; nothing is
    written then.
    """
    from .report import summary_markdown
    from .source import load_target  # not at module level: worker processes need no training code

    config.check()
    if config.param != "pm1":
        raise UserError("--param 01 applies to the toy network only; your model uses pm1")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise UserError(f"examples must be a positive integer, got {examples!r}")
    check_folder(out_dir, "gradeval", overwrite=overwrite)
    target = load_target(source, examples=examples, seed=config.seed)
    with ExitStack() as stack:
        pool = stack.enter_context(_sampling(config))
        t0 = time.perf_counter()
        res = study_network(
            target.model, target.x, target.y, config, loss_fn=cross_entropy, pool=pool, log=log
        )
        res.time_study_s = time.perf_counter() - t0
        results = StudyResults(
            config={
                **config.to_json(),
                "source": str(source),
                "examples": examples,
                "notes": target.notes,
                "torch": torch.__version__,
            },
            training=None,
            networks={target.label: res},
            timings={"study_s": res.time_study_s},
        )
        rf = stack.enter_context(
            RunFolder(
                out_dir,
                "gradeval",
                overwrite=overwrite,
                provenance=provenance(argv, target.files),
                report=log,
            )
        )
        _write(rf, results)
        rf.write_text("summary.md", summary_markdown(results))
    return results
