"""Binary-weight methods (sbnkit.optim): parametrizations, optimizers, registry, config errors.

float64 throughout; expected values are computed by hand from the update rules in each test.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sbnkit import UserError, binarize, optim
from sbnkit.optim import (
    AdaSTE,
    AdaSTEWeight,
    BayesBiNN,
    BayesBiNNWeight,
    BinaryConnect,
    Bop,
    Schedules,
    SignWeight,
    TanhWeight,
    philox,
)
from sbnkit.optim.functional import adaste_factor, adaste_forward, bayesbinn_sample
from sbnkit.train import parse_config
from sbnkit.weights import (
    latent_parameters,
    make_binary,
    real_parameters,
    unsaturated_ratio,
    using_weight_mode,
)

D = torch.float64
OPTIONS = {"bayesbinn": {"train_size": 1000}, "adaste": {"train_size": 1000}}


def _net(method: str, seed: int = 0, **weight_options) -> nn.Module:
    """A small ReLU network (binary weights on both Linears, real BatchNorm affine in between)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).to(D)
    return optim.attach(model, method, **weight_options)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 6, generator=gen, dtype=D), torch.randint(0, 3, (16,), generator=gen)


def _steps(model, opt, hooks, first: int, count: int, x, y) -> None:
    for k in range(first, first + count):
        torch.manual_seed(100 + k)  # the forward's randomness (samples) is seeded per step
        hooks.epoch_start()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hooks.step_end()


@pytest.mark.parametrize("method", optim.names())
def test_state_dict_round_trip_is_bit_identical(method):
    x, y = _data()
    make = optim.get(method).make_optimizer
    a = _net(method)
    opt_a = make(latent_parameters(a), **OPTIONS.get(method, {}))
    _steps(a, opt_a, Schedules(a, [opt_a]), 0, 6, x, y)

    b = _net(method)
    opt_b = make(latent_parameters(b), **OPTIONS.get(method, {}))
    _steps(b, opt_b, Schedules(b, [opt_b]), 0, 3, x, y)
    buf = io.BytesIO()
    torch.save({"model": b.state_dict(), "optim": opt_b.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    c = _net(method, seed=7)  # different initial latents: everything must come from the load
    c.load_state_dict(saved["model"])
    opt_c = make(latent_parameters(c), **OPTIONS.get(method, {}))
    opt_c.load_state_dict(saved["optim"])
    _steps(c, opt_c, Schedules(c, [opt_c]), 3, 3, x, y)

    start = _net(method).parameters()
    moved = any(not torch.equal(p, q) for p, q in zip(a.parameters(), start, strict=True))
    assert moved, f"{method} did not change any latent in 6 steps"
    for (name, p), (_, q) in zip(a.state_dict().items(), c.state_dict().items(), strict=True):
        assert torch.equal(p, q), f"{method}: {name} differs after the round trip"


@pytest.mark.parametrize("method", optim.names())
def test_binarize_gives_exact_pm1_weights_and_the_mode_network(method):
    x, y = _data()
    model = _net(method)
    opt = optim.get(method).make_optimizer(latent_parameters(model), **OPTIONS.get(method, {}))
    _steps(model, opt, Schedules(model, [opt]), 0, 2, x, y)
    plain = binarize(model)
    linears = [m for m in plain.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 and not latent_parameters(plain)
    for m in linears:
        assert not nn.utils.parametrize.is_parametrized(m)
        assert set(m.weight.unique().tolist()) <= {-1.0, 1.0}
    model.eval()
    plain.eval()
    with torch.no_grad(), using_weight_mode(model, "mode"):
        torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)


def test_latent_and_real_parameters_split_every_method():
    for method in optim.names():
        model = _net(method)
        latent, real = latent_parameters(model), real_parameters(model)
        assert len(latent) == 2 and len(real) == 4  # two biases, BatchNorm weight and bias
        assert {id(p) for p in latent}.isdisjoint({id(p) for p in real})


def test_adaste_backward_is_rho_times_grad():
    alpha, beta = 0.01, 0.3
    layer = nn.Linear(4, 3, bias=False).to(D)
    make_binary(layer, AdaSTEWeight(alpha, beta, init=1.0))
    theta = torch.tensor(
        [[2.0, -2.0, 0.5, -0.5], [0.8, 1e-7, -5.0, 0.0], [3.0, -0.99, 0.2, -0.2]], dtype=D
    )
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(3, 4, generator=gen, dtype=D) * 0.01
    g[1, 1], g[2, 0] = 5e-4, -2e-3  # a gated gradient and an away push
    for rule in ("code", "corrected"):
        layer.parametrizations.weight[0].rule = rule
        with torch.no_grad():
            layer.parametrizations.weight.original.copy_(theta)
        layer.zero_grad()
        w = layer.weight
        assert torch.equal(w, adaste_forward(theta, alpha, beta))
        (w * g).sum().backward()  # ∂ℓ/∂w = g
        want = adaste_factor(theta, g, alpha, beta, rule) * g
        assert torch.equal(layer.parametrizations.weight.original.grad, want)


def test_adaste_beta_annealing_eval_sign_and_init():
    p = AdaSTEWeight(alpha=0.01, beta=0.01, beta_rate=1.05)
    layer = make_binary(nn.Linear(5, 4).to(D), p)
    latent = layer.parametrizations.weight.original
    assert set(latent.abs().unique().tolist()) == {10.0}  # ±λ_init
    betas = []
    for _ in range(200):
        p.epoch_start()
        betas.append(float(p.beta))
    assert betas[0] == pytest.approx(0.0105, rel=1e-12)
    assert betas[10] == pytest.approx(0.01 * 1.05**11, rel=1e-12)
    assert betas[-1] == 100.0 and max(betas) == 100.0  # capped at 1/α
    with torch.no_grad():
        latent.copy_(torch.linspace(-0.5, 0.5, 20, dtype=D).view(4, 5))
    p.beta.fill_(0.2)
    assert not torch.equal(layer.weight, torch.sign(latent))
    layer.eval()
    assert set(layer.weight.unique().tolist()) == {-1.0, 1.0}


def test_adaste_optimizer_update_by_hand():
    theta = torch.tensor([10.0, -10.0], dtype=D, requires_grad=True)
    grads = [torch.tensor([1e-4, -2e-4], dtype=D), torch.tensor([-3e-4, 5e-5], dtype=D)]
    lr, m_rate, n, scale, kl = 3e-4, 0.9, 450.0, 10.0, 1.0
    for rule, power in (("code", 2), ("corrected", 1)):
        p = theta.detach().clone().requires_grad_()
        opt = AdaSTE([p], lr=lr, momentum=m_rate, train_size=n, train_scale=scale, rule=rule)
        lam, m = [10.0, -10.0], [0.0, 0.0]
        for step, g in enumerate(grads, start=1):
            p.grad = g.clone()
            opt.step()
            for k in range(2):
                ghat = (n * scale) ** power * float(g[k])
                m[k] = m_rate * m[k] + (1 - m_rate) * (ghat + kl * lam[k])
                lam[k] -= lr * m[k] / (1 - m_rate**step)
            torch.testing.assert_close(p.detach(), torch.tensor(lam, dtype=D), rtol=1e-13, atol=0)


def test_bayesbinn_class_step_uses_the_recorded_sample_and_the_current_mean():
    layer = nn.Linear(3, 2, bias=False).to(D)
    make_binary(layer, BayesBiNNWeight(temperature=0.5, init=1.0))
    lam0 = layer.parametrizations.weight.original.detach().clone()
    opt = BayesBiNN(latent_parameters(layer), lr=0.1, momentum=0.5, train_size=20, prior=0.2)
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(2, 3, generator=gen, dtype=D)
    lam, m = lam0.clone(), torch.zeros(2, 3, dtype=D)
    for step in (1, 2):
        torch.manual_seed(step)
        u = philox.uniform(philox.draw_key(), 6, D).reshape(2, 3)  # the reference stream
        torch.manual_seed(step)
        w = layer.weight
        assert torch.equal(w, bayesbinn_sample(lam, u, 0.5))
        opt.zero_grad()
        (w * g).sum().backward()
        assert torch.equal(layer.parametrizations.weight.original.grad, g)  # identity backward
        opt.step()
        mu = torch.tanh(lam)  # the current latent's mean: no one-step lag
        s = (1 - w.detach() ** 2 + 1e-10) / 0.5 / (1 - mu**2 + 1e-10)
        m = 0.5 * m + 0.5 * (20 * s * g + (lam - 0.2))
        lam = lam - 0.1 * m / (1 - 0.5**step)
        torch.testing.assert_close(
            layer.parametrizations.weight.original.detach(), lam, rtol=1e-14, atol=0
        )
    layer.parametrizations.weight.original.grad = g.clone()
    with pytest.raises(UserError, match="no relaxed sample"):
        opt.step()  # no forward since the previous step, whose sample is used up


def test_bayesbinn_prediction_modes():
    layer = make_binary(nn.Linear(200, 50, bias=False).to(D), BayesBiNNWeight(init=0.3))
    lam = layer.parametrizations.weight.original.detach()
    layer.eval()
    torch.manual_seed(0)
    hard = layer.weight.detach()
    assert set(hard.unique().tolist()) == {-1.0, 1.0}
    # the MC sample is Bernoulli with P(+1) = σ(2λ): mean tanh(0.3) = 0.291 ± 0.01 (3 sd)
    assert float((hard * torch.sign(lam)).mean()) == pytest.approx(math.tanh(0.3), abs=0.02)
    with using_weight_mode(layer, "mode"):
        assert torch.equal(layer.weight, torch.sign(lam))
    with using_weight_mode(layer, "mean"):
        assert torch.equal(layer.weight, torch.tanh(lam))


def test_bop_flips_exactly_where_the_rule_says():
    w = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, -1.0], dtype=D, requires_grad=True)
    opt = Bop([w], lr=0.5, threshold=0.1)
    g1 = torch.tensor([0.4, 0.1, -0.4, 0.4, -0.4, -0.2], dtype=D)
    # m = 0.5 g: [0.2, 0.05, -0.2, 0.2, -0.2, -0.1]; flip iff |m| > 0.1 and sign m = sign w
    w.grad = g1.clone()
    opt.step()
    assert torch.equal(w.detach(), torch.tensor([-1.0, 1.0, 1.0, -1.0, 1.0, -1.0], dtype=D))
    g2 = torch.tensor([0.0, 0.3, 0.0, -0.1, 0.0, -0.3], dtype=D)
    # m = 0.5 m + 0.5 g: [0.1, 0.175, -0.1, 0.05, -0.1, -0.2]; flips: index 1 (w=+1, m>0.1) and
    # index 5 (w=-1, m<-0.1); index 0 has |m| = 0.1, not above τ
    w.grad = g2.clone()
    opt.step()
    assert torch.equal(w.detach(), torch.tensor([-1.0, -1.0, 1.0, -1.0, 1.0, 1.0], dtype=D))
    torch.testing.assert_close(
        opt.state[w]["exp_avg"], torch.tensor([0.1, 0.175, -0.1, 0.05, -0.1, -0.2], dtype=D)
    )


def test_sign_weight_stores_pm1_in_every_mode():
    layer = make_binary(nn.Linear(4, 3).to(D), SignWeight())
    w0 = layer.parametrizations.weight.original.detach().clone()
    assert set(w0.unique().tolist()) <= {-1.0, 1.0}
    for mode in ("sample", "mode", "mean"):
        with using_weight_mode(layer, mode):
            assert torch.equal(layer.weight, w0)


def test_md_tanh_s_forward_schedule_and_full_st():
    p = TanhWeight(beta=1.0, beta_scale=2.0, beta_interval=3, beta_max=5.0)
    layer = make_binary(nn.Linear(3, 2, bias=False).to(D), p)
    theta = layer.parametrizations.weight.original
    assert torch.equal(layer.weight, torch.tanh(theta.detach()))
    g = torch.ones(2, 3, dtype=D)
    (layer.weight * g).sum().backward()
    assert torch.equal(theta.grad, g)  # no tanh' factor
    betas = []
    for _ in range(9):
        p.step_end()
        betas.append(float(p.beta))
    assert betas == [1.0, 1.0, 2.0, 2.0, 2.0, 4.0, 4.0, 4.0, 5.0]
    assert torch.equal(layer.weight, torch.tanh(5.0 * theta.detach()))
    layer.eval()
    assert torch.equal(layer.weight, torch.where(theta >= 0, 1.0, -1.0).to(D))


def test_md_tanh_s_conv_weights_are_sign_theta_in_evaluation_and_unsaturated_counts_beta_theta():
    torch.manual_seed(0)
    conv = make_binary(nn.Conv2d(2, 3, 3, bias=False).to(D), TanhWeight(beta=4.0))
    dense = make_binary(nn.Linear(5, 2, bias=False).to(D), TanhWeight(beta=4.0))
    model = nn.Sequential(conv, dense)  # only walked, never run
    theta = conv.parametrizations.weight.original
    with torch.no_grad():
        theta.copy_(torch.linspace(-0.5, 0.5, theta.numel(), dtype=D).reshape(theta.shape))
        dense.parametrizations.weight.original.fill_(0.3)  # β|θ| = 1.2: saturated
    assert torch.equal(conv.weight, torch.tanh(4.0 * theta.detach()))
    model.eval()
    assert torch.equal(conv.weight, torch.where(theta >= 0, 1.0, -1.0).to(D))
    mask = conv.parametrizations.weight[0].unsaturated(theta.detach())
    assert torch.equal(mask, 4.0 * theta.detach().abs() < 1.0)
    assert int(mask.sum()) == 26  # |θ| = |k/53 - 1/2| < 1/4: k = 14..39
    assert unsaturated_ratio(model) == 26 / (54 + 10)
    assert unsaturated_ratio(_net("md")) is None  # Bernoulli weights have no such notion


def test_binaryconnect_clips_and_md_is_plain_adam():
    torch.manual_seed(0)
    p = torch.tensor([0.95, -0.95, 0.2], dtype=D, requires_grad=True)
    opt = BinaryConnect([p], lr=0.1)
    p.grad = torch.tensor([-1.0, 1.0, 1.0], dtype=D)
    opt.step()  # Adam's first step moves each entry by lr against the gradient's sign
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, -1.0, 0.1], dtype=D))
    md = optim.get("md").make_optimizer([p], lr=0.1, weight_decay=0.01)
    assert isinstance(md, torch.optim.Adam) and md.defaults["weight_decay"] == 0.01
    sgd = optim.get("md").make_optimizer([p], base="sgd", momentum=0.9)
    assert isinstance(sgd, torch.optim.SGD)
    weight = optim.get("md").make_parametrization(mirror="clip", mode="mean")
    assert torch.equal(
        weight(torch.tensor([-2.0, 0.5], dtype=D)), torch.tensor([-1.0, 0.5], dtype=D)
    )


def test_schedules_find_hooks_in_models_and_optimizers():
    model = _net("adaste")
    hooks = Schedules(model, [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1)])
    assert hooks
    hooks.epoch_start()
    assert all(
        float(p.beta) == pytest.approx(0.0105) for p in model.modules() if hasattr(p, "rule")
    )
    assert not Schedules(nn.Linear(2, 2))


BAD_HYPER = [
    (lambda: AdaSTE([torch.zeros(1)], lr=0, train_size=10), "lr must be > 0, got 0"),
    (lambda: AdaSTE([torch.zeros(1)], train_size=0), "train_size must be >= 1, got 0"),
    (
        lambda: AdaSTE([torch.zeros(1)], momentum=1.0, train_size=5),
        r"momentum must lie in \[0, 1\)",
    ),
    (lambda: AdaSTEWeight(alpha=float("nan")), "alpha must be a finite number, got nan"),
    (lambda: AdaSTEWeight(beta=-1), "beta must be > 0, got -1"),
    (lambda: AdaSTEWeight(rule="paper"), "rule must be one of code, corrected"),
    (lambda: BayesBiNNWeight(temperature=0), "temperature must be > 0, got 0"),
    (lambda: BayesBiNN([torch.zeros(1)], train_size=0.5), "train_size must be >= 1"),
    (lambda: BayesBiNN([torch.zeros(1)], lr=-1, train_size=2), "lr must be > 0"),
    (lambda: Bop([torch.zeros(1)], lr=1.5), r"lr must lie in \[0, 1\]"),
    (lambda: Bop([torch.zeros(1)], threshold=-1), "threshold must be >= 0"),
    (lambda: TanhWeight(beta_interval=0), "beta_interval must be a positive integer"),
    (lambda: BinaryConnect([torch.zeros(1)], clip=0), "clip must be > 0"),
    (lambda: optim.get("nope"), "unknown binary-weight method 'nope'"),
    (lambda: optim.get("adaste").make_optimizer([torch.zeros(1)]), "needs train_size"),
    (lambda: optim.get("bop").split({"treshold": 1}), "did you mean threshold"),
]


@pytest.mark.parametrize("build, message", BAD_HYPER)
def test_bad_hyperparameters_raise_one_line(build, message):
    with pytest.raises(ValueError, match=message) as info:
        build()
    assert "\n" not in str(info.value)


BAD_CONFIG = [
    ('name = "adaste"\ntemperature = 1.0', r"unknown key optim\.latent\.temperature"),
    ('name = "bayesbinn"\ntemperature = 0', r"optim\.latent\.temperature must be > 0, got 0"),
    ('name = "bayesbinn"\ntemperature = nan', r"optim\.latent\.temperature must be a finite"),
    ('name = "bayesbinn"\ntrain_size = 0', r"optim\.latent\.train_size must be >= 1, got 0"),
    ('name = "adaste"\nalpha = -0.1', r"optim\.latent\.alpha must be > 0, got -0\.1"),
    ('name = "adaste"\nbeta = 0', r"optim\.latent\.beta must be > 0"),
    ('name = "adaste"\nrule = "paper"', r"optim\.latent\.rule must be one of code, corrected"),
    ('name = "bop"\nlr = 2.0', r"optim\.latent\.lr must lie in \[0, 1\]"),
    ('name = "md_tanh_s"\nbeta_interval = 0', r"optim\.latent\.beta_interval must be a positive"),
    ('name = "sgd"\nmirror = "tanh"', r"unknown key optim\.latent\.mirror"),
    ('name = "md"\nbase = "rmsprop"', r"optim\.latent\.base must be one of adam, sgd"),
    ('name = "fancy"', r"optim\.latent\.name must be one of adam, sgd, binaryconnect"),
    ('name = "adaste"\nmomentum = 1.0', r"optim\.latent\.momentum must lie in \[0, 1\)"),
    ('name = "bayesbinn"\ntrain_scale = 0', r"optim\.latent\.train_scale must be > 0"),
]


@pytest.mark.parametrize("table, message", BAD_CONFIG)
def test_bad_method_configs_give_one_line_errors(table, message):
    with pytest.raises(UserError, match=message) as info:
        parse_config(f"[optim.latent]\n{table}")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"unknown key optim\.real\.temperature"):
        parse_config("[optim.real]\ntemperature = 1.0")


def test_model_width_and_data_init_are_checked():
    with pytest.raises(UserError, match=r"model\.width must be positive, got 0"):
        parse_config('[model]\nname = "vgg16"\nwidth = 0\n[data]\nname = "cifar10"')
    with pytest.raises(UserError, match=r"model\.init = 'data' needs an SBN model"):
        parse_config('[model]\nname = "vgg16"\ninit = "data"\n[data]\nname = "cifar10"')


def test_method_options_in_config_round_trip():
    cfg = parse_config('[optim.latent]\nname = "adaste"\nrule = "corrected"\ntrain_scale = 10')
    assert cfg.optim.latent.options == {"rule": "corrected", "train_scale": 10}
    assert parse_config(cfg.to_toml()) == cfg
