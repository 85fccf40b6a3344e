"""Write the configs of the binary-weight comparison protocol, derived from the recipes.

Every method runs its recipe ``configs/fmnist_<method>.toml`` (with the lr of the validation
search) under one protocol: ``train.epochs = EPOCHS`` and ``train.threads = THREADS`` for all.
Two derived changes, so that a shorter budget keeps each method's schedule:

* MD-tanh-S anneals β every ``beta_interval`` steps; the interval is scaled by
  ``EPOCHS / recipe epochs`` so that β still makes the recipe's number of increases;
* ``fmnist_adaste_corrected``: the AdaSTE recipe with ``rule = "corrected"`` and the lr of its own
  search (``--corrected-lr``), because that rule scales the gradient by N instead of N²; with
  ``--corrected-kl`` its ``kl_weight`` (1/N keeps the KL term's weight relative to the data term
  what it is under ``rule = "code"``, 1/N²; at 1 the prior pins ``|θ|`` near ``N|g|``).

    python experiments/bw_configs.py --epochs 2 --threads 1 --corrected-lr 2.4 \\
        --corrected-kl 1.85e-5 --out runs/bw/configs

The comparison then runs ``sbnkit compare OUT/*.toml --seeds 3``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sbnkit.train import load_config

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("adaste", "bayesbinn", "md_tanh_s", "bop", "binaryconnect", "md")


def derived(method: str, epochs: int, threads: int, extra: list[str]) -> str:
    """The TOML text of ``method``'s recipe under the protocol, with a header naming its source."""
    recipe = ROOT / "configs" / f"fmnist_{method}.toml"
    base = load_config(recipe)
    overrides = [f"train.epochs={epochs}", f"train.threads={threads}", *extra]
    if method == "md_tanh_s":
        interval = base.optim.latent.options["beta_interval"]
        scaled = max(1, round(interval * epochs / base.train.epochs))
        overrides.append(f"optim.latent.beta_interval={scaled}")
    cfg = load_config(recipe, overrides)
    header = f"# from configs/{recipe.name} by experiments/bw_configs.py: {' '.join(overrides)}\n"
    return header + cfg.to_toml()


def main(argv: list[str] | None = None) -> int:
    """Write ``OUT/fmnist_<method>.toml`` for every method and the corrected-AdaSTE variant."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--corrected-lr", type=float, required=True)
    ap.add_argument("--corrected-kl", type=float, default=1.0, help="its kl_weight")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for method in METHODS:
        text = derived(method, args.epochs, args.threads, [])
        (args.out / f"fmnist_{method}.toml").write_text(text)
    corrected = [
        "optim.latent.rule=corrected",
        f"optim.latent.lr={args.corrected_lr}",
        f"optim.latent.kl_weight={args.corrected_kl}",
    ]
    text = derived("adaste", args.epochs, args.threads, corrected)
    (args.out / "fmnist_adaste_corrected.toml").write_text(text)
    print(f"wrote {len(METHODS) + 1} configs to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
