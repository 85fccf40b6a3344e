"""REINFORCE, ARM, ST, ADF and the local reparameterization against exact enumeration.

Statistical checks: ``calls`` independent calls, each on the data replicated ``reps`` times, give
i.i.d. estimates ĝ_c whose mean is the estimator's expectation. For an unbiased estimator
z = (mean_c ĝ_c - g) / (std_c ĝ_c / sqrt(calls)) is ≈ N(0, 1) per coordinate (calls ≥ 200).
Bonferroni: requiring |z| ≤ z* = Φ⁻¹(1 - α / (2d)) for all d coordinates of a check bounds its
false-alarm probability by α = 1e-3 (a little more with the t tail at calls - 1 degrees of
freedom). Seeds are fixed, so every check is deterministic.
"""

import math
from statistics import NormalDist

import pytest
import torch
from sbn_testing import ce, gradient, logistic_loss, toy_net
from torch import nn

from sbnkit import models
from sbnkit.errors import UserError
from sbnkit.estimators import get
from sbnkit.network import SBN, Head, Stage
from sbnkit.units import BinaryUnit

ALPHA = 1e-3
PATH_ESTIMATORS = ["psa", "reinforce", "arm", "adf", "local_reparam", "exact"]


def samples(est, model, x, y, loss_fn, calls, reps=1):
    xr = x.repeat(reps, *([1] * (x.dim() - 1)))
    yr = y.repeat(reps)
    runs = [gradient(est, model, xr, yr, loss_fn)[1] for _ in range(calls)]
    return {n: torch.stack([g[n] for g in runs]) for n in runs[0]}


def max_z(grads, exact, names):
    """The largest |z| over ``names`` and the Bonferroni threshold for their coordinates."""
    d = sum(exact[n].numel() for n in names)
    z_crit = NormalDist().inv_cdf(1 - ALPHA / (2 * d))
    worst = 0.0
    for n in names:
        se = grads[n].std(0) / math.sqrt(grads[n].shape[0])
        err = (grads[n].mean(0) - exact[n]).abs() - 1e-12 * (1.0 + exact[n].abs())  # roundoff
        worst = max(worst, float((err.clamp_min(0.0) / se.clamp_min(1e-300)).max()))
    return worst, z_crit


@pytest.fixture(scope="module")
def toy_subset():
    model, x, y = toy_net()
    idx = torch.arange(0, 200, 25)  # 4 points per class
    x, y = x[idx], y[idx]
    return model, x, y, gradient(get("exact"), model, x, y, logistic_loss)[1]


@pytest.mark.parametrize(
    ("name", "options"), [("reinforce", {}), ("reinforce", {"baseline": True}), ("arm", {})]
)
def test_unbiased_in_every_layer(toy_subset, name, options):
    model, x, y, exact = toy_subset
    torch.manual_seed(0)
    grads = samples(get(name, **options), model, x, y, logistic_loss, 200, 50)
    worst, z_crit = max_z(grads, exact, list(exact))
    assert worst <= z_crit


def test_the_statistical_check_detects_st_bias(toy_subset):
    """Power: the same check flags ST, which is biased in every hidden layer."""
    model, x, y, exact = toy_subset
    torch.manual_seed(0)
    grads = samples(get("st"), model, x, y, logistic_loss, 200, 50)
    worst, z_crit = max_z(grads, exact, ["stages.0.op.weight", "stages.0.op.bias"])
    assert worst > z_crit


def test_st_unbiased_for_the_last_hidden_layer_when_the_loss_is_linear_in_it(toy_subset):
    """With f linear in x^{L-1}, E[f | a] is linear in E[x | a] = 2F(a) - 1, whose derivative
    is exactly ST's backward factor 2 p(a): unbiased for the last stage (and the head)."""
    model, x, y, _ = toy_subset
    linear = lambda eta, t: t * eta[:, 0]  # noqa: E731
    exact = gradient(get("exact"), model, x, y, linear)[1]
    torch.manual_seed(1)
    grads = samples(get("st"), model, x, y, linear, 200, 50)
    names = ["stages.2.op.weight", "stages.2.op.bias", "head.linear.weight", "head.linear.bias"]
    worst, z_crit = max_z(grads, exact, names)
    assert worst <= z_crit


def test_reinforce_unbiased_with_bernoulli_weights():
    torch.manual_seed(4)
    model = models.mlp((2,), 2, hidden=(2, 2), binary_weights=True, binary_head=True).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    exact = gradient(get("exact", max_states=2**24), model, x, y, ce)[1]
    assert sum("original" in n for n in exact) == 3
    torch.manual_seed(2)
    grads = samples(get("reinforce"), model, x, y, ce, 400, 10)
    worst, z_crit = max_z(grads, exact, list(exact))
    assert worst <= z_crit


@pytest.mark.parametrize("noise", ["logistic", "normal", "uniform"])
@pytest.mark.parametrize("name", ["adf", "local_reparam"])
def test_moment_propagation_is_exact_for_one_stage_and_a_linear_loss(noise, name):
    """A real input gives ν = 0, so p = F(μ) exactly; the logits' mean is then exact."""
    torch.manual_seed(6)
    model = models.mlp((3,), 2, hidden=(4,), noise=noise, noise_scale=0.8).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    linear = lambda eta, t: eta[:, 0] * (2.0 * t - 1.0)  # noqa: E731
    value, exact = gradient(get("exact"), model, x, y, linear)
    got_value, got = gradient(get(name, output="mean"), model, x, y, linear)
    torch.testing.assert_close(got_value, value, rtol=1e-12, atol=1e-14)
    for n, g in exact.items():
        torch.testing.assert_close(got[n], g, rtol=1e-10, atol=1e-13)


def test_adf_is_deterministic_and_handles_norms_and_bernoulli_weights():
    torch.manual_seed(8)
    model = models.convnet((1, 6, 6), 3, channels=(2, 3), norm="affine", binary_weights=True)
    model = model.double()
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    v1, g1 = gradient(get("adf"), model, x, y, ce)
    v2, g2 = gradient(get("adf"), model, x, y, ce)
    assert v1 == v2 and all(torch.equal(g1[n], g2[n]) for n in g1)
    latents = [n for n in g1 if "original" in n]
    assert latents and all(g1[n].abs().sum() > 0 for n in latents)
    _, g3 = gradient(get("local_reparam"), model, x, y, ce)
    assert all(torch.isfinite(g).all() for g in g3.values())


def extreme_model():
    torch.manual_seed(9)
    model = models.mlp((2,), 2, hidden=(4, 4)).double()
    with torch.no_grad():
        for s in model.stages:
            s.op.weight.mul_(1e4)
    return model


@pytest.mark.parametrize("name", PATH_ESTIMATORS)
def test_extreme_preactivations_give_finite_gradients(name):
    model = extreme_model()
    x = torch.randn(6, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    with torch.no_grad():
        assert model.stages[1].preactivation(model.stages[0](x)).abs().max() > 1e3
    torch.manual_seed(0)
    value, grads = gradient(get(name), model, x, y, None)
    assert torch.isfinite(value)
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("name", PATH_ESTIMATORS)
def test_path_estimators_accept_flatten(name):
    torch.manual_seed(10)
    model = models.mlp((1, 2, 2), 2, hidden=(3, 3)).double()
    assert isinstance(model.stages[0], nn.Flatten)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    value, grads = gradient(get(name), model, x, torch.tensor([0, 1, 1]), ce)
    assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("name", ["psa", "reinforce", "arm", "adf", "local_reparam"])
def test_training_mode_batchnorm_runs(name):
    """Batch statistics are part of the forward pass (PSA: a constant flip gain)."""
    torch.manual_seed(11)
    model = models.convnet((1, 6, 6), 3, channels=(2, 3), norm="batch").double().train()
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    value, grads = gradient(get(name), model, x, torch.tensor([0, 2, 1, 1]), ce)
    assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in grads.values())
    assert grads["stages.0.norm.weight"].abs().sum() > 0


@pytest.mark.parametrize("name", PATH_ESTIMATORS)
def test_path_estimators_refuse_what_they_cannot_walk(name):
    x, y = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1])
    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double()
    with pytest.raises(UserError, match="SBN"):
        get(name).loss(plain, x, y)
    pooled = SBN(
        [Stage(nn.Conv2d(1, 2, 3, padding=1), BinaryUnit()), nn.MaxPool2d(2)],
        Head(nn.Linear(8, 2)),
        (1, 4, 4),
    ).double()
    with pytest.raises(UserError, match="MaxPool2d"):
        get(name).loss(pooled, x, y)
    model = models.mlp((1, 4, 4), 2, hidden=(2,)).double()
    with pytest.raises(UserError, match="one loss per example"):
        get(name).loss(model, x, y, lambda eta, t: ce(eta, t)[:1])


def test_arm_refusals():
    x, y = torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(UserError, match="logistic"):
        get("arm").loss(models.mlp((3,), 2, hidden=(2,), noise="uniform").double(), x, y)
    with pytest.raises(UserError, match="Bernoulli"):
        get("arm").loss(models.mlp((3,), 2, hidden=(2,), binary_weights=True).double(), x, y)


def test_bad_options_are_user_errors():
    with pytest.raises(UserError):
        get("reinforce", decay=1.5)
    with pytest.raises(UserError):
        get("adf", output="median")
    with pytest.raises(UserError):
        get("exact", max_states=0)
