"""Table and figure of the principled-ST claims runs (mirror map, weight forward, latent decay).

Reads every run folder under ``ROOT`` (each an ``sbnkit train`` run with ``config.toml`` and
``metrics.json``), prints a markdown table with the mirror map (``tanh``: logistic weight noise
of scale ½, ``clip``: uniform weight noise), the training forward of the weights, the latent
weight decay and the test metrics (mode network; 1 sample and ``eval.samples``-sample ensemble of
networks drawn as ``eval.sample`` says; NLL; expected calibration error), and writes ``PNG``: the
ensemble NLL, ECE and accuracy against the decay for the runs that differ only in the decay
(tanh mirror map, sampled forward). Runs that differ only in the seed are pooled (mean ± sample
standard deviation; the figure shows the means). ``--confidence`` adds, from each run's
``model.pt``, the mean top-class probability of the mode network and of the ensemble on the test
set (confidence below accuracy: under-confident; above: over-confident), which says which way
the ECE points.

    python experiments/st_claims.py runs/bw/claims --png runs/bw/claims/decay.png [--confidence]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from sbnkit import data as data_lib
from sbnkit.compare import mean_std
from sbnkit.inference import predict_proba
from sbnkit.train import build_model, checkpoint, config_from_dict, load_config

MIRRORS = {"logistic": "tanh", "uniform": "clip"}


def read_run(folder: Path) -> dict[str, Any]:
    """The settings and final metrics of one run folder."""
    cfg = load_config(folder / "config.toml")
    m = json.loads((folder / "metrics.json").read_text())
    return {
        "run": folder.name,
        "mirror": MIRRORS.get(cfg.model.weight_noise, cfg.model.weight_noise),
        "forward": cfg.model.weight_mode,
        "decay": cfg.optim.latent.weight_decay,
        "epochs": cfg.train.epochs,
        "eval_sample": m["eval_sample"],
        **{k: m[k] for k in m if k.startswith("test_") and isinstance(m[k], (int, float))},
    }


def confidence(folder: Path) -> dict[str, float]:
    """Mean top-class test probability of the run's mode network and ``eval.samples`` ensemble
    (drawing as its ``eval.sample``), and the two accuracies, from ``model.pt``."""
    saved = checkpoint.load(folder / "model.pt")
    cfg = config_from_dict(saved["config"])
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    x, y = data_lib.load(cfg.data.name, "test", cfg.data.root or None, cfg.data.standardize)
    out = {}
    with torch.no_grad():
        for mode in ("mode", "ensemble"):
            p = torch.cat(
                [
                    predict_proba(model, xb, mode, cfg.eval.samples, cfg.eval.sample)
                    for xb in x.split(cfg.eval.batch_size)
                ]
            )
            out[f"conf_{mode}"] = float(p.max(dim=1).values.mean())
            out[f"acc_{mode}"] = float((p.argmax(dim=1) == y).float().mean())
    return out


METRICS = (
    ("test_acc_mode", 100.0, 2),
    ("test_acc_sample", 100.0, 2),
    ("test_acc_ensemble", 100.0, 2),
    ("test_nll_mode", 1.0, 3),
    ("test_nll_ensemble", 1.0, 3),
    ("test_ece_mode", 1.0, 3),
    ("test_ece_ensemble", 1.0, 3),
)


def grouped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting (mirror, forward, decay, epochs, eval draws): the runs of its seeds,
    with every metric as the list over seeds; sorted by mirror, forward, decay."""
    groups: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["mirror"], r["forward"], r["decay"], r["epochs"], r["eval_sample"])
        g = groups.setdefault(
            key, {**{k: r[k] for k in r if not k.startswith("test_")}, "runs": []}
        )
        g["runs"].append(r["run"])
        for k, _, _ in METRICS:
            g.setdefault(k, []).append(r[k])
    return [groups[k] for k in sorted(groups, key=lambda k: k[:3])]


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``rows``, seeds of one setting pooled (mean ± sample std)."""
    head = (
        "| setting (runs) | mirror map | weight forward | latent decay | epochs | seeds | acc mode "
        "| acc 1 sample | acc ensemble | NLL mode | NLL ensemble | ECE mode | ECE ensemble "
        "| eval draws |"
    )
    lines = [head, "|---" * 14 + "|"]
    for g in grouped(rows):
        cells = " | ".join(mean_std(g[k], scale, digits) for k, scale, digits in METRICS)
        lines.append(
            f"| {min(g['runs'], key=len)} | {g['mirror']} | {g['forward']} | {g['decay']:g} "
            f"| {g['epochs']} | {len(g['runs'])} | {cells} | {g['eval_sample']} |"
        )
    return "\n".join(lines)


def plot_decay(rows: list[dict[str, Any]], path: Path) -> None:
    """Ensemble NLL, ECE and accuracy against the latent decay (tanh, sampled forward)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [
        {**g, **{k: sum(g[k]) / len(g[k]) for k, _, _ in METRICS}}
        for g in grouped(rows)
        if g["mirror"] == "tanh" and g["forward"] == "sample"
    ]
    if not sweep:
        raise SystemExit("no tanh / sample runs to plot")
    positive = [r["decay"] for r in sweep if r["decay"] > 0]
    zero_at = min(positive) / 10 if positive else 1e-6  # where decay 0 is drawn on the log axis
    xs = [r["decay"] if r["decay"] > 0 else zero_at for r in sweep]
    panels = (
        ("test_nll_ensemble", "test_nll_mode", "NLL"),
        ("test_ece_ensemble", "test_ece_mode", "ECE"),
        ("test_acc_ensemble", "test_acc_mode", "accuracy"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, (ens, mode, label) in zip(axes, panels, strict=True):
        ax.plot(xs, [r[ens] for r in sweep], "o-", label="ensemble (sampled weights)")
        ax.plot(xs, [r[mode] for r in sweep], "s--", label="mode network")
        ax.set_xscale("log")
        if label == "NLL":
            ax.set_yscale("log")
        ax.set_xlabel("latent weight decay (leftmost point: 0)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle("md recipe, tanh mirror map, sampled weight forward", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Print the table of every finished run under ROOT; write the decay figure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--png", type=Path)
    ap.add_argument("--confidence", action="store_true", help="also the mean confidences")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    folders = [f for f in sorted(args.root.iterdir()) if (f / "metrics.json").is_file()]
    rows = [read_run(f) for f in folders]
    print(table(rows))
    if args.confidence:
        print(
            "\n| run | acc mode | mean confidence mode | acc ensemble | mean confidence ensemble |"
        )
        print("|---|---|---|---|---|")
        for f in folders:
            c = confidence(f)
            print(
                f"| {f.name} | {100 * c['acc_mode']:.2f} | {100 * c['conf_mode']:.2f} "
                f"| {100 * c['acc_ensemble']:.2f} | {100 * c['conf_ensemble']:.2f} |"
            )
    if args.png:
        plot_decay(rows, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
