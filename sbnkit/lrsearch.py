"""Learning-rate search: the protocol of the PSA paper's CIFAR-10 experiments (Shekhovtsov,
Yanush & Flach 2020, from their public code).

A bounded scalar minimisation of the training loss over ``log10(lr)``: every trial trains
``epochs`` epochs from the same fresh initialisation and seed with a constant learning rate, and
scores the mean training loss of its last epoch; a trial that diverges scores ``+inf``. The search
is a golden-section search on ``[low, high]`` with at most ``trials`` trials, so it needs no
derivative and never leaves the bounds. Several learning-rate keys move together, keeping their
ratios in the config (e.g. ``optim.latent.lr`` and ``optim.real.lr``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .train import Config, build_model, config_from_dict, fit, prepare
from .weights import latent_parameters

__all__ = [
    "LR_KEYS",
    "Trial",
    "check_search",
    "golden_section",
    "lr_search",
    "lr_values",
    "plot",
    "with_lr",
]

LR_KEYS = ("optim.latent.lr", "optim.real.lr")
_GOLD = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class Trial:
    """One trial: ``log10`` of the first key's learning rate and the score (``inf``: diverged)."""

    log10_lr: float
    loss: float


def check_search(low: float, high: float, trials: int, epochs: int = 1) -> None:
    """Raise :class:`UserError` unless ``low < high`` (finite), ``trials >= 2``, ``epochs >= 1``."""
    if trials < 2:
        raise UserError(f"trials must be at least 2, got {trials}")
    if epochs < 1:
        raise UserError(f"epochs must be a positive integer, got {epochs}")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise UserError(f"the search range must have finite low < high, got [{low}, {high}]")


def golden_section(
    f: Callable[[float], float], low: float, high: float, trials: int
) -> list[tuple[float, float]]:
    """``[(x, f(x)), ...]`` of a golden-section search for the minimum of ``f`` on
    ``[low, high]``, ``trials`` evaluations in all (the first two at the golden points).
    Raises :class:`UserError` for a bad range or fewer than 2 trials."""
    check_search(low, high, trials)
    a, b = low, high
    c, d = b - _GOLD * (b - a), a + _GOLD * (b - a)
    fc, fd = f(c), f(d)
    seen = [(c, fc), (d, fd)]
    while len(seen) < trials:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLD * (b - a)
            fc = f(c)
            seen.append((c, fc))
        else:
            a, c, fc = c, d, fd
            d = a + _GOLD * (b - a)
            fd = f(d)
            seen.append((d, fd))
    return seen


def _slot(tree: dict, key: str) -> tuple[dict, str]:
    """The dict holding the dotted ``key`` of a config tree, and the key's last part; raises
    :class:`UserError` unless it names a number."""
    node: object = tree
    *path, last = key.split(".")
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or not isinstance(node.get(last), (int, float)):
        raise UserError(f"{key} is not a learning-rate key of the config; try {LR_KEYS}")
    return node, last


def lr_values(cfg: Config, keys: Sequence[str]) -> dict[str, float]:
    """``{key: value}`` of the learning-rate ``keys`` (dotted) of ``cfg``. Raises
    :class:`UserError` for an unknown key."""
    tree = cfg.to_dict()
    values = {}
    for key in keys:
        node, last = _slot(tree, key)
        values[key] = float(node[last])
    return values


def with_lr(cfg: Config, keys: Sequence[str], log10_lr: float) -> Config:
    """``cfg`` with the first of ``keys`` at ``10**log10_lr``, the others scaled alike, and a
    constant learning rate. Raises :class:`UserError` for an unknown key."""
    old = lr_values(cfg, keys)
    tree = cfg.to_dict()
    for key in keys:
        node, last = _slot(tree, key)
        node[last] = 10.0**log10_lr * old[key] / old[keys[0]]
    tree["train"]["lr_schedule"] = "constant"
    return config_from_dict(tree)


def lr_search(
    cfg: Config,
    *,
    keys: Sequence[str] = LR_KEYS,
    low: float = -6.0,
    high: float = 0.0,
    trials: int = 10,
    epochs: int = 5,
    log: Callable[[str], None] = print,
) -> list[Trial]:
    """The trials of the search, in the order run; the best is ``min(trials, key=loss)``.

    Keys that the model does not use (no latent parameters: ``optim.latent.lr``) are dropped.
    Raises :class:`UserError` for bad bounds, counts or keys.
    """
    check_search(low, high, trials, epochs)
    base = config_from_dict(cfg.to_dict())
    base.train.epochs = epochs
    has_latents = bool(latent_parameters(build_model(base)))
    used = [k for k in keys if has_latents or not k.startswith("optim.latent")]
    if not used:
        raise UserError(f"none of {list(keys)} is used by this model")

    def score(x: float) -> float:
        run = prepare(with_lr(base, used, x))
        try:
            losses: list[float] = []
            fit(run, on_epoch=lambda r: losses.append(r["train_loss"]), progress=False)
            loss = losses[-1]
        except UserError as exc:
            if "diverged" not in str(exc):
                raise
            loss = math.inf
        log(f"lr 10^{x:.3f} = {10**x:.3g}: final training loss {loss:.4f}")
        return loss if math.isfinite(loss) else math.inf

    return [Trial(x, y) for x, y in golden_section(score, low, high, trials)]


def plot(trials: Sequence[Trial], path: Path) -> None:
    """The final training loss of each trial against ``log10(lr)`` (diverged trials as ×
    markers at the top), to ``path`` as PNG. Raises ``OSError`` when ``path`` cannot be
    written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fine = sorted((t.log10_lr, t.loss) for t in trials if math.isfinite(t.loss))
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    if fine:
        ax.plot(*zip(*fine, strict=True), "o-", label="final training loss")
        best = min(fine, key=lambda t: t[1])
        ax.axvline(best[0], color="k", lw=0.8, ls=":", label=f"chosen lr {10 ** best[0]:.3g}")
    top = max((y for _, y in fine), default=1.0)
    bad = [t.log10_lr for t in trials if not math.isfinite(t.loss)]
    if bad:
        ax.plot(bad, [top] * len(bad), "rx", label="diverged")
    ax.set_xlabel("log10 learning rate")
    ax.set_ylabel("training loss, last trial epoch")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
