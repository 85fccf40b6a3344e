"""Noise distributions: cdf/pdf/icdf consistency, sampling, closed forms, extreme inputs."""

import math

import pytest
import torch

from sbnkit import noise
from sbnkit.errors import UserError

NOISES = [
    noise.Logistic(1.0),
    noise.Logistic(0.5),
    noise.Uniform(1.0),
    noise.Uniform(2.0),
    noise.Triangular(1.0),
    noise.Triangular(2.0),
    noise.Triangular(0.5),
    noise.Normal(1.0),
    noise.Normal(0.3),
]


@pytest.mark.parametrize("nz", NOISES, ids=repr)
def test_pdf_is_derivative_of_cdf(nz):
    t = torch.linspace(-3, 3, 601, dtype=torch.float64)
    t = t[(t.abs() - getattr(nz, "half_width", -1)).abs() > 1e-3]  # skip uniform's kinks
    t.requires_grad_(True)
    (grad,) = torch.autograd.grad(nz.cdf(t).sum(), t)
    torch.testing.assert_close(grad, nz.pdf(t.detach()), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("nz", NOISES, ids=repr)
def test_symmetry_and_icdf(nz):
    t = torch.linspace(-2.5, 2.5, 101, dtype=torch.float64)
    torch.testing.assert_close(nz.cdf(-t), 1 - nz.cdf(t), rtol=0, atol=1e-14)
    u = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    torch.testing.assert_close(nz.cdf(nz.icdf(u)), u, rtol=0, atol=1e-12)
    inside = nz.cdf(t) > 1e-6  # below that torch.log(cdf) itself loses relative precision
    torch.testing.assert_close(
        nz.log_cdf(t)[inside], torch.log(nz.cdf(t))[inside], rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("nz", NOISES, ids=repr)
def test_sample_matches_cdf(nz):
    torch.manual_seed(0)
    z = nz.sample(torch.empty(200_000, dtype=torch.float64))
    for t in (-0.7, 0.0, 0.4, 1.1):
        p = float(nz.cdf(torch.tensor(t, dtype=torch.float64)))
        se = math.sqrt(p * (1 - p) / z.numel())
        # 5 standard errors: a false alarm has probability < 1e-6 per check.
        assert abs(float((z <= t).double().mean()) - p) <= 5 * se + 1e-12


def test_closed_forms_of_the_proxy_table():
    a = torch.linspace(-3, 3, 121, dtype=torch.float64)
    torch.testing.assert_close(noise.Logistic(0.5).mean_fn(a), torch.tanh(a))
    torch.testing.assert_close(noise.Logistic(1.0).mean_fn(a), torch.tanh(a / 2))
    torch.testing.assert_close(noise.Uniform(1.0).mean_fn(a), a.clamp(-1, 1))
    approx = torch.where(a.abs() <= 1, 2 * a - a * a.abs(), a.sign())
    torch.testing.assert_close(noise.Triangular(1.0).mean_fn(a), approx)
    torch.testing.assert_close(noise.Normal(1.0).mean_fn(a), torch.erf(a / math.sqrt(2)))
    torch.testing.assert_close(
        noise.Logistic(1.0).mean_grad(a), 2 * torch.sigmoid(a) * (1 - torch.sigmoid(a))
    )


def closed_form(nz, t):
    """``(F(t), p(t), variance)`` of ``nz`` written out from the textbook densities."""
    if isinstance(nz, noise.Logistic):
        s = nz.scale
        return (
            1 / (1 + torch.exp(-t / s)),
            torch.exp(-t / s) / (s * (1 + torch.exp(-t / s)) ** 2),
            (math.pi * s) ** 2 / 3,
        )
    if isinstance(nz, noise.Uniform):
        c = nz.half_width
        cdf = torch.where(t < -c, 0.0, torch.where(t > c, 1.0, (t + c) / (2 * c)))
        return cdf, torch.where(t.abs() <= c, 1 / (2 * c), 0.0).double(), c * c / 3
    if isinstance(nz, noise.Triangular):
        c = nz.half_width
        left = (t + c) ** 2 / (2 * c * c)
        right = 1 - (c - t) ** 2 / (2 * c * c)
        cdf = torch.where(t <= -c, 0.0, torch.where(t < 0, left, torch.where(t < c, right, 1.0)))
        return cdf, torch.where(t.abs() < c, (c - t.abs()) / (c * c), 0.0), c * c / 6
    sd = nz.std
    cdf = 0.5 * (1 + torch.erf(t / (sd * math.sqrt(2))))
    return cdf, torch.exp(-(t**2) / (2 * sd * sd)) / (sd * math.sqrt(2 * math.pi)), sd * sd


@pytest.mark.parametrize("nz", NOISES, ids=repr)
def test_cdf_pdf_and_unit_mean_match_closed_forms_at_every_scale(nz):
    t = torch.linspace(-4.5, 4.5, 181, dtype=torch.float64)
    cdf, pdf, _ = closed_form(nz, t)
    torch.testing.assert_close(nz.cdf(t), cdf, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(nz.pdf(t), pdf, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(nz.mean_fn(t), 2 * cdf - 1, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(nz.mean_grad(t), 2 * pdf, rtol=1e-12, atol=1e-15)
    u = torch.tensor([0.02, 0.3, 0.5, 0.77, 0.98], dtype=torch.float64)
    torch.testing.assert_close(nz.cdf(nz.icdf(u)), u, rtol=0, atol=1e-12)


@pytest.mark.parametrize("nz", NOISES, ids=repr)
def test_sample_moments_match_closed_forms(nz):
    """E[z] = 0 and E[z²] = the closed-form variance V, as z-tests on 100 000 float64 draws.

    Under the null each statistic is ≈ N(0, 1) (its standard error is the sample std of z or z²
    over sqrt(n)); |z| ≤ 4.9 has a false-alarm probability below 1e-6 per check."""
    torch.manual_seed(5)
    z = nz.sample(torch.empty(100_000, dtype=torch.float64))
    var = closed_form(nz, z[:1])[2]
    n = z.numel()
    assert float(z.mean().abs() / (z.std() / math.sqrt(n))) <= 4.9
    sq = z * z
    assert float((sq.mean() - var).abs() / (sq.std() / math.sqrt(n))) <= 4.9


def test_defaults_and_get_by_name():
    assert noise.Logistic().scale == 1.0 and noise.Normal().std == 1.0
    assert noise.Uniform().half_width == 1.0 and noise.Triangular().half_width == 1.0
    for name, cls in noise.NOISES.items():
        nz = noise.get(name, 0.25)
        assert type(nz) is cls and nz.name == name and vars(nz) == vars(cls(0.25))
        assert noise.get(nz) is nz
    assert vars(noise.get("normal")) == {"std": 1.0}
    assert repr(noise.Triangular(2.0)) == "Triangular(half_width=2)"


@pytest.mark.parametrize("nz", NOISES, ids=repr)
def test_sample_sign_is_plus_one_with_probability_cdf(nz):
    torch.manual_seed(2)
    a = torch.tensor([-0.9, -0.2, 0.0, 0.35, 1.2], dtype=torch.float64)
    draws = nz.sample_sign(a.expand(40_000, 5))
    assert set(draws.unique().tolist()) <= {-1.0, 1.0} and draws.dtype == torch.float64
    p = nz.cdf(a)
    se = torch.sqrt(p * (1 - p) / draws.shape[0])
    # 5 SE per coordinate: false alarm probability < 3e-6 over 5 coordinates.
    assert ((draws == 1).double().mean(0) - p).abs().le(5 * se + 1e-12).all()


@pytest.mark.parametrize("nz", NOISES, ids=repr)
def test_log_cdf_far_in_the_tails(nz):
    t = torch.tensor([-30.0, -8.0, 8.0, 30.0], dtype=torch.float64)
    cdf = closed_form(nz, t)[0]
    want = torch.log(cdf.clamp_min(torch.finfo(torch.float64).tiny))
    if isinstance(nz, noise.Logistic):
        want = -torch.nn.functional.softplus(-t / nz.scale)
    got = nz.log_cdf(t)
    if isinstance(nz, noise.Normal):  # log Φ(r) ≈ -r²/2 - log(-r) - log(2π)/2 for r ≪ 0
        r = t / nz.std
        approx = -0.5 * r * r - torch.log(-r) - 0.5 * math.log(2 * math.pi)
        torch.testing.assert_close(got[:2], approx[:2], rtol=1e-2, atol=0)
        want = torch.log1p(-0.5 * torch.special.erfc(r / math.sqrt(2)))[2:]  # ≈ -Φ(-r)
        got = got[2:]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("nz", NOISES, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_inputs_stay_finite(nz, dtype):
    t = torch.tensor([-1e30, -1e4, -50.0, 0.0, 50.0, 1e4, 1e30], dtype=dtype)
    for f in (nz.cdf, nz.pdf, nz.log_cdf, nz.mean_fn, nz.mean_grad):
        assert torch.isfinite(f(t)).all(), f


@pytest.mark.parametrize(
    "name,scale", [("gauss", 1.0), ("logistic", 0.0), ("normal", -1.0), ("uniform", float("nan"))]
)
def test_bad_noise_raises(name, scale):
    with pytest.raises(UserError):
        noise.get(name, scale)
