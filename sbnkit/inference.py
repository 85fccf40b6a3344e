"""Evaluation modes of an SBN: the mode network, one sample, and the K-sample ensemble.

* ``mode``: every unit at ``z = 0`` (``x = sign(a)``), Bernoulli weights at ``sign η``;
* ``sample``: one joint sample of what is random (see below);
* ``ensemble``: the average of ``samples`` softmax outputs of independent samples.

What a sample draws is the ``sample`` choice:

* ``"units"``: the binary units ``x = sign(a − z)``; Bernoulli weights stay at their mode
  ``sign η``;
* ``"weights"``: the Bernoulli weights; units stay at their mode ``sign(a)``;
* ``"both"``: units and weights;
* ``"auto"`` (the default): what the model was trained to be random (:func:`trained_sampling`):
  the units if it has any, and the weights only if its Bernoulli weights' training forward is
  ``weight_mode = "sample"``. A model trained with deterministic weights (``weight_mode = "mode"``
  or ``"mean"``) is thus never evaluated with sampled weights unless asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .units import Rule, binary_units, using_rule
from .weights import bernoulli_parametrizations, using_weight_mode

__all__ = [
    "EVAL_MODES",
    "SAMPLE_CHOICES",
    "EvalMode",
    "Sampled",
    "SampleChoice",
    "check_sample",
    "draws_randomly",
    "evaluate_batches",
    "nll_sum",
    "predict_proba",
    "recalibrate_batch_norm",
    "resolve_sample",
    "trained_sampling",
    "using_sampling",
]

EvalMode = Literal["mode", "sample", "ensemble"]
Sampled = Literal["units", "weights", "both"]
SampleChoice = Literal["auto", "units", "weights", "both"]
EVAL_MODES: tuple[str, ...] = get_args(EvalMode)
SAMPLE_CHOICES: tuple[str, ...] = get_args(SampleChoice)


def check_sample(sample: str) -> str:
    """``sample`` if it is one of :data:`SAMPLE_CHOICES`, else a :class:`UserError`."""
    if sample not in SAMPLE_CHOICES:
        raise UserError(
            f"unknown sampling choice {sample!r}; known choices: {', '.join(SAMPLE_CHOICES)}"
        )
    return sample


def trained_sampling(model: nn.Module) -> Sampled:
    """What ``model`` was trained to be random: ``"both"``, ``"weights"`` or ``"units"``.

    Weights count as random when some Bernoulli weight's forward mode (its training mode) is
    ``"sample"``; units when the model has a :class:`~sbnkit.units.BinaryUnit`. A model with
    neither gives ``"units"`` (sampling then changes nothing).
    """
    weights = any(p.mode == "sample" for _, p in bernoulli_parametrizations(model))
    units = bool(binary_units(model))
    if weights and units:
        return "both"
    return "weights" if weights else "units"


def resolve_sample(model: nn.Module, sample: SampleChoice = "auto") -> Sampled:
    """``sample`` with ``"auto"`` replaced by :func:`trained_sampling` of ``model``.

    Raises :class:`UserError` for an unknown choice.
    """
    check_sample(sample)
    return trained_sampling(model) if sample == "auto" else sample  # type: ignore[return-value]


def draws_randomly(model: nn.Module, sample: SampleChoice = "auto") -> bool:
    """Whether a sample of ``model`` under ``sample`` differs from its mode network: it has
    binary units and ``sample`` draws units, or Bernoulli weights and ``sample`` draws weights.
    When it does not, every sample, and so every ensemble, equals the mode network. Raises
    :class:`UserError` for an unknown choice."""
    drawn = resolve_sample(model, sample)
    units = drawn in ("units", "both") and bool(binary_units(model))
    weights = drawn in ("weights", "both") and any(True for _ in bernoulli_parametrizations(model))
    return units or weights


@contextmanager
def using_sampling(
    model: nn.Module, mode: EvalMode, sample: SampleChoice = "auto"
) -> Iterator[None]:
    """Temporarily set the units' rules and the weights' modes of evaluation ``mode``.

    ``mode = "mode"``: units at ``sign(a)``, weights at ``sign η``; otherwise the random part
    chosen by ``sample`` (see the module docstring) is sampled and the rest is at its mode.
    Raises :class:`UserError` for an unknown ``mode`` or ``sample``.
    """
    if mode not in EVAL_MODES:
        raise UserError(f"unknown evaluation mode {mode!r}; known modes: {', '.join(EVAL_MODES)}")
    what = resolve_sample(model, sample)
    units = mode != "mode" and what in ("units", "both")
    weights = mode != "mode" and what in ("weights", "both")
    with ExitStack() as stack:
        stack.enter_context(using_rule(model, Rule("st" if units else "det_st")))
        stack.enter_context(using_weight_mode(model, "sample" if weights else "mode"))
        yield


def _check_samples(samples: int) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UserError(f"samples must be a positive integer, got {samples!r}")


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    x: torch.Tensor,
    mode: EvalMode = "mode",
    samples: int = 16,
    sample: SampleChoice = "auto",
) -> torch.Tensor:
    """Class probabilities ``[B, K]`` of ``model`` on ``x`` in evaluation ``mode``.

    ``samples``: the ensemble size of ``mode = "ensemble"``; ``sample``: what is random in
    ``sample``/``ensemble`` modes (module docstring). Raises :class:`UserError` for an unknown
    ``mode`` or ``sample``, or ``samples`` that is not a positive integer.
    """
    with using_sampling(model, mode, sample):
        if mode == "mode":
            return F.softmax(model(x), dim=1)
        _check_samples(samples)
        count = 1 if mode == "sample" else samples
        total = F.softmax(model(x), dim=1)
        for _ in range(count - 1):
            total += F.softmax(model(x), dim=1)
    return total / count


def nll_sum(p: torch.Tensor, y: torch.Tensor) -> float:
    """``Σ_i −log p[i, y_i]`` with probabilities clamped at ``1e-12``."""
    return float(-torch.log(p.gather(1, y[:, None]).clamp_min(1e-12)).sum())


def evaluate_batches(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    mode: EvalMode = "mode",
    samples: int = 16,
    sample: SampleChoice = "auto",
) -> dict[str, float]:
    """Accuracy and NLL (``-log p(y|x)`` of the predictive distribution) over ``batches``,
    each moved to the model's device.

    ``mode``, ``samples`` and ``sample`` as in :func:`predict_proba`. Raises :class:`UserError`
    when ``batches`` is empty or an argument is bad.
    """
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct, nll, count = 0, 0.0, 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            p = predict_proba(model, x, mode, samples, sample)
            correct += int((p.argmax(1) == y).sum())
            nll += nll_sum(p, y)
            count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise UserError("evaluation set is empty")
    return {"acc": correct / count, "nll": nll / count}


@torch.no_grad()
def recalibrate_batch_norm(
    model: nn.Module,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]],
    mode: EvalMode = "mode",
    sample: SampleChoice = "auto",
) -> int:
    """Re-estimate the running statistics of every BatchNorm of ``model`` for the network of
    evaluation ``mode``, in place; returns the number of inputs seen.

    The running statistics are collected by the *training* forward pass. When that differs from
    the evaluated network (MD-tanh-S's ``tanh(βθ)`` before ``β`` has saturated it, sampled or
    relaxed weights evaluated at their mode), the statistics do not fit it. This resets them and
    averages (``momentum = None``) the batch statistics of forward passes of the ``mode``
    network (weights and units as in :func:`using_sampling`; dropout off) over ``batches``
    (inputs, or tuples whose first entry is the input, moved to the model's device), then
    leaves the model in the train/eval state it had. Nothing else changes. Raises
    :class:`UserError` for an unknown ``mode`` or ``sample``, or when ``batches`` is empty.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in norms]
    count = 0
    model.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with using_sampling(model, mode, sample):
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(device))
                count += x.shape[0]
        if count == 0:
            raise UserError("no batches to re-estimate the BatchNorm statistics from")
    except BaseException:
        for m, (_, state) in zip(norms, saved, strict=True):
            m.load_state_dict(state)
        raise
    finally:
        for m, (momentum, _) in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return count
