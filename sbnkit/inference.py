"""Evaluation modes of an SBN: the mode network, one sample, and the K-sample ensemble.

* ``mode``: every unit at ``z = 0`` (``x = sign(a)``), Bernoulli weights at ``sign η``;
* ``sample``: one joint sample of all units and weights;
* ``ensemble``: the average of ``samples`` softmax outputs of independent samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .units import Rule, using_rule
from .weights import using_weight_mode

EVAL_MODES = ("mode", "sample", "ensemble")


@torch.no_grad()
def predict_proba(
    model: nn.Module, x: torch.Tensor, mode: str = "mode", samples: int = 16
) -> torch.Tensor:
    """Class probabilities ``[B, K]`` of ``model`` on ``x`` in evaluation ``mode``."""
    if mode not in EVAL_MODES:
        raise UserError(f"unknown evaluation mode {mode!r}; known modes: {', '.join(EVAL_MODES)}")
    if mode == "mode":
        with using_rule(model, Rule("det_st")), using_weight_mode(model, "mode"):
            return F.softmax(model(x), dim=1)
    if not isinstance(samples, int) or samples < 1:
        raise UserError(f"samples must be a positive integer, got {samples!r}")
    count = 1 if mode == "sample" else samples
    with using_rule(model, Rule("st")), using_weight_mode(model, "sample"):
        total = F.softmax(model(x), dim=1)
        for _ in range(count - 1):
            total += F.softmax(model(x), dim=1)
    return total / count


def evaluate_batches(
    model: nn.Module, batches, mode: str = "mode", samples: int = 16
) -> dict[str, float]:
    """Accuracy and NLL (``-log p(y|x)`` of the predictive distribution) over ``batches``, each
    moved to the model's device."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct, nll, count = 0, 0.0, 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            p = predict_proba(model, x, mode, samples)
            correct += int((p.argmax(1) == y).sum())
            nll += float(-torch.log(p.gather(1, y[:, None]).clamp_min(1e-12)).sum())
            count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise UserError("evaluation set is empty")
    return {"acc": correct / count, "nll": nll / count}
