"""Philox4x32-10 uniforms (:mod:`sbnkit.optim.philox`): the reference against the published
known-answer vectors, the compiled loop against the reference bit for bit, and the stream's
uniformity and independence against tolerances derived from its variance.

Every statistical check is on a fixed key, so it is deterministic; its tolerance is the bound a
truly uniform stream exceeds with probability below 1e-6 (5 standard deviations, or the
Dvoretzky-Kiefer-Wolfowitz inequality for the Kolmogorov-Smirnov distance)."""

import math

import pytest
import torch

from sbnkit.optim import BayesBiNNWeight, philox
from sbnkit.optim.functional import bayesbinn_sample
from sbnkit.weights import make_binary

# Random123's tests/kat_vectors, "philox4x32 10" lines: counter, key, output words (hex)
KNOWN_ANSWERS = (
    (
        "00000000 00000000 00000000 00000000",
        "00000000 00000000",
        "6627e8d5 e169c58d bc57ac4c 9b00dbd8",
    ),
    (
        "ffffffff ffffffff ffffffff ffffffff",
        "ffffffff ffffffff",
        "408f276d 41c83b0e a20bc7c6 6d5451fd",
    ),
    (
        "243f6a88 85a308d3 13198a2e 03707344",
        "a4093822 299f31d0",
        "d16cfe09 94fdcceb 5001e420 24126ea1",
    ),
)
KEYS = (0, 1, 2**32, 2**64 - 1, 0x0123456789ABCDEF)
SIGMAS = 5.0  # P(|N(0,1)| > 5) = 5.7e-7
N = 1 << 20


def words(text: str) -> list[int]:
    return [int(w, 16) for w in text.split()]


@pytest.mark.parametrize("counter,key,output", KNOWN_ANSWERS)
def test_reference_matches_the_known_answers(counter, key, output):
    got = philox.philox4x32(torch.tensor(words(counter)), tuple(words(key)))
    assert got.tolist() == words(output)
    batch = torch.tensor([words(counter)] * 3)  # any leading shape
    assert philox.philox4x32(batch, tuple(words(key))).tolist() == [words(output)] * 3


def test_compiled_first_block_is_the_zero_known_answer():
    a, b, c, d = words(KNOWN_ANSWERS[0][2])
    u32 = philox.uniform_like(torch.empty(4), 0)
    assert u32.tolist() == [(w >> 8) * 2.0**-24 for w in (a, b, c, d)]
    u64 = philox.uniform_like(torch.empty(2, dtype=torch.float64), 0)
    assert u64.tolist() == [((a << 21) + (b >> 11)) * 2.0**-53, ((c << 21) + (d >> 11)) * 2.0**-53]


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("n", (0, 1, 2, 3, 4, 5, 7, 8, 9, 1001, 65_539))
def test_compiled_equals_the_reference(dtype, n):
    for key in KEYS:
        got = philox.uniform_like(torch.empty(n, dtype=dtype), key)
        assert got.dtype == dtype and torch.equal(got, philox.uniform(key, n, dtype))


def test_uniform_like_keeps_shape_dtype_and_device_and_ignores_layout():
    t = torch.empty(6, 5).t()  # not contiguous: only the shape matters
    u = philox.uniform_like(t, 7)
    assert u.shape == (5, 6) and u.dtype == torch.float32 and u.device == t.device
    assert torch.equal(u.reshape(-1), philox.uniform(7, 30))
    half = philox.uniform_like(torch.empty(3, 4, dtype=torch.bfloat16), 7)  # the torch path
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, philox.uniform(7, 12, torch.bfloat16).view(3, 4))


@pytest.mark.parametrize(
    "dtype,bits",
    ((torch.float64, 53), (torch.float32, 24), (torch.float16, 11), (torch.bfloat16, 8)),
)
def test_uniforms_lie_on_the_grid_of_torch_rand(dtype, bits):
    u = philox.uniform(3, 100_000, dtype).double()
    scaled = u * 2.0**bits
    assert bool((scaled == scaled.floor()).all()) and bool(((u >= 0) & (u < 1)).all())


def test_mean_variance_and_distribution_of_one_stream():
    u = philox.uniform_like(torch.empty(N, dtype=torch.float64), 11)
    assert abs(float(u.mean()) - 0.5) < SIGMAS * math.sqrt(1 / 12 / N)
    # (u - ½)² has mean 1/12 and variance 1/80 - 1/144 = 1/180
    assert abs(float(((u - 0.5) ** 2).mean()) - 1 / 12) < SIGMAS * math.sqrt(1 / 180 / N)
    rank = torch.arange(1, N + 1, dtype=torch.float64)
    x = u.sort().values
    ks = float(torch.maximum(rank / N - x, x - (rank - 1) / N).max())  # sup |F_N - F|
    assert ks < math.sqrt(math.log(2 / 1e-6) / (2 * N))  # DKW: P(D > ε) ≤ 2 exp(-2Nε²)


def test_every_bit_of_float32_uniforms_is_fair():
    u = philox.uniform_like(torch.empty(N), 12)
    ints = (u.double() * 2**24).long()
    for bit in range(24):
        ones = float(((ints >> bit) & 1).double().mean())
        assert abs(ones - 0.5) < SIGMAS * 0.5 / math.sqrt(N), bit


@pytest.mark.parametrize("lag", (1, 2, 3, 4, 5))
def test_neighbours_in_a_stream_are_uncorrelated(lag):
    u = philox.uniform_like(torch.empty(N + lag, dtype=torch.float64), 13) - 0.5
    cov = float((u[:-lag] * u[lag:]).mean())  # 0 ± (1/12)/√N for independent neighbours
    assert abs(cov) < SIGMAS * (1 / 12) / math.sqrt(N)


@pytest.mark.parametrize("k1,k2", ((0, 1), (5, 5 + 2**32), (2**63, 2**63 + 1)))
def test_streams_of_neighbouring_keys_are_uncorrelated(k1, k2):
    a = philox.uniform(k1, N, torch.float64) - 0.5
    b = philox.uniform(k2, N, torch.float64) - 0.5
    assert abs(float((a * b).mean())) < SIGMAS * (1 / 12) / math.sqrt(N)


def test_pairs_fill_the_unit_square_evenly():
    u = philox.uniform_like(torch.empty(2 * N), 14)
    cells = 16
    idx = (u * cells).long().view(-1, 2)
    counts = torch.bincount(idx[:, 0] * cells + idx[:, 1], minlength=cells**2).double()
    expected = N / cells**2
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = cells**2 - 1
    assert chi2 < dof + SIGMAS * math.sqrt(2 * dof)  # χ² with 255 dof: mean 255, variance 510


def test_keys_come_from_the_seeded_default_generator():
    torch.manual_seed(21)
    keys = [philox.draw_key() for _ in range(100)]
    torch.manual_seed(21)
    assert [philox.draw_key() for _ in range(100)] == keys
    assert len(set(keys)) == 100 and all(0 <= k < 2**64 for k in keys)
    assert len({k >> 32 for k in keys}) == 100 and len({k & 0xFFFFFFFF for k in keys}) == 100
    gen = torch.Generator().manual_seed(21)
    assert philox.draw_key(gen) == keys[0]


def test_bayesbinn_samples_are_seeded_and_bernoulli_of_twice_the_latent():
    lam = torch.linspace(-1.5, 1.5, 7, dtype=torch.float64)
    layer = make_binary(torch.nn.Linear(7, 4000, bias=False).double(), BayesBiNNWeight(1e-10, 1.0))
    layer.parametrizations.weight.original.data.copy_(lam.expand(4000, 7))
    torch.manual_seed(0)
    first = layer.weight.detach()
    torch.manual_seed(0)
    u = philox.uniform(philox.draw_key(), 28_000, torch.float64).view(4000, 7)
    assert torch.equal(first, bayesbinn_sample(lam.expand(4000, 7), u, 1e-10))
    ones = (first == 1).double().mean(0)  # per column: 4000 draws of P(+1) = σ(2λ)
    p = torch.sigmoid(2 * lam)
    assert bool(((ones - p).abs() < SIGMAS * (p * (1 - p) / 4000).sqrt()).all())
