"""Which branch of AdaSTE's backward factor ρ(θ, g) each weight takes, per layer.

For an AdaSTE model (a trained run's ``model.pt``, or a fresh model from a config), this runs
the training forward (train mode: ``w*(θ)``, dropout, BatchNorm batch statistics) and backward of
the ``st`` estimator on ``--batches`` training mini-batches, and records the ``(θ, g)`` pairs that
the parametrization's backward receives (``g = ∂ℓ̄/∂w`` of the mini-batch mean loss). On the
same pairs it evaluates :func:`sbnkit.optim.functional.adaste_factor` with both rules and reports
per layer, averaged over the batches:

* ``default``: the fraction with ``ρ`` equal to the default factor (``1/(1+β)``, or 1 when
  ``αβ ≥ 1``); ``zero``: ``ρ = 0``; ``other``: the rest (the boosted "toward" factors);
* for ``code``, ``gated_g``: the fraction whose ``|g| ≤ 1e-3`` (the gradient gate that sends a
  weight to the default factor whatever its region), and ``gated_sat``: the fraction that is
  saturated (``|w*| = 1``) yet gated, i.e. would get 0 or a boosted factor without the gate;
* ``|g| median``: the median absolute gradient.

    python experiments/adaste_gates.py runs/bw/compare/fmnist_adaste-s1/model.pt [--batches 20]
    python experiments/adaste_gates.py configs/fmnist_adaste.toml     # at initialisation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from unittest import mock

import torch

from sbnkit import data as data_lib
from sbnkit import estimators
from sbnkit.optim import adaste as adaste_mod
from sbnkit.optim.adaste import AdaSTEWeight
from sbnkit.optim.functional import ADASTE_RULES, adaste_factor, adaste_forward
from sbnkit.train import Config, build_model, checkpoint, config_from_dict, load_config
from sbnkit.weights import binary_parametrizations

G_GATE = 1e-3  # the published code's gradient gate (sbnkit.optim.functional)


def load(path: Path) -> tuple[Config, torch.nn.Module]:
    """The config and model of a run's ``model.pt``, or a fresh model of a TOML config."""
    if path.suffix == ".toml":
        cfg = load_config(path)
        return cfg, build_model(cfg)
    saved = checkpoint.load(path)
    cfg = config_from_dict(saved["config"])
    model = build_model(cfg)
    model.load_state_dict(saved["state_dict"])
    return cfg, model


def record_pairs(
    cfg: Config, model: torch.nn.Module, batches: int, seed: int
) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:
    """``{id(latent): [(θ, g), ...]}``: what AdaSTE's backward receives on ``batches`` training
    mini-batches (model in train mode, no update)."""
    d = cfg.data
    x, y = data_lib.load(d.name, "train", d.root or None, d.standardize)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    est = estimators.get(cfg.estimator.name, **cfg.estimator.options)
    pairs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def spy(theta: torch.Tensor, grad: torch.Tensor, *args: object) -> torch.Tensor:
        pairs.setdefault(theta.data_ptr(), []).append((theta.detach().clone(), grad.clone()))
        return adaste_factor(theta, grad, *args)

    model.train()
    bs = cfg.train.batch_size
    with mock.patch.object(adaste_mod, "adaste_factor", spy):
        for i in range(batches):
            idx = order[i * bs : (i + 1) * bs]
            model.zero_grad(set_to_none=True)
            est.loss(model, x[idx], y[idx]).backward()
    return pairs


def shares(theta: torch.Tensor, grad: torch.Tensor, alpha: float, beta: float) -> dict[str, float]:
    """The branch fractions of the module docstring for one ``(θ, g)`` pair."""
    default = 1.0 if alpha * beta >= 1.0 else 1.0 / (1.0 + beta)
    out: dict[str, float] = {}
    for rule in ADASTE_RULES:
        rho = adaste_factor(theta, grad, alpha, beta, rule)
        at_default = torch.isclose(rho, torch.full_like(rho, default), rtol=1e-6, atol=0.0)
        out[f"{rule}_default"] = float(at_default.float().mean())
        out[f"{rule}_zero"] = float((rho == 0).float().mean())
        out[f"{rule}_other"] = 1.0 - out[f"{rule}_default"] - out[f"{rule}_zero"]
    gated = grad.abs() <= G_GATE
    saturated = adaste_forward(theta, alpha, beta).abs() >= 1.0
    out["gated_g"] = float(gated.float().mean())
    out["gated_sat"] = float((gated & saturated).float().mean())
    out["g_median"] = float(grad.abs().median())
    out["theta_abs_median"] = float(theta.abs().median())
    return out


def main(argv: list[str] | None = None) -> int:
    """Print (and with ``--json`` write) the per-layer table for one model."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="a run's model.pt, or a TOML config (fresh model)")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg, model = load(args.model)
    layers = [
        (name, module, p)
        for (module, p), name in zip(
            binary_parametrizations(model),
            [n for n, m in model.named_modules() if hasattr(m, "parametrizations")],
            strict=True,
        )
    ]
    if not all(isinstance(p, AdaSTEWeight) for _, _, p in layers):
        raise SystemExit(f"{args.model}: not an AdaSTE model")
    pairs = record_pairs(cfg, model, args.batches, args.seed)
    rows = []
    for name, module, p in layers:
        recorded = pairs[module.parametrizations.weight.original.data_ptr()]
        per_batch = [shares(t, g, p.alpha, float(p.beta)) for t, g in recorded]
        row = {k: sum(s[k] for s in per_batch) / len(per_batch) for k in per_batch[0]}
        rows.append({"layer": name, "weights": module.weight.numel(), **row})
    beta = float(layers[0][2].beta)
    print(f"{args.model}: beta {beta:.4g}, alpha {layers[0][2].alpha}, {args.batches} batches")
    print(
        "| layer | weights | median abs g | median abs theta | code: default | code: |g| gate "
        "| code: gated though saturated | code: 0 | code: boosted | corrected: default "
        "| corrected: 0 | corrected: boosted |"
    )
    print("|---" * 12 + "|")
    for r in rows:
        print(
            f"| {r['layer']} | {r['weights']} | {r['g_median']:.2e} | {r['theta_abs_median']:.3g} "
            f"| {r['code_default']:.3f} | {r['gated_g']:.3f} | {r['gated_sat']:.3f} "
            f"| {r['code_zero']:.3f} | {r['code_other']:.3f} | {r['corrected_default']:.3f} "
            f"| {r['corrected_zero']:.3f} | {r['corrected_other']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"beta": beta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
