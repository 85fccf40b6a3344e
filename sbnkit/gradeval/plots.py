"""PNG plots of a gradient-accuracy study: RMSE (log-log) and cosine (with a 15–85% band)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..runfolder import RunFolder  # noqa: E402
from .results import NetworkResult  # noqa: E402

__all__ = ["plot_network"]


def _panels(n: int) -> tuple[plt.Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    return fig, list(axes[0])


def _save(fig: plt.Figure, folder: RunFolder, name: str) -> Path:
    with folder.target(name) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return folder.path / name


def plot_network(res: NetworkResult, folder: RunFolder, label: str) -> list[Path]:
    """Write ``rmse_<label>.png`` and ``cosine_<label>.png`` for one network's results into
    ``folder`` (the paper's figure: one panel per layer, RMSE log-log and cosine with its
    15-85 % band against the number ``M`` of averaged samples); returns the paths."""
    methods = res.methods
    if not methods:
        return []
    ref = "exact" if res.reference.kind == "exact" else f"{res.reference.kind} reference"
    names = list(next(iter(methods.values())).layers)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = cycle if len(methods) <= len(cycle) else list(plt.get_cmap("tab20").colors)
    paths = []

    fig, axes = _panels(len(names))
    for ax, nm in zip(axes, names, strict=True):
        for k, (method, entry) in enumerate(methods.items()):
            lay = entry.layers[nm]
            ax.loglog(lay.M, lay.rmse, label=method, color=colors[k % len(colors)])
        ms = next(iter(methods.values())).layers[nm].M
        ax.loglog(ms, [ms[0] ** 0.5 / m**0.5 for m in ms], "k:", lw=0.8, label="∝ 1/√M")
        ax.set_title(f"{label} {nm}")
        ax.set_xlabel("samples averaged M")
        ax.grid(True, which="both", lw=0.3)
    axes[0].set_ylabel(f"relative RMSE (vs {ref})")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(_save(fig, folder, f"rmse_{label}.png"))

    fig, axes = _panels(len(names))
    for ax, nm in zip(axes, names, strict=True):
        for k, (method, entry) in enumerate(methods.items()):
            lay = entry.layers[nm]
            c = colors[k % len(colors)]
            ax.semilogx(lay.M, lay.cos_mean, label=method, color=c)
            ax.fill_between(lay.M, lay.cos_q15, lay.cos_q85, color=c, alpha=0.15, lw=0)
        ax.set_title(f"{label} {nm}")
        ax.set_xlabel("samples averaged M")
        ax.set_ylim(-1.05, 1.05)
        ax.grid(True, which="both", lw=0.3)
    axes[0].set_ylabel(f"cosine to the {ref} gradient")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths.append(_save(fig, folder, f"cosine_{label}.png"))
    return paths
