"""The compiled (numba) paths of :mod:`sbnkit.optim.compiled` are bit-identical to the torch forms
of :mod:`sbnkit.optim.functional` on random inputs that hit every branch, in float32 and float64."""

import subprocess
import sys

import pytest
import torch

from sbnkit.optim import compiled as C
from sbnkit.optim import functional as F

DTYPES = (torch.float32, torch.float64)
N = 20_000


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal values (NaN equal to NaN; ±0 equal, as ``==`` has it)."""
    return a.dtype == b.dtype and bool(((a == b) | (a.isnan() & b.isnan())).all())


def mixture(gen: torch.Generator, dtype: torch.dtype, special: tuple[float, ...] = ()):
    """Values of many scales, exact zeros and ``±special`` values, in ``dtype``."""
    scales = torch.tensor([1e4, 10.0, 1.0, 1e-2, 1e-3, 1e-5, 1e-7], dtype=torch.float64)
    pick = torch.randint(0, len(scales), (N,), generator=gen)
    x = (torch.randn(N, generator=gen, dtype=torch.float64) * scales[pick]).to(dtype)
    x[torch.rand(N, generator=gen) < 0.03] = 0.0
    for value in special:
        where = torch.rand(N, generator=gen) < 0.02
        signs = torch.randint(0, 2, (int(where.sum()),), generator=gen).to(dtype) * 2 - 1
        x[where] = torch.tensor(value, dtype=dtype) * signs
    return x


# (alpha, beta): the case αβ < 1 with a linear region, with |θ| = 1 - αβ above the θ gate, αβ ≥ 1
HYPER = ((0.01, 0.01), (0.5, 0.3), (0.5, 1.5), (1.0, 1.0), (2.0, 3.0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,beta", HYPER)
def test_adaste_forward_is_bit_identical(dtype, alpha, beta):
    gen = torch.Generator().manual_seed(0)
    theta = mixture(gen, dtype, (1.0, 1 - alpha * beta))
    assert same(C.adaste_forward(theta, alpha, beta), F.adaste_forward(theta, alpha, beta))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,beta", HYPER)
@pytest.mark.parametrize("rule", F.ADASTE_RULES)
def test_adaste_grad_is_bit_identical_on_every_branch(dtype, alpha, beta, rule):
    gen = torch.Generator().manual_seed(1)
    gates = (F.ADASTE_THETA_GATE, F.ADASTE_THETA_GATE_B, 1 - alpha * beta)
    theta = mixture(gen, dtype, gates)
    grad = mixture(gen, dtype, (F.ADASTE_G_GATE,))
    grad[:10] = float("nan")
    want = F.adaste_factor(theta, grad, alpha, beta, rule) * grad
    assert same(C.adaste_grad(theta, grad, alpha, beta, rule), want)
    # every branch is hit: toward / away / neither, saturated or not, exactly at the gates
    a, gs, edge = theta.abs(), torch.sign(theta) * grad, 1 - alpha * beta
    where = [a > F.ADASTE_THETA_GATE_B, a == F.ADASTE_THETA_GATE, a == F.ADASTE_THETA_GATE_B]
    if edge > 0:  # the linear region, its edge and the saturated part
        where += [a == edge, (a < edge) & (a > F.ADASTE_THETA_GATE), a > edge]
    for part in where:
        for direction in (gs > F.ADASTE_G_GATE, gs < -F.ADASTE_G_GATE, gs.abs() <= 1e-3):
            assert bool((part & direction).any())


def test_adaste_grad_rejects_an_unknown_rule():
    with pytest.raises(ValueError, match="rule must be one of"):
        C.adaste_grad(torch.ones(3), torch.ones(3), 0.1, 0.1, "nope")


def _uniforms(gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """torch.rand values, with exact zeros, rand's extremes and values outside its grid range."""
    u = torch.rand(N, generator=gen, dtype=dtype)
    lo = 2.0 ** -(24 if dtype == torch.float32 else 53)
    for value in (0.0, lo, 1.0 - lo, lo / 4, 1e-30):
        u[torch.rand(N, generator=gen) < 0.01] = value
    return u


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", (1e-10, 1e-3, 1.0))
def test_bayesbinn_sample_is_bit_identical(dtype, temperature):
    gen = torch.Generator().manual_seed(2)
    lam = mixture(gen, dtype, (8.0, 9.0, 20.0, float("inf")))
    lam[:5] = float("nan")
    u = _uniforms(gen, dtype)
    got = C.bayesbinn_sample(lam, u, temperature)
    assert same(got, F.bayesbinn_sample(lam, u, temperature))
    far = lam.abs() > 20.0
    assert bool((far & (u == 0)).any()) and bool((~far).any())  # both paths taken


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,step", ((0.0, 1), (0.9, 1), (0.9, 5)))
@pytest.mark.parametrize("prior,kl_weight", ((0.0, 1.0), (0.7, 1.0), (-2.0, 0.3), (0.0, 0.0)))
@pytest.mark.parametrize("temperature", (1e-10, 1.0))
def test_bayesbinn_update_is_bit_identical(dtype, momentum, step, prior, kl_weight, temperature):
    gen = torch.Generator().manual_seed(3)
    lam = mixture(gen, dtype, (10.0, 20.0, 25.0, float("inf")))
    lam[:5] = float("nan")
    w = C.bayesbinn_sample(lam, _uniforms(gen, dtype), temperature)
    grad, exp_avg = mixture(gen, dtype), mixture(gen, dtype)
    hyper = dict(
        lr=1e-4,
        momentum=momentum,
        temperature=temperature,
        train_size=54_000.0,
        prior=prior,
        kl_weight=kl_weight,
    )
    want = F.bayesbinn_update(lam, exp_avg, grad, w, torch.tanh(lam), step, **hyper)
    got = lam.clone(), exp_avg.clone()
    C.bayesbinn_update_(*got, grad, w, step, **hyper)
    assert same(got[0], want[0]) and same(got[1], want[1])
    sat = C.TANH_SATURATED[dtype]
    assert bool((lam.abs() > sat).any()) and bool((lam.abs() <= sat).any())  # both paths


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_tanh_is_exactly_one_beyond_the_saturation_bound(dtype):
    bound = C.TANH_SATURATED[dtype]
    if dtype == torch.float32:  # every float32 in [bound, 2^7), then a sweep of larger ones
        start = torch.tensor(bound, dtype=torch.float32).view(torch.int32)
        stop = torch.tensor(128.0, dtype=torch.float32).view(torch.int32)
        x = torch.arange(int(start), int(stop), dtype=torch.int32).view(torch.float32)
    else:
        x = torch.linspace(bound, 64.0, 2_000_001, dtype=dtype)
    x = torch.cat([x, torch.logspace(2, 30, 1000, dtype=dtype), torch.tensor([float("inf")])])
    x = x.to(dtype)
    assert bool((torch.tanh(x) == 1).all()) and bool((torch.tanh(-x) == -1).all())
    for i in (0, 1, 7, 8, 9):  # torch's scalar path on the tail of a short tensor too
        assert bool((torch.tanh(x[: 16 + i]) == 1).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_rand_stays_in_the_range_the_sample_assumes(dtype):
    lo = 2.0 ** -(24 if dtype == torch.float32 else 53)
    u = torch.rand(1_000_000, dtype=dtype, generator=torch.Generator().manual_seed(4))
    assert bool(((u == 0) | ((u >= lo) & (u <= 1 - lo))).all())


def test_unsupported_inputs_use_the_torch_forms():
    gen = torch.Generator().manual_seed(5)
    theta = mixture(gen, torch.float32).view(100, 200).t()  # not contiguous
    grad = mixture(gen, torch.float32).view(200, 100)
    assert not C.supported(theta, grad)
    assert same(C.adaste_forward(theta, 0.1, 0.2), F.adaste_forward(theta, 0.1, 0.2))
    want = F.adaste_factor(theta, grad, 0.1, 0.2) * grad
    assert same(C.adaste_grad(theta, grad, 0.1, 0.2), want)
    half = theta.to(torch.bfloat16)
    assert not C.supported(half)
    assert same(C.adaste_forward(half, 0.1, 0.2), F.adaste_forward(half, 0.1, 0.2))
    lam, u = theta.contiguous().double(), torch.rand(200, 100, dtype=torch.float64).t()
    assert same(C.bayesbinn_sample(lam.t(), u, 1e-3), F.bayesbinn_sample(lam.t(), u, 1e-3))
    prior = torch.full_like(lam, 0.5)  # a tensor prior takes the torch form
    exp_avg, w, g = torch.zeros_like(lam), torch.tanh(lam), torch.ones_like(lam)
    hyper = dict(lr=0.1, momentum=0.5, temperature=1.0, train_size=10.0, prior=prior)
    want = F.bayesbinn_update(lam, exp_avg, g, w, torch.tanh(lam), 2, **hyper)
    got = lam.clone(), exp_avg.clone()
    C.bayesbinn_update_(*got, g, w, 2, **hyper)
    assert same(got[0], want[0]) and same(got[1], want[1])


def test_importing_the_methods_does_not_load_numba():
    code = (
        "import sys\n"
        "from sbnkit.optim import compiled, AdaSTE, AdaSTEWeight, BayesBiNN, BayesBiNNWeight\n"
        "assert 'numba' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
