"""ADF and the local reparameterization against the moment recursion written out by hand.

The recursion of sbnkit/estimators/adf.py's docstring is re-implemented here with plain torch on
tiny networks of two stages, so the unit variance ``4 p (1 - p)`` of the first stage reaches the
second stage's probit-style rescaling ``sqrt(V_z / (ν + V_z))`` and the loss value. The noise
variances ``V_z`` are the textbook ones; they are also checked against a numerical integral.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from sbn_testing import ce, gradient
from torch import nn

from sbnkit import models
from sbnkit.errors import UserError
from sbnkit.estimators import get
from sbnkit.estimators.adf import noise_variance
from sbnkit.network import SBN, ChannelAffine, Head, Stage
from sbnkit.noise import Logistic, Noise, Normal, Triangular, Uniform
from sbnkit.units import BinaryUnit

VARIANCE = {  # V_z of each noise of scale s
    "logistic": lambda s: (math.pi * s) ** 2 / 3,
    "normal": lambda s: s * s,
    "uniform": lambda s: s * s / 3,
    "triangular": lambda s: s * s / 6,
}


@pytest.mark.parametrize(
    "nz", [Logistic(0.6), Normal(1.7), Uniform(2.5), Triangular(0.4)], ids=repr
)
def test_noise_variance_is_the_second_moment_of_the_density(nz):
    (scale,) = vars(nz).values()
    bound = scale if isinstance(nz, (Uniform, Triangular)) else 60 * scale  # the support
    t = torch.linspace(-bound, bound, 400_001, dtype=torch.float64)
    integral = float(torch.trapezoid(t * t * nz.pdf(t), t))
    assert noise_variance(nz) == pytest.approx(integral, rel=1e-6)
    assert noise_variance(nz) == pytest.approx(VARIANCE[nz.name](scale), rel=1e-15)


def test_noise_variance_refuses_an_unknown_noise():
    with pytest.raises(UserError, match="variance"):
        noise_variance(Noise())


def _op(op, m, weight, bias):
    if isinstance(op, nn.Linear):
        return F.linear(m, weight, bias)
    return F.conv2d(m, weight, bias, op.stride, op.padding)


def _weight_moments(op):
    if nn.utils.parametrize.is_parametrized(op, "weight"):
        mean = torch.tanh(op.parametrizations.weight.original)  # logistic(½): E[w] = tanh(η)
        return mean, torch.ones_like(mean)
    return op.weight, op.weight**2


def _moments(op, m, v):
    mean, sq = _weight_moments(op)
    mu = _op(op, m, mean, op.bias)
    return mu, _op(op, v, sq, None) + _op(op, m * m, sq - mean * mean, None)


def _channels(t, like):
    return t.view(1, -1, *([1] * (like.dim() - 2)))


def hand_moments(model, x, vz, draws=False):
    """``(μ_L, ν_L)`` of the logits; ``draws``: sample every pre-activation (local reparam)."""
    m, v = x, torch.zeros_like(x)
    for stage in model.stages:
        mu, nu = _moments(stage.op, m, v)
        norm = stage.norm
        if isinstance(norm, ChannelAffine):
            mu = mu * _channels(norm.weight, mu) + _channels(norm.bias, mu)
            nu = nu * _channels(norm.weight.detach() ** 2, nu)
        elif norm is not None:  # BatchNorm in eval mode
            gain = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            mu = (mu - _channels(norm.running_mean, mu)) * _channels(gain, mu)
            mu = mu + _channels(norm.bias, mu)
            nu = nu * _channels(gain.detach() ** 2, nu)
        cdf = stage.unit.noise.cdf
        if draws:
            p = cdf(mu + torch.sqrt(nu.clamp_min(1e-300)) * torch.randn_like(mu))
        else:
            p = cdf(mu * torch.sqrt(vz / (nu + vz)))
        m, v = 2 * p - 1, 4 * p * (1 - p)
    if model.head.pool == "avg":  # the mean of P independent units has variance mean(v) / P
        positions = m[0, 0].numel()
        m, v = m.mean((2, 3)), v.mean((2, 3)) / positions
    return _moments(model.head.linear, m.flatten(1), v.flatten(1))


def hand_value(model, loss):
    model.zero_grad()
    value = loss()
    value.backward()
    return value.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-14)
    for n in want[1]:
        torch.testing.assert_close(got[1][n], want[1][n], rtol=1e-10, atol=1e-13, msg=n)


def two_stage(noise="logistic", scale=0.8, **options):
    torch.manual_seed(6)
    model = models.mlp((3,), 2, hidden=(4, 3), noise=noise, noise_scale=scale, **options).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(5, 3, dtype=torch.float64)
    return model, x, torch.tensor([0, 1, 1, 0, 1])


@pytest.mark.parametrize("noise", list(VARIANCE))
def test_adf_matches_the_hand_recursion_on_two_stages(noise):
    model, x, y = two_stage(noise)
    vz = VARIANCE[noise](0.8)
    got = gradient(get("adf"), model, x, y, ce)
    want = hand_value(model, lambda: ce(hand_moments(model, x, vz)[0], y).mean())
    assert_same(got, want)
    # the first stage's unit variance reaches the output: with ν ignored the loss differs
    with torch.no_grad():
        no_var = ce(hand_moments(model, x, 1e300)[0], y).mean()
    assert abs(float(no_var) - float(got[0])) > 1e-3


@pytest.mark.parametrize("norm", ["affine", "batch"])
def test_adf_with_norms_and_bernoulli_weights_matches_the_hand_recursion(norm):
    model, x, y = two_stage(norm=norm, binary_weights=True, binary_head=True)
    if norm == "batch":
        model.eval()
        with torch.no_grad():
            for stage in model.stages:
                stage.norm.running_mean.uniform_(-0.5, 0.5)
                stage.norm.running_var.uniform_(0.5, 2.0)
    got = gradient(get("adf"), model, x, y, ce)
    want = hand_value(
        model, lambda: ce(hand_moments(model, x, VARIANCE["logistic"](0.8))[0], y).mean()
    )
    assert_same(got, want)


@pytest.mark.parametrize("output", ["mean", "sample"])
@pytest.mark.parametrize("norm", [None, "affine"])
def test_adf_on_a_convnet_with_an_average_head_matches_the_hand_recursion(norm, output):
    torch.manual_seed(8)
    model = models.convnet(
        (1, 5, 5), 3, channels=(2, 3), norm=norm, binary_weights=True, binary_first=False
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    y = torch.tensor([2, 0])
    torch.manual_seed(40)
    got = gradient(get("adf", output=output), model, x, y, ce)

    def loss():
        torch.manual_seed(40)
        mu, nu = hand_moments(model, x, math.pi**2 / 3)
        return ce(
            mu + torch.sqrt(nu) * torch.randn_like(mu) if output == "sample" else mu, y
        ).mean()

    assert_same(got, hand_value(model, loss))


def test_adf_on_a_conv_stage_with_a_flatten_head_matches_the_hand_recursion():
    torch.manual_seed(9)
    model = SBN(
        [Stage(nn.Conv2d(1, 2, 3, stride=2, padding=1), BinaryUnit("normal", 0.9))],
        Head(nn.Linear(8, 3)),
        (1, 4, 4),
    ).double()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([2, 0, 1])
    torch.manual_seed(41)
    got = gradient(get("adf", output="sample"), model, x, y, ce)

    def loss():
        torch.manual_seed(41)
        mu, nu = hand_moments(model, x, 0.81)
        return ce(mu + torch.sqrt(nu) * torch.randn_like(mu), y).mean()

    assert_same(got, hand_value(model, loss))


@pytest.mark.parametrize("name, output", [("adf", "sample"), ("local_reparam", "sample")])
def test_sampled_logits_and_units_match_the_hand_recursion(name, output):
    model, x, y = two_stage("normal", 1.3)
    draws = name == "local_reparam"
    torch.manual_seed(30)
    got = gradient(get(name, output=output), model, x, y, ce)

    def loss():
        torch.manual_seed(30)
        mu, nu = hand_moments(model, x, 1.3**2, draws=draws)
        return ce(mu + torch.sqrt(nu) * torch.randn_like(mu), y).mean()

    assert_same(got, hand_value(model, loss))


def test_local_reparam_mean_output_and_defaults():
    assert get("adf").output == "mean" and get("local_reparam").output == "sample"
    assert not get("adf").sample_units and get("local_reparam").sample_units
    model, x, y = two_stage("uniform", 1.5)
    torch.manual_seed(31)
    got = gradient(get("local_reparam", output="mean"), model, x, y, ce)

    def loss():
        torch.manual_seed(31)
        return ce(hand_moments(model, x, 0.75, draws=True)[0], y).mean()

    assert_same(got, hand_value(model, loss))
