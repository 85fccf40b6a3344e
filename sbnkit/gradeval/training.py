"""The REINFORCE training of the PSA paper's studied network (2-5-5-5-1 on the toy set) and its
cache of checkpoints in a gradeval run folder."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import estimators
from ..data.toy import make_toy
from ..network import SBN
from .coords import Param, check_param, grad_01
from .netfile import LAYER_SIZES, init_network, layers, network_to_json, toy_loss

__all__ = [
    "SAVED_EPOCHS",
    "TRAIN_DEFAULTS",
    "TrainingRecord",
    "train_config",
    "train_reinforce",
    "trained_networks",
]

TRAIN_DEFAULTS = {"lr": 0.03, "momentum": 0.9, "batch": 10, "n_per_class": 100, "data_seed": 1}
SAVED_EPOCHS = (1, 100, 2000)

Log = Callable[[str], None]


@dataclass
class TrainingRecord:
    """What ``training.json`` records: the recipe, the kept epochs and the training time;
    ``reused`` when the checkpoints came from an earlier run's folder."""

    config: dict[str, Any]
    epochs: list[int]
    time_train_s: float
    reused: bool = False


def train_reinforce(
    model: SBN,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    checkpoints: Sequence[int],
    seed: int,
    lr: float = 0.03,
    momentum: float = 0.9,
    batch: int = 10,
    param: Param = "01",
) -> dict[int, dict[str, torch.Tensor]]:
    """Train with REINFORCE (no baseline, as the PSA paper's studied network): SGD with
    momentum (``torch.optim.SGD``), reshuffled batches. Returns the state dicts after each
    epoch in ``checkpoints``.

    SGD runs on the weights of parametrization ``param`` (see :mod:`.coords`; with ``"01"`` the
    same lr moves the ±1 weights about 4x less than with ``"pm1"``): master copies of those
    weights are stepped and written back into ``model``. Raises :class:`UserError` for an unknown
    ``param`` or a model other than a plain SBN MLP.
    """
    check_param(param)
    est = estimators.get("reinforce")
    ops = layers(model)
    binary = [k > 0 and param == "01" for k in range(len(ops))]
    with torch.no_grad():
        master = []
        for op, b01 in zip(ops, binary, strict=True):
            w, b = op.weight.detach(), op.bias.detach()
            master += [2 * w, b - w.sum(1)] if b01 else [w.clone(), b.clone()]
    opt = torch.optim.SGD(master, lr=lr, momentum=momentum, foreach=False)
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    saved: dict[int, dict[str, torch.Tensor]] = {}
    for epoch in range(1, max(checkpoints) + 1):
        for idx in torch.randperm(X.shape[0], generator=gen).split(batch):
            model.zero_grad(set_to_none=True)
            est.loss(model, X[idx], y[idx], toy_loss).backward()
            with torch.no_grad():
                for k, (op, b01) in enumerate(zip(ops, binary, strict=True)):
                    gw, gb = op.weight.grad, op.bias.grad
                    master[2 * k].grad, master[2 * k + 1].grad = (
                        grad_01(gw, gb) if b01 else [gw, gb]
                    )
                opt.step()
                for k, (op, b01) in enumerate(zip(ops, binary, strict=True)):
                    w, b = master[2 * k], master[2 * k + 1]
                    op.weight.copy_(0.5 * w if b01 else w)
                    op.bias.copy_(b + 0.5 * w.sum(1) if b01 else b)
        if epoch in checkpoints:
            saved[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return saved


def train_config(seed: int, param: Param = "01") -> dict[str, Any]:
    """The REINFORCE training recipe of the PSA paper's gradient-accuracy experiment with this
    init/training seed and SGD parametrization (see :func:`train_reinforce`)."""
    return {
        "method": "reinforce",
        "sizes": list(LAYER_SIZES),
        "init": "U(-1,1)+AP2",
        "seed": int(seed),
        "param": param,
        "dtype": "float64",
        **TRAIN_DEFAULTS,
    }


def _cached(
    cache_dir: Path | None, cfg: dict[str, Any], epochs: Sequence[int]
) -> tuple[dict[int, dict], TrainingRecord | None]:
    """``(networks by epoch, record)`` from ``cache_dir`` if it matches ``cfg`` and holds every
    epoch; ``({}, None)`` otherwise."""
    if cache_dir is None:
        return {}, None
    try:
        record = json.loads((cache_dir / "training.json").read_text())
        if record["config"] != cfg or not set(epochs) <= set(record["epochs"]):
            return {}, None
        nets = {e: json.loads((cache_dir / f"chk-{e}.json").read_text()) for e in record["epochs"]}
        kept = TrainingRecord(record["config"], record["epochs"], record["time_train_s"], True)
    except (OSError, ValueError, KeyError, TypeError):
        return {}, None
    return nets, kept


def trained_networks(
    cache_dir: Path | None,
    epochs: Sequence[int],
    *,
    seed: int,
    param: Param = "01",
    log: Log = print,
) -> tuple[dict[int, dict[str, Any]], TrainingRecord]:
    """Network objects (:func:`~.netfile.network_to_json`) by epoch, and the training record.

    Reuses ``cache_dir/training.json`` and ``chk-<epoch>.json`` (an earlier study's output) when
    the recipe matches and every requested epoch is there; otherwise trains to ``max(epochs)``,
    keeping the requested epochs and those of :data:`SAVED_EPOCHS` on the way.
    """
    cfg = train_config(seed, param)
    nets, record = _cached(cache_dir, cfg, epochs)
    if record is not None:
        log(
            f"reusing the REINFORCE checkpoints {sorted(nets)} in {cache_dir} "
            f"(trained in {record.time_train_s:.1f} s)"
        )
        return nets, record
    X, y = make_toy(cfg["n_per_class"], cfg["data_seed"])
    model = init_network(X, seed)
    last = max(epochs)
    keep = sorted({*epochs, *(e for e in SAVED_EPOCHS if e <= last)})
    log(f"training with REINFORCE for {last} epochs ({last * X.shape[0] // cfg['batch']} steps)")
    t0 = time.perf_counter()
    states = train_reinforce(
        model,
        X,
        y,
        checkpoints=keep,
        seed=seed,
        lr=cfg["lr"],
        momentum=cfg["momentum"],
        batch=cfg["batch"],
        param=param,
    )
    t_train = time.perf_counter() - t0
    log(f"training took {t_train:.1f} s")
    nets = {}
    for e, state in states.items():
        model.load_state_dict(state)
        nets[e] = network_to_json(model, X, y, extra={"epoch": e, "training": cfg})
    return nets, TrainingRecord(cfg, keep, t_train)
