"""PSA: unbiasedness where the math says so, accuracy against ST, conv = dense, kernels, refusals.

Statistical checks. ``calls`` independent calls of an estimator, each on the data replicated
``reps`` times, give ``calls`` i.i.d. estimates ĝ_c (each the mean of ``reps`` single-sample
estimates) with mean = the estimator's expectation. For an unbiased estimator the per-coordinate
statistic z = (mean_c ĝ_c - g) / SE, SE = std_c(ĝ_c) / sqrt(calls), is ≈ N(0, 1) (calls ≥ 100).
Bonferroni: requiring |z| ≤ z* = Φ⁻¹(1 - α / (2d)) for all d checked coordinates keeps the
probability of a false alarm of the whole check below α = 1e-3 (≈ 3e-3 allowing for the t tail at
99 degrees of freedom). The seeds are fixed, so each check is deterministic.
"""

import itertools
import math
from statistics import NormalDist

import pytest
import torch
from sbn_testing import ce, gradient, logistic_loss, toy_net
from torch import nn

from sbnkit import models
from sbnkit.errors import UserError
from sbnkit.estimators import get
from sbnkit.estimators import psa as psa_module
from sbnkit.network import SBN, Head, Stage
from sbnkit.units import BinaryUnit
from sbnkit.weights import make_binary

ALPHA = 1e-3


def samples(est, model, x, y, loss_fn, calls, reps=1):
    """Stacked loss values ``[calls]`` and gradients ``{name: [calls, *shape]}``."""
    xr = x.repeat(reps, *([1] * (x.dim() - 1)))
    yr = y.repeat(reps)
    runs = [gradient(est, model, xr, yr, loss_fn) for _ in range(calls)]
    values = torch.stack([v for v, _ in runs])
    grads = {n: torch.stack([g[n] for _, g in runs]) for n in runs[0][1]}
    return values, grads


def z_scores(draws, target):
    """``|mean - target| / SE`` per coordinate, less a roundoff allowance."""
    se = draws.std(0) / math.sqrt(draws.shape[0])
    err = (draws.mean(0) - target).abs() - 1e-12 * (1.0 + target.abs())
    return err.clamp_min(0.0) / se.clamp_min(1e-300)


def assert_unbiased(grads, exact, names):
    d = sum(exact[n].numel() for n in names)
    z_crit = NormalDist().inv_cdf(1 - ALPHA / (2 * d))
    for n in names:
        z = z_scores(grads[n], exact[n])
        assert z.max() <= z_crit, f"{n}: max |z| = {z.max():.2f} > {z_crit:.2f}"


def layer_rmse(grads, exact, prefix):
    """Relative RMSE of one estimate of the parameters under ``prefix``."""
    names = [n for n in exact if n.startswith(prefix)]
    err = sum(((grads[n] - exact[n]) ** 2).flatten(1).sum(1) for n in names)
    ref = sum((exact[n] ** 2).sum() for n in names)
    return float((err.mean() / ref).sqrt())


@pytest.fixture(scope="module")
def toy():
    model, x, y = toy_net()
    value, exact = gradient(get("exact"), model, x, y, logistic_loss)
    return model, x, y, value, exact


def test_psa_unbiased_for_head_and_last_hidden_layer(toy):
    model, x, y, value, exact = toy
    torch.manual_seed(0)
    idx = torch.arange(0, 200, 25)  # 4 points per class
    sub_value, sub_exact = gradient(get("exact"), model, x[idx], y[idx], logistic_loss)
    values, grads = samples(
        get("psa", kernel="reference"), model, x[idx], y[idx], logistic_loss, 120, 25
    )
    assert_unbiased(
        grads,
        sub_exact,
        ["stages.2.op.weight", "stages.2.op.bias", "head.linear.weight", "head.linear.bias"],
    )
    # The value is the Rao-Blackwellised estimate of the expected loss: unbiased too.
    assert float(z_scores(values, sub_value)) <= NormalDist().inv_cdf(1 - ALPHA / 2)


def test_psa_beats_st_in_the_hidden_layers_at_one_sample(toy):
    model, x, y, _, exact = toy
    torch.manual_seed(1)
    _, psa = samples(get("psa", kernel="reference"), model, x, y, logistic_loss, 120)
    _, st = samples(get("st"), model, x, y, logistic_loss, 120)
    for k in range(3):
        prefix = f"stages.{k}."
        assert layer_rmse(psa, exact, prefix) < layer_rmse(st, exact, prefix)


def small_model(norm, scale):
    torch.manual_seed(5)
    model = models.mlp((2,), 2, hidden=(3, 3), norm=norm, noise_scale=scale).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize(("norm", "scale"), [("affine", 0.6), ("batch", 1.7)])
def test_psa_unbiased_last_layers_with_norm_and_noise_scale(norm, scale):
    model = small_model(norm, scale)
    torch.manual_seed(2)
    x = torch.randn(6, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    _, exact = gradient(get("exact"), model, x, y, ce)
    _, grads = samples(get("psa", kernel="reference"), model, x, y, ce, 120, 30)
    last = [n for n in exact if n.startswith(("stages.1.", "head."))]
    assert_unbiased(grads, exact, last)


def mean_error(grads, exact, name):
    """Relative error of the average of all the estimates (its bias, up to noise / sqrt(calls))."""
    return float((grads[name].mean(0) - exact[name]).norm() / exact[name].norm())


def test_psa_with_bernoulli_weights():
    """Sampled ±1 weights: unbiased for the head and the last binary stage, its latents included
    (local-expectation argument in the psa module docstring); in the first stage, reached through
    the single-flip linearisation, the averaged estimate is closer to the truth than ST's."""
    torch.manual_seed(8)
    model = models.mlp((2,), 2, hidden=(3, 3), binary_weights=True).double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.mul_(4.0 if n.startswith("head") else 0.7 if "original" in n else 1.0)
    x = torch.randn(5, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    _, exact = gradient(get("exact", max_states=2**22), model, x, y, ce)
    torch.manual_seed(0)
    _, psa = samples(get("psa", kernel="reference"), model, x, y, ce, 200, 20)
    last = [n for n in exact if n.startswith(("stages.1.", "head."))]
    assert any("original" in n for n in last)
    assert_unbiased(psa, exact, last)
    _, st = samples(get("st"), model, x, y, ce, 200, 20)
    for n in ("stages.0.op.bias", "stages.0.op.parametrizations.weight.original"):
        assert mean_error(psa, exact, n) < mean_error(st, exact, n)


@pytest.mark.parametrize("binary", [False, True])
def test_dense_psa_equals_conv_psa_when_kernels_cover_the_input(binary):
    """A 3x3 conv with padding 1 on a 1x1 map only uses its centre tap. With Bernoulli weights
    every conv has exactly its dense twin's weights, so both draw the same weight samples."""
    torch.manual_seed(11)
    middle = nn.Conv2d(3, 4, 1) if binary else nn.Conv2d(3, 4, 3, padding=1)
    conv = SBN(
        [
            Stage(nn.Conv2d(2, 3, 3), BinaryUnit("logistic", 0.8)),
            Stage(middle, BinaryUnit()),
            Stage(nn.Conv2d(4, 2, 1), BinaryUnit()),
        ],
        Head(nn.Linear(2, 2)),
        (2, 3, 3),
    ).double()
    dense = SBN(
        [
            nn.Flatten(),
            Stage(nn.Linear(18, 3), BinaryUnit("logistic", 0.8)),
            Stage(nn.Linear(3, 4), BinaryUnit()),
            Stage(nn.Linear(4, 2), BinaryUnit()),
        ],
        Head(nn.Linear(2, 2)),
        (2, 3, 3),
    ).double()
    centre = (0, 0) if binary else (1, 1)
    taps = [
        lambda w: w.reshape(3, 18),
        lambda w: w[:, :, centre[0], centre[1]],
        lambda w: w[:, :, 0, 0],
    ]
    weight = "op.parametrizations.weight.original" if binary else "op.weight"
    for c, d in zip(conv.stages, dense.stages[1:], strict=True):
        if binary:
            make_binary(c.op)
            make_binary(d.op)
    with torch.no_grad():
        for c, d, tap in zip(conv.stages, dense.stages[1:], taps, strict=True):
            d.get_parameter(weight).copy_(tap(c.get_parameter(weight)))
            d.op.bias.copy_(c.op.bias)
        dense.head.load_state_dict(conv.head.state_dict())
    x = torch.randn(7, 2, 3, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (7,))
    est = get("psa", kernel="reference")
    torch.manual_seed(3)
    value_c, grad_c = gradient(est, conv, x, y, ce)
    torch.manual_seed(3)
    value_d, grad_d = gradient(est, dense, x, y, ce)
    torch.testing.assert_close(value_c, value_d, rtol=0, atol=1e-10)
    for k, tap in enumerate(taps):
        torch.testing.assert_close(
            tap(grad_c[f"stages.{k}.{weight}"]),
            grad_d[f"stages.{k + 1}.{weight}"],
            rtol=0,
            atol=1e-10,
        )
        torch.testing.assert_close(
            grad_c[f"stages.{k}.op.bias"], grad_d[f"stages.{k + 1}.op.bias"], rtol=0, atol=1e-10
        )
    if not binary:
        off_centre = grad_c["stages.1.op.weight"].clone()
        off_centre[:, :, 1, 1] = 0.0
        assert off_centre.abs().max() == 0.0
    for n in ("head.linear.weight", "head.linear.bias"):
        torch.testing.assert_close(grad_c[n], grad_d[n], rtol=0, atol=1e-10)


@pytest.mark.parametrize("binary", [False, True])
def test_psa_unbiased_for_a_strided_padded_conv_last_stage(binary):
    """Real weights: every unit's flip probability is differentiated exactly (2x2 output, avg
    head). Bernoulli weights: unbiased when each weight reaches one unit per example (1x1
    output); with weight sharing across positions PSA linearises the weight's finite difference
    over the units it reaches, which leaves a second-order bias (psa module docstring)."""
    torch.manual_seed(12)
    size, c_out = (2, 1) if binary else (3, 2)
    model = SBN(
        [
            Stage(nn.Conv2d(1, 1, 3, padding=1), BinaryUnit()),
            Stage(nn.Conv2d(1, c_out, 3, stride=2, padding=1), BinaryUnit("logistic", 0.7)),
        ],
        Head(nn.Linear(c_out, 2), "avg"),
        (1, size, size),
    ).double()
    if binary:
        make_binary(model.stages[1].op)
    with torch.no_grad():
        model.head.linear.weight.mul_(6.0)
    x = torch.randn(4, 1, size, size, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    _, exact = gradient(get("exact"), model, x, y, ce)
    torch.manual_seed(0)
    _, psa = samples(get("psa", kernel="reference"), model, x, y, ce, 300, 20)
    assert_unbiased(psa, exact, [n for n in exact if n.startswith(("stages.1.", "head."))])


def weight_flip_by_definition(big_g, at, wt, x, stride, padding):
    """``Σ_b Σ_out G (σ(ã - 2 W̃ x_in) - σ(ã))`` per weight by plain loops (x_in = 0 off the map)."""
    out = torch.zeros_like(wt)
    batch, c_out, h_out, w_out = at.shape
    _, c_in, k, _ = wt.shape
    for b, c, oh, ow, r, kh, kw in itertools.product(
        range(batch), range(c_out), range(h_out), range(w_out), range(c_in), range(k), range(k)
    ):
        h, w = oh * stride - padding + kh, ow * stride - padding + kw
        if 0 <= h < x.shape[2] and 0 <= w < x.shape[3]:
            a = at[b, c, oh, ow]
            diff = torch.sigmoid(a - 2 * wt[c, r, kh, kw] * x[b, r, h, w]) - torch.sigmoid(a)
            out[c, r, kh, kw] += big_g[b, c, oh, ow] * diff
    return out


@pytest.mark.parametrize(("stride", "padding", "size"), [(1, 0, 4), (2, 1, 5), (2, 1, 4)])
def test_weight_flip_contractions_match_their_definition(stride, padding, size):
    """The ±1 closed form (two weight-gradient convs) and the direct sum for real inputs."""
    torch.manual_seed(stride + padding + size)
    x = torch.randn(2, 2, size, size, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64).sign()
    c = torch.tensor([0.4, -1.3, 2.0], dtype=torch.float64)
    wt = w * c.view(-1, 1, 1, 1)
    h_out = (size + 2 * padding - 3) // stride + 1
    at = 3 * torch.randn(2, 3, h_out, h_out, dtype=torch.float64)
    big_g = torch.randn_like(at)
    conv = (stride, padding)
    for inputs in (x, x.sign()):
        want = weight_flip_by_definition(big_g, at, wt, inputs, stride, padding)
        direct = psa_module._weight_flip_direct(big_g, at, wt, inputs, conv, 50)
        torch.testing.assert_close(direct, want, rtol=1e-12, atol=1e-13)
    states = psa_module._weight_flip_states(big_g, at, w, c, x.sign(), conv)
    torch.testing.assert_close(states, want, rtol=1e-12, atol=1e-13)
    flat = dict(big_g=big_g[:, :, 0, 0], at=at[:, :, 0, 0], x=x.sign().flatten(1)[:, :5])
    dense_w, dense_wt = w.flatten(1)[:, :5], wt.flatten(1)[:, :5]
    want = psa_module._weight_flip_direct(flat["big_g"], flat["at"], dense_wt, flat["x"], None, 7)
    by_hand = (
        flat["big_g"][:, :, None]
        * (
            torch.sigmoid(flat["at"][:, :, None] - 2 * dense_wt * flat["x"][:, None, :])
            - torch.sigmoid(flat["at"][:, :, None])
        )
    ).sum(0)
    torch.testing.assert_close(want, by_hand, rtol=1e-12, atol=1e-13)
    got = psa_module._weight_flip_states(flat["big_g"], flat["at"], dense_w, c, flat["x"], None)
    torch.testing.assert_close(got, by_hand, rtol=1e-12, atol=1e-13)


def test_every_kernel_gives_the_same_gradient():
    torch.manual_seed(13)
    model = SBN(
        [
            Stage(nn.Conv2d(2, 3, 3, padding=1), BinaryUnit()),
            Stage(nn.Conv2d(3, 4, 3, stride=2, padding=1), BinaryUnit("logistic", 1.5)),
            Stage(nn.Conv2d(4, 3, 3, stride=2, padding=1), BinaryUnit()),
        ],
        Head(nn.Linear(3, 2), "avg"),
        (2, 6, 6),
    ).double()
    with torch.no_grad():
        for s in model.stages:
            s.op.weight.mul_(0.5)
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 2, (4,))
    results = {}
    for kernel, extra in [("reference", {}), ("fused", {}), ("series", {"order": 24})]:
        torch.manual_seed(4)
        results[kernel] = gradient(get("psa", kernel=kernel, **extra), model, x, y, ce)[1]
    for kernel in ("fused", "series"):
        for n, g in results["reference"].items():
            torch.testing.assert_close(results[kernel][n], g, rtol=1e-8, atol=1e-12, msg=n)


def test_psa_refusals():
    x, y = torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(UserError, match="SBN"):
        get("psa").loss(nn.Sequential(nn.Linear(3, 2)).double(), x, y)
    with pytest.raises(UserError, match="logistic"):
        get("psa").loss(models.mlp((3,), 2, hidden=(2,), noise="normal").double(), x, y)
    with pytest.raises(UserError, match="at least one binary stage"):
        get("psa").loss(SBN([], Head(nn.Linear(3, 2)), (3,)).double(), x, y)
    with pytest.raises(UserError, match="unknown psa kernel"):
        get("psa", kernel="magic")
    xi = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    for op, match in [
        (nn.Conv2d(1, 2, 2), "odd"),
        (nn.Conv2d(1, 2, 3, dilation=2, padding=2), "dilation"),
        (nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), "padding_mode"),
    ]:
        model = SBN([Stage(op, BinaryUnit())], Head(nn.Linear(2, 2), "avg"), (1, 4, 4))
        with pytest.raises(UserError, match=match):
            get("psa").loss(model.double(), xi, y)
    pooled = SBN(
        [Stage(nn.Conv2d(1, 2, 3, padding=1), BinaryUnit()), nn.MaxPool2d(2)],
        Head(nn.Linear(8, 2)),
        (1, 4, 4),
    ).double()
    with pytest.raises(UserError, match="MaxPool2d"):
        get("psa").loss(pooled, xi, y)
