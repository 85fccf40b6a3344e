"""Helpers shared by the estimator tests: the authors' network, losses, one gradient call."""

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from sbnkit import models

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def logistic_loss(eta, y):
    return F.softplus(-y * eta[:, 0])


def ce(eta, y):
    """Per-example cross-entropy (cheaper than F.cross_entropy for tiny batches on busy CPUs)."""
    return torch.logsumexp(eta, 1) - eta.gather(1, y[:, None])[:, 0]


def authors_net():
    """The PSA paper's trained 2-5-5-5-1 network, its 200 points (y = ±1) and exact loss."""
    d = json.loads((DATA / "psa_gradeval_5-5-5_chk100.json").read_text())
    model = models.mlp([2, 5, 5, 5, 1]).double()
    ops = [s.op for s in model.stages] + [model.head.linear]
    with torch.no_grad():
        for op, layer in zip(ops, d["layers"], strict=True):
            op.weight.copy_(torch.tensor(layer["weight"]))
            op.bias.copy_(torch.tensor(layer["bias"]).view(-1))
    x = torch.tensor(d["X"], dtype=torch.float64)
    y = torch.tensor(d["y"], dtype=torch.float64)
    return model, x, y, d["exact_expected_loss"]


def gradient(est, model, x, y, loss_fn):
    """``(loss value, {parameter name: gradient})`` of one call."""
    model.zero_grad()
    loss = est.loss(model, x, y, loss_fn)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}
