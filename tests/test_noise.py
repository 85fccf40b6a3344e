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
