"""Binary units: forward values and closed-form backward of every rule and proxy, and the
unbiasedness of the principled ST against exact enumeration."""

import itertools
import math

import pytest
import torch

from sbnkit import noise as noise_lib
from sbnkit.errors import UserError
from sbnkit.units import PROXIES, BinaryUnit, Rule, sign, using_rule

A = torch.tensor([-3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.3, 0.9, 1.0, 2.5], dtype=torch.float64)
NOISES = [
    noise_lib.Logistic(1.0),
    noise_lib.Uniform(1.0),
    noise_lib.Triangular(1.0),
    noise_lib.Normal(1.0),
    noise_lib.Logistic(0.5),
]


def closed_form_proxy_grad(proxy, a, nz, beta=5.0):
    """The table of units.py, written out independently."""
    if proxy == "noise":
        return 2 * nz.pdf(a)
    if proxy == "identity":
        return torch.ones_like(a)
    if proxy == "htanh":
        return (a.abs() <= 1).double()
    if proxy == "tanh":
        return 1 / torch.cosh(a) ** 2
    if proxy == "approxsign":
        return torch.where(a.abs() <= 1, 2 - 2 * a.abs(), torch.zeros_like(a))
    sig = torch.sigmoid(beta * a)  # SwishSign f(a) = 2σ(βa)(1 + βa(1 - σ(βa))) - 1
    return 2 * beta * sig * (1 - sig) * (2 + beta * a * (1 - 2 * sig))


def backward_of(unit, a):
    a = a.clone().requires_grad_(True)
    out = unit(a)
    (g,) = torch.autograd.grad(out.sum(), a)
    return out.detach(), g


def test_sign_of_zero_is_plus_one():
    assert sign(torch.tensor([0.0, -0.0, 1e-30, -1e-30])).tolist() == [1.0, 1.0, 1.0, -1.0]


@pytest.mark.parametrize("nz", NOISES, ids=repr)
def test_st_forward_is_a_sample_and_backward_is_two_pdf(nz):
    torch.manual_seed(0)
    unit = BinaryUnit(nz, rule="st")
    out, g = backward_of(unit, A)
    assert set(out.tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(g, 2 * nz.pdf(A), rtol=1e-12, atol=0)
    many = torch.stack([unit(A) for _ in range(40_000)])
    p_plus = nz.cdf(A)
    se = torch.sqrt(p_plus * (1 - p_plus) / many.shape[0])
    # 5 SE per coordinate: a false alarm has probability < 1e-5 over all 10 coordinates.
    assert ((many == 1).double().mean(0) - p_plus).abs().le(5 * se + 1e-12).all()


def test_logistic_st_is_the_deep_st_of_psa():
    _, g = backward_of(BinaryUnit("logistic", 1.0, "st"), A)
    torch.testing.assert_close(g, 2 * torch.sigmoid(A) * (1 - torch.sigmoid(A)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize("nz", NOISES[:2], ids=repr)
def test_det_st_forward_is_sign_and_backward_is_the_proxy(proxy, nz):
    unit = BinaryUnit(nz, rule=Rule("det_st", proxy))
    out, g = backward_of(unit, A)
    assert torch.equal(out, torch.where(A >= 0, 1.0, -1.0).double())
    torch.testing.assert_close(g, closed_form_proxy_grad(proxy, A, nz), rtol=1e-10, atol=1e-14)


def test_det_st_defaults_to_htanh_and_st_to_noise():
    assert Rule("det_st").resolved_proxy == "htanh"
    assert Rule("st").resolved_proxy == "noise"
    _, g = backward_of(BinaryUnit("logistic", rule="det_st"), A)
    torch.testing.assert_close(g, (A.abs() <= 1).double())


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_concrete_forward_and_pathwise_backward(tau):
    torch.manual_seed(3)
    unit = BinaryUnit("logistic", rule=Rule("concrete", tau=tau))
    torch.manual_seed(3)
    z = unit.noise.sample(A)
    torch.manual_seed(3)
    out, g = backward_of(unit, A)
    torch.testing.assert_close(out, torch.tanh((A - z) / (2 * tau)))
    torch.testing.assert_close(g, (1 - out**2) / (2 * tau))


@pytest.mark.parametrize("nz", NOISES, ids=repr)
def test_mean_rule_is_the_conditional_mean(nz):
    out, g = backward_of(BinaryUnit(nz, rule="mean"), A)
    torch.testing.assert_close(out, 2 * nz.cdf(A) - 1)
    torch.testing.assert_close(g, 2 * nz.pdf(A), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "rule",
    [
        Rule("st"),
        Rule("det_st", "swishsign"),
        Rule("det_st", "tanh"),
        Rule("concrete", tau=0.01),
        Rule("mean"),
    ],
    ids=str,
)
@pytest.mark.parametrize("nz", NOISES, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_preactivations_give_finite_values_and_gradients(rule, nz, dtype):
    a = torch.tensor([-1e30, -1e4, -80.0, 0.0, 80.0, 1e4, 1e30], dtype=dtype)
    out, g = backward_of(BinaryUnit(nz, rule=rule), a)
    assert torch.isfinite(out).all() and torch.isfinite(g).all()


def test_rules_are_frozen_values():
    rule = Rule("det_st", "tanh")
    assert rule == Rule("det_st", "tanh") and hash(rule) == hash(Rule("det_st", "tanh"))
    assert Rule() == Rule("st", None, 1.0, 5.0)
    with pytest.raises(AttributeError):
        rule.kind = "st"


def test_uniform_st_backward_includes_the_edges_like_htanh():
    a = torch.tensor([-2.0, -1.0, 1.0, 2.0], dtype=torch.float64)
    _, g = backward_of(BinaryUnit("uniform", 1.0, "st"), a)
    torch.testing.assert_close(g, torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64))
    _, g = backward_of(BinaryUnit("uniform", 2.0, "st"), 2 * a)
    torch.testing.assert_close(g, torch.tensor([0.0, 0.5, 0.5, 0.0], dtype=torch.float64))


def test_using_rule_restores_the_rules():
    units = torch.nn.Sequential(BinaryUnit(rule="st"), BinaryUnit(rule="mean"))
    with using_rule(units, "det_st"):
        assert all(u.rule.kind == "det_st" for u in units)
    assert [u.rule.kind for u in units] == ["st", "mean"]


@pytest.mark.parametrize(
    "bad", [dict(kind="stochastic"), dict(kind="st", proxy="relu"), dict(kind="concrete", tau=0.0)]
)
def test_bad_rules_raise(bad):
    with pytest.raises(UserError):
        Rule(**bad)


def exact_linear_head_gradient(W1, b1, W2, b2, x, c, nz):
    """E over all hidden states of c·(W2 h + b2), by enumeration, and its autograd gradient."""
    params = [t.clone().requires_grad_(True) for t in (W1, b1, W2, b2)]
    w1, v1, w2, v2 = params
    a = x @ w1.T + v1
    total = 0
    for h in itertools.product([-1.0, 1.0], repeat=W1.shape[0]):
        h = torch.tensor(h, dtype=torch.float64)
        prob = torch.prod(nz.cdf(h * a), dim=1)  # P(h_j) = F(h_j a_j) for symmetric noise
        total = total + prob * c * (w2[0] @ h + v2[0])
    loss = total.mean()
    return loss, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("nz", NOISES, ids=repr)
def test_st_is_unbiased_when_the_loss_is_linear_in_the_hidden_units(nz):
    """One hidden layer; loss = c·(W2 h + b2) is linear in h, so the mean of ST estimates is the
    exact gradient (this checks the factor 2·pdf in the backward)."""
    import sbnkit

    torch.manual_seed(1)
    model = sbnkit.models.mlp((3,), 1, hidden=(4,), noise=nz).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5, 1.5, -1.0, 0.7], dtype=torch.float64)
    w1, b1 = model.stages[0].op.weight.detach(), model.stages[0].op.bias.detach()
    w2, b2 = model.head.linear.weight.detach(), model.head.linear.bias.detach()
    exact_loss, exact = exact_linear_head_gradient(w1, b1, w2, b2, x, c, nz)

    est = sbnkit.estimators.get("st")
    n, batches = 200, 40
    xs, cs = x.repeat(n, 1), c.repeat(n)
    means = []
    for _ in range(batches):
        # n independent copies of the 6 points in one batch: the gradient of the batch mean is
        # the mean of n single-sample estimates of the exact gradient.
        model.zero_grad()
        est.loss(model, xs, cs, lambda logits, y: y * logits[:, 0]).backward()
        means.append([p.grad.clone() for p in model.parameters()])
    for k, g_exact in enumerate(exact):
        samples = torch.stack([m[k] for m in means])
        mean, se = samples.mean(0), samples.std(0) / math.sqrt(batches)
        # 5 SE per coordinate (t with 39 dof: P(|t| > 5) ≈ 1e-5; 26 coordinates); the floor
        # covers W1 and b1, whose ST estimate has zero variance when the loss is linear in h.
        tol = 5 * se + 1e-12 * g_exact.abs().max()
        assert (mean - g_exact).abs().le(tol).all(), (k, mean, g_exact)
    assert torch.isfinite(exact_loss)
