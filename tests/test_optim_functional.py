"""sbnkit.optim.functional against closed forms: AdaSTE's w* and rho, one BayesBiNN step.

All in float64. Expected values are written out from the formulas in each test, independently of
the implementation's vectorised code paths.
"""

from __future__ import annotations

import math

import pytest
import torch

from sbnkit.optim.functional import (
    adaste_factor,
    adaste_forward,
    bayesbinn_sample,
    bayesbinn_update,
)

D = torch.float64


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=D)


@pytest.mark.parametrize(
    "alpha, beta", [(0.01, 0.01), (0.01, 0.5), (0.01, 5.0), (0.01, 100.0), (0.3, 2.0)]
)
def test_adaste_forward_is_the_argmin_of_the_inner_objective(alpha, beta):
    # E(w; θ) = ½(w - θ)² + (β/2)(|w| - (1+α))² over a grid of w ∈ [-1, 1] with step h = 1e-5.
    # |θ| ≥ 1e-3 keeps the two wells' values apart by ≥ 2·w·|θ| ≫ the grid error (1+β)h²/2,
    # so the grid argmin is within h of the true one.
    h = 1e-5
    grid = torch.linspace(-1.0, 1.0, 200_001, dtype=D)
    thetas = torch.cat([torch.linspace(-2.5, -1e-3, 23, dtype=D), torch.linspace(1e-3, 2.5, 23)])
    for theta in thetas.tolist():
        energy = 0.5 * (grid - theta) ** 2 + 0.5 * beta * (grid.abs() - (1 + alpha)) ** 2
        w_grid = float(grid[energy.argmin()])
        assert float(adaste_forward(t(theta), alpha, beta)) == pytest.approx(w_grid, abs=h)


def test_adaste_forward_is_sign_when_alpha_beta_at_least_one():
    theta = t(-7.0, -1.0, -0.3, -1e-12, 1e-300, 1e-9, 0.5, 0.999, 3.0)
    for alpha, beta in ((0.01, 100.0), (0.01, 250.0), (0.5, 2.0)):
        assert torch.equal(adaste_forward(theta, alpha, beta), torch.sign(theta))
    assert float(adaste_forward(t(0.0), 0.01, 100.0)) == 0.0


def _finite_difference_toward(theta: float, alpha: float, beta: float) -> float:
    # β̃ = (|θ| + δ)/|g| moves θ to -δ·sign(θ), just across the jump:
    # slope (w*(θ) - w*(-δ s))/(θ + δ s)
    s, delta = math.copysign(1.0, theta), 1e-12
    w_here = float(adaste_forward(t(theta), alpha, beta))
    w_across = float(adaste_forward(t(-delta * s), alpha, beta))
    return (w_here - w_across) / (theta + delta * s)


@pytest.mark.parametrize("alpha, beta", [(0.01, 0.01), (0.01, 0.3), (0.1, 2.0)])
@pytest.mark.parametrize("theta", [5.0, 7.5, -6.0, -12.0])
def test_saturated_toward_factor_is_the_finite_difference(alpha, beta, theta):
    # |θ| ≥ 5 is saturated and keeps the code's factor below its 0.5 cap, so both rules must equal
    # the finite difference (1 + 2β + αβ)/((1+β)|θ|) across the jump.
    fd = _finite_difference_toward(theta, alpha, beta)
    assert fd == pytest.approx((1 + 2 * beta + alpha * beta) / ((1 + beta) * abs(theta)), rel=1e-9)
    g = t(math.copysign(0.01, theta))
    for rule in ("code", "corrected"):
        assert float(adaste_factor(t(theta), g, alpha, beta, rule)) == pytest.approx(fd, rel=1e-9)


# (alpha, beta, theta, g, rho) for rule="code", one row per branch of the published code.
CODE_TABLE = [
    # αβ = 0.05 < 1: default 1/(1+β); saturation at |θ| > 0.95
    (0.1, 0.5, 2.0, -0.01, 0.0),  # pos saturated, away
    (0.1, 0.5, -2.0, 0.01, 0.0),  # neg saturated, away
    (0.1, 0.5, 2.0, 0.01, 0.5),  # pos saturated, toward: 2.05/3 = 0.683 → cap 0.5
    (0.1, 0.5, 8.0, 0.01, 2.05 / 12.0),  # pos saturated, toward, below the cap
    (0.1, 0.5, -8.0, -0.01, 2.05 / 12.0),  # neg saturated, toward
    (0.1, 0.5, 2.0, 1e-3, 1 / 1.5),  # |g| = 1e-3 is not > 1e-3: default even when saturated
    (0.1, 0.5, 2.0, 1.1e-3, 0.5),  # just above the gradient gate
    (0.1, 0.5, -2.0, -1e-3, 1 / 1.5),  # gate, negative side
    (0.01, 0.3, 0.5, 0.01, (0.606 - 0.5) / 0.65),  # pos_mid toward: (2β(1+α) - θ)/((1+β)|θ|)
    (0.01, 0.3, 0.8, 0.01, 0.0),  # pos_mid toward, θ > 2β(1+α): negative → clamped to 0
    (0.01, 0.3, -0.5, -0.01, 0.5),  # neg_mid toward: (0.606 + 0.5)/0.65 = 1.70 → cap 0.5
    (0.01, 0.3, 0.5, -0.01, 1 / 1.3),  # pos_mid away: default
    (0.01, 0.3, -0.5, 0.01, 1 / 1.3),  # neg_mid away: default
    (0.01, 0.3, 1e-6, 0.01, 1 / 1.3),  # |θ| = 1e-6 is not > 1e-6: default
    (0.01, 0.3, -5e-7, -0.01, 1 / 1.3),  # below the θ gate
    (0.01, 0.3, 2e-6, 0.01, 0.5),  # just above the θ gate: huge factor → cap
    (0.01, 0.3, 0.0, 0.01, 1 / 1.3),  # θ = 0: default
    # αβ = 1 (β at its cap 1/α): default 1, gates |θ| > 1e-3 and |g| > 1e-3
    (0.01, 100.0, 4.0, 0.01, 0.25),  # toward: 1/|θ|
    (0.01, 100.0, -4.0, -0.01, 0.25),
    (0.01, 100.0, 1.5, 0.01, 0.5),  # 1/1.5 → cap 0.5
    (0.01, 100.0, 4.0, -0.01, 0.0),  # away
    (0.01, 100.0, -4.0, 0.01, 0.0),
    (0.01, 100.0, 1e-3, 0.01, 1.0),  # |θ| = 1e-3 not > 1e-3: default 1
    (0.01, 100.0, 4.0, 1e-3, 1.0),  # |g| = 1e-3: default 1
    (0.01, 100.0, 4.0, -1e-3, 1.0),
    (0.01, 100.0, 2e-3, 0.01, 0.5),  # 500 → cap
]


@pytest.mark.parametrize("alpha, beta, theta, g, rho", CODE_TABLE)
def test_code_rule_table(alpha, beta, theta, g, rho):
    got = float(adaste_factor(t(theta), t(g), alpha, beta, "code"))
    assert got == pytest.approx(rho, rel=1e-12, abs=1e-15)


def test_code_rule_vectorised_equals_the_table():
    for alpha, beta in {(a, b) for a, b, *_ in CODE_TABLE}:
        rows = [r for r in CODE_TABLE if r[:2] == (alpha, beta)]
        theta, g, rho = (t(*[r[k] for r in rows]) for k in (2, 3, 4))
        torch.testing.assert_close(adaste_factor(theta, g, alpha, beta), rho, rtol=1e-12, atol=0)


# (alpha, beta, theta, g, rho) for rule="corrected" (finite differences, no gates, no cap).
CORRECTED_TABLE = [
    (0.01, 0.3, 0.5, 0.01, (0.5 + 0.303) / 1.3 / 0.5 + 0.303 / 1.3 / 0.5),  # toward, linear part
    (0.01, 0.3, -0.5, -0.01, (0.5 + 0.303) / 1.3 / 0.5 + 0.303 / 1.3 / 0.5),  # symmetric
    (0.01, 0.3, 0.5, -0.01, 1 / 1.3),  # away, linear part: local slope
    (0.01, 0.3, 2.0, -0.01, 0.0),  # away, saturated
    (0.01, 0.3, 2.0, 0.01, (1 + 0.303 / 1.3) / 2.0),  # toward, saturated
    (0.01, 0.3, 2.0, 1e-9, (1 + 0.303 / 1.3) / 2.0),  # no gradient gate
    (0.01, 0.3, 2.0, 0.0, 0.0),  # g = 0: local slope
    (0.01, 0.3, 0.0, 0.01, 1 / 1.3),  # θ = 0: slope of the continuous part
    (0.01, 100.0, 4.0, 0.01, 2.0 / 4.0),  # αβ ≥ 1: jump 2 over |θ|
    (0.01, 100.0, -0.1, -0.01, 2.0 / 0.1),  # no cap
    (0.01, 100.0, 4.0, -0.01, 0.0),
]


@pytest.mark.parametrize("alpha, beta, theta, g, rho", CORRECTED_TABLE)
def test_corrected_rule_table(alpha, beta, theta, g, rho):
    got = float(adaste_factor(t(theta), t(g), alpha, beta, "corrected"))
    assert got == pytest.approx(rho, rel=1e-12, abs=1e-15)


def test_corrected_rule_is_symmetric_and_a_finite_difference():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(500, generator=gen, dtype=D) * 2
    g = torch.randn(500, generator=gen, dtype=D)
    for alpha, beta in ((0.01, 0.01), (0.01, 0.7), (0.05, 3.0)):
        rho = adaste_factor(theta, g, alpha, beta, "corrected")
        assert torch.equal(rho, adaste_factor(-theta, -g, alpha, beta, "corrected"))
        toward = torch.sign(g) == torch.sign(theta)
        for i in torch.nonzero(toward).flatten()[:40].tolist():
            fd = _finite_difference_toward(float(theta[i]), alpha, beta)
            assert float(rho[i]) == pytest.approx(fd, rel=1e-8)


def test_unknown_rule_raises():
    with pytest.raises(ValueError, match="rule must be one of code, corrected"):
        adaste_factor(t(1.0), t(1.0), 0.01, 0.01, "paper")


def test_bayesbinn_sample_by_hand():
    lam, u, tau = (0.5, -1.0, 3.0), (0.3, 0.8, 0.5), 0.7
    got = bayesbinn_sample(t(*lam), t(*u), tau)
    want = [
        math.tanh((lk + 0.5 * math.log(uk / (1 - uk))) / tau) for lk, uk in zip(lam, u, strict=True)
    ]
    # log(u) - log1p(-u) vs log(u/(1-u)): a few ulps apart
    torch.testing.assert_close(got, t(*want), rtol=1e-14, atol=0)
    # τ → 0: the hard sign of λ + δ (δ = -0.42, +0.69, 0)
    assert torch.equal(bayesbinn_sample(t(*lam), t(*u), 1e-10), t(1.0, -1.0, 1.0))


def test_bayesbinn_update_by_hand():
    lam, m0, g, w = (0.5, -1.0), (0.05, -0.02), (0.2, -0.1), (0.3, -0.9)
    lr, beta, tau, n, prior, kl, step = 0.1, 0.5, 0.7, 100.0, 0.1, 0.5, 2
    mu = [math.tanh(x) for x in lam]
    want_lam, want_m = [], []
    for k in range(2):
        s = (1 - w[k] ** 2 + 1e-10) / tau / (1 - mu[k] ** 2 + 1e-10)
        m = beta * m0[k] + (1 - beta) * (n * s * g[k] + kl * (lam[k] - prior))
        want_m.append(m)
        want_lam.append(lam[k] - lr * m / (1 - beta**step))
    new_lam, new_m = bayesbinn_update(
        t(*lam), t(*m0), t(*g), t(*w), t(*mu), step,
        lr=lr, momentum=beta, temperature=tau, train_size=n, prior=prior, kl_weight=kl,
    )  # fmt: skip
    torch.testing.assert_close(new_m, t(*want_m), rtol=1e-14, atol=0)
    torch.testing.assert_close(new_lam, t(*want_lam), rtol=1e-14, atol=0)
    # momentum 0 and step 1: the paper's λ ← (1 - lr)λ - lr(N s g - λ₀) for kl_weight = 1
    new_lam, _ = bayesbinn_update(
        t(*lam), t(0.0, 0.0), t(*g), t(*w), t(*mu), 1,
        lr=lr, momentum=0.0, temperature=tau, train_size=n, prior=prior,
    )  # fmt: skip
    for k in range(2):
        s = (1 - w[k] ** 2 + 1e-10) / tau / (1 - mu[k] ** 2 + 1e-10)
        want = (1 - lr) * lam[k] - lr * (n * s * g[k] - prior)
        assert float(new_lam[k]) == pytest.approx(want, rel=1e-14)


def test_functional_forms_do_not_modify_inputs_and_keep_dtype():
    lam, m, g = t(0.5, -1.0), t(0.0, 0.0), t(0.2, -0.1)
    before = [x.clone() for x in (lam, m, g)]
    out = bayesbinn_update(
        lam, m, g, t(0.3, 0.2), torch.tanh(lam), 1,
        lr=0.1, momentum=0.9, temperature=1.0, train_size=10,
    )  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip((lam, m, g), before, strict=True))
    assert all(x.dtype == D for x in out)
    assert adaste_factor(lam, g, 0.01, 0.01).dtype == D
    assert adaste_forward(lam.float(), 0.01, 0.01).dtype == torch.float32
