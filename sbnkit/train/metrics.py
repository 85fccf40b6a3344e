"""Test-set metrics of an SBN in its three evaluation modes."""

from __future__ import annotations

import time

import torch
from torch import nn

from ..data import Batches
from ..inference import evaluate_batches


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mode: str = "mode",
    samples: int = 16,
    batch_size: int = 2000,
) -> dict[str, float]:
    """``{"acc", "nll"}`` of ``model`` on ``(x, y)`` in evaluation ``mode``."""
    return evaluate_batches(model, Batches(x, y, batch_size), mode, samples)


def final_metrics(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    samples: int,
    batch_size: int,
    prefix: str = "test",
) -> dict[str, float | int]:
    """Accuracy and NLL of the mode network, one sample and the ``samples``-sample ensemble:
    ``{prefix}_{acc,nll}_{mode,sample,ensemble}``, ``ensemble_samples`` and ``eval_seconds``."""
    start = time.perf_counter()
    mode = evaluate(model, x, y, "mode", samples, batch_size)
    one = evaluate(model, x, y, "sample", samples, batch_size)
    ens = evaluate(model, x, y, "ensemble", samples, batch_size)
    return {
        f"{prefix}_acc_mode": mode["acc"],
        f"{prefix}_nll_mode": mode["nll"],
        f"{prefix}_acc_sample": one["acc"],
        f"{prefix}_nll_sample": one["nll"],
        f"{prefix}_acc_ensemble": ens["acc"],
        f"{prefix}_nll_ensemble": ens["nll"],
        "ensemble_samples": samples,
        "eval_seconds": round(time.perf_counter() - start, 3),
    }


def log_summary(records: list[dict]) -> dict[str, object]:
    """What the per-epoch log adds to the final metrics: ``flip_ratio_per_epoch`` (binary
    weights only) and, with a validation split, ``best_val_epoch`` (highest ``val_acc_mode``,
    the earliest on ties) with that epoch's ``test_acc_mode_at_best_val`` and
    ``test_nll_mode_at_best_val``: model selection that never looks at the test set."""
    out: dict[str, object] = {}
    if records and "flip_ratio" in records[0]:
        out["flip_ratio_per_epoch"] = [r["flip_ratio"] for r in records]
    scored = [r for r in records if "val_acc_mode" in r]
    if scored:
        best = max(scored, key=lambda r: (r["val_acc_mode"], -r["epoch"]))
        out.update(
            best_val_epoch=best["epoch"],
            val_acc_mode_at_best_val=best["val_acc_mode"],
            test_acc_mode_at_best_val=best["test_acc_mode"],
            test_nll_mode_at_best_val=best["test_nll_mode"],
        )
    return out
