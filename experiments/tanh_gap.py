"""Soft vs sign network of a trained MD-tanh-S run: where its evaluation loses accuracy.

For the ``model.pt`` of a run folder, prints β, the fraction of weights with ``β|θ| < 1`` (and
< 2, < 3) and the median ``β|θ|`` per binary layer, whether each layer's evaluation weights are
exactly ``sign θ``, and the test accuracy / NLL of

* (a) the soft network ``tanh(βθ)`` (the training forward) with the BatchNorm running statistics;
* (b) the evaluated network ``sign θ`` with the same statistics (the run's reported number);
* (c) ``sign θ`` with the statistics re-estimated by :func:`sbnkit.recalibrate_batch_norm` on
  ``--images`` training images (seeded random subset of the run's training split);
* (d) the soft network with statistics re-estimated the same way with its soft weights;

and per BatchNorm the ratio of the running variance to the re-estimated (sign) one.

    python experiments/tanh_gap.py runs/x
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sbnkit import data as data_lib
from sbnkit import recalibrate_batch_norm
from sbnkit.optim import TanhWeight
from sbnkit.train import load_trained
from sbnkit.weights import binary_parametrizations, unsaturated_ratio


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, soft: bool = False) -> str:
    """``acc / NLL`` of ``model`` in eval mode; ``soft``: MD-tanh-S weights at ``tanh(βθ)``."""
    model.eval()
    tanh = [p for _, p in binary_parametrizations(model) if isinstance(p, TanhWeight)]
    for p in tanh:
        p.train(soft)
    with torch.no_grad():
        out = torch.cat([model(xb) for xb in x.split(2000)])
    for p in tanh:
        p.train(False)
    acc = float((out.argmax(1) == y).double().mean())
    return f"acc {100 * acc:.2f} %  NLL {float(F.cross_entropy(out, y)):.3f}"


def soft_recalibrated(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose running statistics are re-estimated with the soft weights."""
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for _, p in binary_parametrizations(model):
        p.train(True)
    with torch.no_grad():
        for xb in batches:
            model(xb)
    model.eval()
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder with model.pt")
    ap.add_argument("--images", type=int, default=10_000, help="training images for (c), (d)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, cfg = load_trained(args.run / "model.pt")
    d = cfg.data
    train = data_lib.load(d.name, "train", d.root or None, d.standardize)
    x, y = data_lib.load(d.name, "test", d.root or None, d.standardize)
    if d.val_fraction > 0:
        train, _ = data_lib.split_validation(*train, d.val_fraction, cfg.train.seed)
    order = torch.randperm(train[0].shape[0], generator=torch.Generator().manual_seed(args.seed))
    batches = list(train[0][order[: args.images]].split(cfg.train.batch_size))

    tanh = [(m, p) for m, p in binary_parametrizations(model) if isinstance(p, TanhWeight)]
    if not tanh:
        raise SystemExit(f"{args.run} has no MD-tanh-S weights")
    beta = float(tanh[0][1].beta)
    print(f"beta {beta:.4g} after {int(tanh[0][1].steps)} steps; ", end="")
    print(f"unsaturated_ratio {unsaturated_ratio(model):.3f}")
    print("layer  shape  beta|theta| <1 <2 <3  median  eval weight == sign theta")
    model.eval()
    for m, _ in tanh:
        theta = m.parametrizations.weight.original.detach()
        bt = beta * theta.abs()
        exact = torch.equal(m.weight.detach(), torch.where(theta >= 0, 1.0, -1.0))
        fractions = " ".join(f"{float((bt < k).double().mean()):.3f}" for k in (1, 2, 3))
        shape = tuple(theta.shape)
        print(f"{type(m).__name__} {shape}  {fractions}  {float(bt.median()):.3g}  {exact}")
    print(f"(a) soft tanh(beta theta), running statistics:  {accuracy(model, x, y, soft=True)}")
    print(f"(b) sign theta, running statistics:             {accuracy(model, x, y)}")
    fixed = copy.deepcopy(model)
    recalibrate_batch_norm(fixed, batches)
    print(f"(c) sign theta, re-estimated statistics:        {accuracy(fixed, x, y)}")
    soft = soft_recalibrated(model, batches)
    print(f"(d) soft, statistics re-estimated with soft w:  {accuracy(soft, x, y, soft=True)}")
    print("BatchNorm  running var / re-estimated sign var: median [min, max] over channels")
    before = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    after = [m for m in fixed.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for k, (a, b) in enumerate(zip(before, after, strict=True)):
        r = a.running_var / b.running_var
        print(f"BN{k}  {float(r.median()):.3g} [{float(r.min()):.3g}, {float(r.max()):.3g}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
