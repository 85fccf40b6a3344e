"""Bernoulli weights: sampling law, identity backward (mirror descent), modes, clip, binarize."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import sbnkit
from sbnkit.errors import UserError
from sbnkit.units import sign
from sbnkit.weights import (
    BernoulliWeight,
    binarize,
    clip_latents_,
    latent_parameters,
    make_binary,
    real_parameters,
    using_weight_mode,
)


def test_sample_law_is_bernoulli_with_p_equal_F_eta():
    torch.manual_seed(0)
    p = BernoulliWeight("logistic", 0.5)
    eta = torch.tensor([-2.0, -0.3, 0.0, 0.4, 1.5], dtype=torch.float64)
    draws = torch.stack([p(eta) for _ in range(40_000)])
    assert set(draws.unique().tolist()) == {-1.0, 1.0}
    p_plus = torch.sigmoid(2 * eta)  # logistic(½): P(w = +1) = σ(2η), E[w] = tanh(η)
    se = torch.sqrt(p_plus * (1 - p_plus) / draws.shape[0])
    # 5 SE per coordinate: false alarm probability < 3e-6 over 5 coordinates.
    assert ((draws == 1).double().mean(0) - p_plus).abs().le(5 * se).all()


@pytest.mark.parametrize("mode", ["sample", "mode", "mean"])
def test_backward_is_identity_in_every_mode(mode):
    p = BernoulliWeight("uniform", 1.0, mode=mode)
    eta = torch.randn(7, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(7, dtype=torch.float64)
    (g,) = torch.autograd.grad((p(eta) * upstream).sum(), eta)
    assert torch.equal(g, upstream)


def test_mode_and_mean_values():
    eta = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], dtype=torch.float64)
    assert torch.equal(
        BernoulliWeight(mode="mode")(eta), torch.tensor([-1.0, -1, 1, 1, 1]).double()
    )
    torch.testing.assert_close(BernoulliWeight("logistic", 0.5, mode="mean")(eta), torch.tanh(eta))
    torch.testing.assert_close(BernoulliWeight("uniform", 1.0, mode="mean")(eta), eta.clamp(-1, 1))


def test_sgd_on_latents_is_mirror_descent_on_the_mean():
    """One SGD step on η with the identity-ST gradient equals the mirror-descent step
    ∇Φ(μ') = ∇Φ(μ) - ε g with the entropic map: μ' = tanh(atanh(μ) - ε g)."""
    torch.manual_seed(0)
    lin = make_binary(nn.Linear(4, 3, bias=False).double(), BernoulliWeight(mode="mean"))
    x = torch.randn(5, 4, dtype=torch.float64)
    mu = lin.weight.detach().clone()
    lin(x).pow(2).sum().backward()
    eps = 0.1
    g = latent_parameters(lin)[0].grad.clone()
    torch.optim.SGD(latent_parameters(lin), lr=eps).step()
    expected = torch.tanh(torch.atanh(mu) - eps * g)
    torch.testing.assert_close(lin.weight.detach(), expected)


def test_latent_weight_decay_is_the_entropy_gradient():
    """Weight decay c on sbnkit's latents η is mirror descent on c·KL(q ‖ uniform) over the
    weight means μ = E[w]: with the entropic map, tanh(atanh(μ) - ε c ∇_μ KL(μ)) is the new
    mean, where KL(μ) = Σ p log p + (1 - p) log(1 - p) + log 2 with p = P(w = +1) = (1 + μ)/2."""
    lin = make_binary(nn.Linear(2, 2, bias=False).double(), BernoulliWeight(mode="mean"))
    eta = latent_parameters(lin)[0]
    with torch.no_grad():
        eta.copy_(torch.tensor([[-1.1, -0.1], [0.3, 1.8]], dtype=torch.float64))
    bern = lin.parametrizations.weight[0]
    mu = lin.weight.detach().clone().requires_grad_(True)
    torch.testing.assert_close(bern.noise.cdf(eta.detach()), (1 + mu.detach()) / 2)
    p = (1 + mu) / 2
    kl = (p * p.log() + (1 - p) * (1 - p).log() + math.log(2)).sum()
    (g_kl,) = torch.autograd.grad(kl, mu)
    eps, c = 0.1, 0.5
    opt = torch.optim.SGD([eta], lr=eps, weight_decay=c)
    (0.0 * lin.weight.sum()).backward()  # no loss: the step is the decay alone
    opt.step()
    torch.testing.assert_close(
        lin.weight.detach(), torch.tanh(torch.atanh(mu.detach()) - eps * c * g_kl)
    )


def test_clip_projects_latents():
    lin = make_binary(nn.Linear(10, 10), BernoulliWeight(clip=1.0))
    with torch.no_grad():
        lin.parametrizations.weight.original.mul_(100)
    clip_latents_(lin)
    assert lin.parametrizations.weight.original.abs().max() <= 1.0


def test_latent_and_real_parameters_partition_the_model():
    model = sbnkit.models.mlp(
        (6,), 3, hidden=(5, 4), norm="batch", binary_weights=True, binary_head=False
    )
    latent, real = latent_parameters(model), real_parameters(model)
    assert len(latent) == 2
    assert {id(p) for p in latent} | {id(p) for p in real} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in latent} & {id(p) for p in real}


def test_binarize_gives_exact_pm1_and_the_same_mode_network():
    torch.manual_seed(0)
    model = sbnkit.models.convnet(
        (1, 28, 28), 10, channels=(4, 6), norm="batch", binary_weights=True, binary_head=True
    ).eval()
    plain = binarize(model)
    for m in plain.modules():
        assert not parametrize.is_parametrized(m)
    weights = [plain.stages[0].op.weight, plain.stages[1].op.weight, plain.head.linear.weight]
    for w in weights:
        assert set(w.unique().tolist()) == {-1.0, 1.0}
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(
        sbnkit.predict_proba(model, x, "mode"), sbnkit.predict_proba(plain, x, "mode")
    )
    assert parametrize.is_parametrized(model.stages[0].op, "weight")  # the original is untouched


def test_using_weight_mode_restores():
    model = sbnkit.models.mlp((3,), 2, hidden=(4,), binary_weights=True, weight_mode="sample")
    with using_weight_mode(model, "mode"):
        assert model.stages[0].op.parametrizations.weight[0].mode == "mode"
    assert model.stages[0].op.parametrizations.weight[0].mode == "sample"


@pytest.mark.parametrize(
    "bad",
    [
        lambda: BernoulliWeight(mode="argmax"),
        lambda: BernoulliWeight(clip=-1.0),
        lambda: BernoulliWeight(clip=0.0),
        lambda: BernoulliWeight("cauchy"),
        lambda: make_binary(nn.ReLU()),
    ],
)
def test_bad_weight_options_raise(bad):
    with pytest.raises(UserError):
        bad()


def test_init_scale_sets_latent_spread():
    torch.manual_seed(0)
    lin = make_binary(nn.Linear(100, 100), BernoulliWeight(init_scale=1.0))
    std = float(lin.parametrizations.weight.original.detach().std())
    assert math.isclose(std, 1.0, rel_tol=1e-5)


def test_right_inverse_scales_by_the_std_and_clips():
    w0 = torch.tensor([[1.0, -3.0], [2.0, 0.5]], dtype=torch.float64)
    got = BernoulliWeight(init_scale=2.0).right_inverse(w0)
    torch.testing.assert_close(got, 2.0 * w0 / w0.std())
    clipped = BernoulliWeight(clip=0.7, init_scale=2.0).right_inverse(w0)
    torch.testing.assert_close(clipped, (2.0 * w0 / w0.std()).clamp(-0.7, 0.7))
    one = torch.tensor([-4.0], dtype=torch.float64)  # a single weight: divided by its magnitude
    torch.testing.assert_close(BernoulliWeight(init_scale=0.5).right_inverse(one), one / 8)
    zero = torch.zeros(3, dtype=torch.float64)
    assert torch.equal(BernoulliWeight().right_inverse(zero), zero)


def test_defaults_are_logistic_half_sampled_unclipped():
    p = BernoulliWeight()
    assert isinstance(p.noise, sbnkit.noise.Logistic) and p.noise.scale == 0.5
    assert p.mode == "sample" and p.clip is None and p.init_scale == 1.0


def test_clip_latents_leaves_unclipped_parametrizations_alone():
    model = nn.Sequential(
        make_binary(nn.Linear(3, 3), BernoulliWeight(clip=0.5)), make_binary(nn.Linear(3, 3))
    )
    values = torch.tensor([[-2.0, -0.3, 0.1], [0.5, 0.7, 2.0], [-0.5, -0.6, 0.0]])
    with torch.no_grad():
        for eta in latent_parameters(model):
            eta.copy_(values)
    clip_latents_(model)
    first, second = latent_parameters(model)
    assert torch.equal(first, values.clamp(-0.5, 0.5)) and torch.equal(second, values)


def test_binarize_keeps_bias_training_flag_and_conv_geometry():
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1, bias=True).double()
    lin = nn.Linear(4, 2, bias=False).double()
    model = nn.Sequential(make_binary(conv), make_binary(lin))
    model[1].eval()
    plain = binarize(model)
    assert isinstance(plain[0], nn.Conv2d) and isinstance(plain[1], nn.Linear)
    assert plain[0].stride == (2, 2) and plain[0].padding == (1, 1) and plain[1].bias is None
    assert plain[0].training and not plain[1].training
    assert torch.equal(plain[0].bias, conv.bias) and plain[0].weight.dtype == torch.float64
    for got, ref in ((plain[0], conv), (plain[1], lin)):
        assert torch.equal(got.weight, sign(ref.parametrizations.weight.original.detach()))
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    with using_weight_mode(model, "mode"):
        torch.testing.assert_close(plain[0](x), model[0](x))


def test_using_weight_mode_refuses_unknown_modes_and_restores_after_errors():
    model = sbnkit.models.mlp((3,), 2, hidden=(4,), binary_weights=True, weight_mode="mean")
    with pytest.raises(UserError), using_weight_mode(model, "argmax"):
        pass
    with pytest.raises(RuntimeError), using_weight_mode(model, "sample"):
        raise RuntimeError
    assert model.stages[0].op.parametrizations.weight[0].mode == "mean"


def test_sgd_mirror_descent_with_decay_one_over_n_is_the_bayesbinn_update():
    """The VI claim in its SGD form: mirror descent on the Bernoulli means (SGD on the latents η)
    with latent weight decay c = 1/N and step ε = α N is BayesBiNN's Bayesian learning rule
    ``λ ← λ - α (N ĝ + λ)`` (no momentum, KL weight 1, uniform prior), given the same estimate
    ĝ of ∂ℓ̄/∂μ. BayesBiNN's ĝ is its relaxed-sample scale times ∂ℓ̄/∂w."""
    from sbnkit.optim.functional import bayesbinn_sample, bayesbinn_update

    torch.manual_seed(3)
    n, alpha, tau = 54_000, 2e-5, 0.7
    lam = 2 * torch.randn(6, 5, dtype=torch.float64)
    w = bayesbinn_sample(lam, torch.rand(6, 5, dtype=torch.float64), tau)
    grad = 1e-4 * torch.randn(6, 5, dtype=torch.float64)  # ∂ℓ̄/∂w at the relaxed sample w
    mu = torch.tanh(lam)
    new_lam, _ = bayesbinn_update(
        lam, torch.zeros_like(lam), grad, w, mu, 1,
        lr=alpha, momentum=0.0, temperature=tau, train_size=n,
    )  # fmt: skip
    g_mu = (1 - w * w + 1e-10) / tau / (1 - mu * mu + 1e-10) * grad
    eta = lam.clone().requires_grad_(True)
    eta.grad = g_mu
    torch.optim.SGD([eta], lr=alpha * n, weight_decay=1.0 / n).step()
    torch.testing.assert_close(eta.detach(), new_lam, rtol=1e-12, atol=1e-12)
