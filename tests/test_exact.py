"""Exact enumeration: against plain brute force, the PSA authors' network, and its refusals."""

import itertools
import math

import pytest
import torch
from sbn_testing import ce, logistic_loss, toy_net
from torch import nn

from sbnkit import models
from sbnkit.errors import UserError
from sbnkit.estimators import get
from sbnkit.network import SBN, Head, Stage
from sbnkit.units import BinaryUnit
from sbnkit.weights import binarize, make_binary


def brute_force(model, x, y, loss_fn):
    """``mean_b Σ_{joint states} Π P(state) loss`` by looping over every joint hidden state."""
    with torch.no_grad():
        sizes, h = [], x[:1]
        for m in model.stages:
            h = m(h)
            if isinstance(m, Stage):
                sizes.append(h[0].shape)
    total = 0.0
    per_layer = [itertools.product([-1.0, 1.0], repeat=math.prod(sz)) for sz in sizes]
    for joint in itertools.product(*per_layer):
        h, prob, states = x, 1.0, iter(zip(sizes, joint, strict=True))
        for m in model.stages:
            if not isinstance(m, Stage):
                h = m(h)
                continue
            size, state = next(states)
            a = m.preactivation(h)
            st = torch.tensor(state, dtype=x.dtype).view(1, *size)
            prob = prob * m.unit.noise.cdf(st * a).flatten(1).prod(1)
            h = st.expand(x.shape[0], *size)
        total = total + prob * loss_fn(model.head(h), y)
    return total.mean()


def grads(model, loss):
    params = [p for p in model.parameters()]
    return torch.autograd.grad(loss, params)


def tiny_models():
    torch.manual_seed(3)
    dense = models.mlp((3,), 2, hidden=(3, 2)).double()
    normal = models.mlp(
        (2,), 2, hidden=(3, 3), noise="normal", noise_scale=0.7, norm="affine"
    ).double()
    with torch.no_grad():
        for p in normal.parameters():
            p.add_(0.3 * torch.randn_like(p))
    conv = SBN(
        [
            Stage(nn.Conv2d(1, 1, 3, stride=2, padding=1), BinaryUnit("logistic", 0.8)),
            Stage(nn.Conv2d(1, 2, 3, stride=2, padding=1), BinaryUnit("uniform", 2.0)),
        ],
        Head(nn.Linear(2, 3), "avg"),
        (1, 3, 3),
    ).double()
    return {"dense": (dense, (3,)), "normal_affine": (normal, (2,)), "conv": (conv, (1, 3, 3))}


@pytest.mark.parametrize("name", ["dense", "normal_affine", "conv"])
def test_exact_matches_brute_force(name):
    model, shape = tiny_models()[name]
    torch.manual_seed(0)
    x = torch.randn(3, *shape, dtype=torch.float64)
    y = torch.randint(0, model.num_outputs, (3,))
    want = brute_force(model, x, y, ce)
    got = get("exact").loss(model, x, y, ce)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    for g, w in zip(grads(model, got), grads(model, want), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_exact_enumerates_bernoulli_weights(kind):
    torch.manual_seed(1)
    if kind == "dense":
        model = models.mlp((2,), 2, hidden=(2,), binary_weights=True).double()
        x = torch.randn(2, 2, dtype=torch.float64)
    else:
        model = SBN(
            [
                Stage(nn.Conv2d(1, 1, 2), BinaryUnit()),
                nn.Flatten(),
                Stage(nn.Linear(4, 2), BinaryUnit()),
            ],
            Head(nn.Linear(2, 2)),
            (1, 3, 3),
        ).double()
        make_binary(model.stages[0].op)
        x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    y = torch.tensor([0, 1])
    op = model.stages[0].op
    eta = op.parametrizations.weight.original
    bern = op.parametrizations.weight[0]
    plain = binarize(model)
    total = 0.0
    for bits in itertools.product([-1.0, 1.0], repeat=4):
        w = torch.tensor(bits, dtype=torch.float64).view(eta.shape)
        with torch.no_grad():
            plain.stages[0].op.weight.copy_(w)
        total = total + torch.prod(bern.noise.cdf(w * eta)) * brute_force(plain, x, y, ce)
    got = get("exact").loss(model, x, y, ce)
    torch.testing.assert_close(got, total, rtol=1e-12, atol=1e-14)
    (g_got,) = torch.autograd.grad(got, eta)
    (g_want,) = torch.autograd.grad(total, eta)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-13)


def test_exact_value_does_not_depend_on_chunking():
    model, x, y = toy_net()
    loss = get("exact", chunk=1000).loss(model, x[:30], y[:30], logistic_loss)
    full = get("exact").loss(model, x[:30], y[:30], logistic_loss)
    torch.testing.assert_close(loss, full, rtol=1e-13, atol=0)


def test_exact_refuses_above_the_limit():
    model, x, y = toy_net()
    with pytest.raises(UserError, match="max_states"):
        get("exact", max_states=2**9).loss(model, x, y, logistic_loss)
    big = models.mlp((2,), 1, hidden=(12, 12)).double()
    with pytest.raises(UserError, match="max_states"):
        get("exact").loss(big, x, y, logistic_loss)


def test_exact_refuses_batchnorm_in_training_mode():
    model = models.mlp((2,), 2, hidden=(3,), norm="batch").double()
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.tensor([0, 1, 0, 1])
    with pytest.raises(UserError, match="eval"):
        get("exact").loss(model, x, y)
    model.eval()
    assert torch.isfinite(get("exact").loss(model, x, y))


def test_exact_refuses_non_sbn_and_pooling():
    x, y = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(UserError, match="SBN"):
        get("exact").loss(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double(), x, y)
    pooled = SBN(
        [Stage(nn.Conv2d(1, 1, 3, padding=1), BinaryUnit()), nn.MaxPool2d(2)],
        Head(nn.Linear(4, 2)),
        (1, 4, 4),
    ).double()
    with pytest.raises(UserError, match="MaxPool2d"):
        get("exact").loss(pooled, x, y)
