"""PSA flip-difference kernels: the reference against explicit loops, every kernel against the
reference, extreme inputs, the series order selection and its error bound, and bad inputs.

Tolerances. A kernel output is a sum of ``n`` terms ``G (σ(a - d) - σ(a))``, each in
``[-|G|, |G|]``. Each way of evaluating one term here (difference of two sigmoids, the fused
division form, or a Horner-free polynomial) has an absolute error of a few ulps of ``|G|``, and
summing ``n`` such terms adds at most ``n`` more, so two exact implementations agree to within
``err(n, dtype) = 8 n ε max|G|`` elementwise (``ε`` the unit roundoff; 8 covers the few
roundings per term). The series kernel adds its truncation error, bounded by
``ε_N(r) Σ_j |G_j Δ_j|`` (see :mod:`sbnkit.kernels.series`).
"""

import math
import subprocess
import sys

import pytest
import torch

from sbnkit import kernels
from sbnkit.kernels import series

F64, F32 = torch.float64, torch.float32


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def exact_tol(n_terms: int, G: torch.Tensor, dtype: torch.dtype) -> float:
    """``err(n, dtype)`` of the module docstring."""
    return 8 * n_terms * eps(dtype) * float(G.abs().max())


def pm1(*shape: int, gen: torch.Generator, dtype=F64) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(dtype)


def dense_case(batch, n_in, n_out, w_scale=0.5, a_scale=2.0, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(batch, n_out, generator=gen, dtype=F64).to(dtype)
    a = (torch.randn(batch, n_out, generator=gen, dtype=F64) * a_scale).to(dtype)
    W = (torch.randn(n_out, n_in, generator=gen, dtype=F64) * w_scale).to(dtype)
    return G, a, W, pm1(batch, n_in, gen=gen, dtype=dtype)


def conv_case(batch, c_in, c_out, k, s, p, h, w, w_scale=0.5, a_scale=2.0, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    G = torch.randn(batch, c_out, ho, wo, generator=gen, dtype=F64).to(dtype)
    a = (torch.randn(batch, c_out, ho, wo, generator=gen, dtype=F64) * a_scale).to(dtype)
    W = (torch.randn(c_out, c_in, k, k, generator=gen, dtype=F64) * w_scale).to(dtype)
    return G, a, W, pm1(batch, c_in, h, w, gen=gen, dtype=dtype)


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm())


# --- the reference against the definition, written as explicit loops -------------------------


def brute_dense(G, a, W, x):
    batch, n_out = a.shape
    out = torch.zeros_like(x)
    for b in range(batch):
        for i in range(x.shape[1]):
            for j in range(n_out):
                d = 2 * W[j, i] * x[b, i]
                out[b, i] += G[b, j] * (torch.sigmoid(a[b, j] - d) - torch.sigmoid(a[b, j]))
    return out


def brute_conv(G, a, W, x, s, p):
    batch, c_out, ho, wo = a.shape
    c_in, h_in, w_in = x.shape[1:]
    k = W.shape[2]
    out = torch.zeros_like(x)
    for b in range(batch):
        for c in range(c_out):
            for oh in range(ho):
                for ow in range(wo):
                    for r in range(c_in):
                        for kh in range(k):
                            for kw in range(k):
                                h, w = oh * s - p + kh, ow * s - p + kw
                                if not (0 <= h < h_in and 0 <= w < w_in):
                                    continue
                                d = 2 * W[c, r, kh, kw] * x[b, r, h, w]
                                sa = torch.sigmoid(a[b, c, oh, ow])
                                diff = torch.sigmoid(a[b, c, oh, ow] - d) - sa
                                out[b, r, h, w] += G[b, c, oh, ow] * diff
    return out


def test_reference_dense_matches_loops():
    G, a, W, x = dense_case(3, 5, 4)
    got = kernels.flip_delta_dense_reference(G, a, W, x)
    # same per-term formula, only the summation order differs: err(n_out)
    assert torch.allclose(got, brute_dense(G, a, W, x), rtol=0, atol=exact_tol(4, G, F64))


@pytest.mark.parametrize(
    "k,s,p,h,w", [(3, 1, 1, 4, 4), (3, 2, 1, 5, 4), (1, 1, 0, 3, 2), (3, 2, 0, 6, 5)]
)
def test_reference_conv_matches_loops(k, s, p, h, w):
    G, a, W, x = conv_case(2, 2, 3, k, s, p, h, w)
    got = kernels.flip_delta_conv2d_reference(G, a, W, x, s, p)
    want = brute_conv(G, a, W, x, s, p)
    assert torch.allclose(got, want, rtol=0, atol=exact_tol(3 * k * k, G, F64))


def test_reference_chunking_is_invisible(monkeypatch):
    G, a, W, x = conv_case(3, 4, 5, 3, 2, 1, 7, 6)
    gd = dense_case(5, 6, 7)
    conv_full = kernels.flip_delta_conv2d_reference(G, a, W, x, 2, 1)
    dense_full = kernels.flip_delta_dense_reference(*gd)
    monkeypatch.setattr("sbnkit.kernels.reference.CHUNK_ELEMENTS", 7)  # 1-element chunks
    assert torch.allclose(kernels.flip_delta_conv2d_reference(G, a, W, x, 2, 1), conv_full)
    assert torch.allclose(kernels.flip_delta_dense_reference(*gd), dense_full)


# --- fused and series against the reference ---------------------------------------------------

DENSE_SHAPES = [(1, 1, 1), (4, 7, 3), (9, 16, 33), (6, 40, 8)]
CONV_SHAPES = [  # batch, c_in, c_out, k, stride, padding, h, w
    (2, 3, 4, 3, 1, 0, 6, 6),
    (2, 3, 4, 3, 1, 1, 6, 6),
    (3, 2, 5, 3, 2, 0, 7, 7),
    (1, 4, 3, 3, 2, 1, 8, 8),
    (2, 5, 2, 1, 1, 0, 4, 4),
    (2, 3, 3, 5, 1, 1, 7, 7),
    (1, 6, 7, 5, 2, 1, 9, 9),
    (2, 3, 4, 3, 2, 1, 9, 6),  # non-square input
    (1, 2, 2, 1, 2, 0, 5, 3),
]


@pytest.mark.parametrize("shape", DENSE_SHAPES)
@pytest.mark.parametrize("dtype", [F64, F32])
def test_fused_dense(shape, dtype):
    G, a, W, x = dense_case(*shape, dtype=dtype)
    want = kernels.flip_delta_dense_reference(G.double(), a.double(), W.double(), x.double())
    got = kernels.flip_delta_dense_fused(G, a, W, x)
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.allclose(got.double(), want, rtol=0, atol=exact_tol(shape[2], G, dtype))
    if dtype == F64:
        assert rel(got, want) < 1e-10


@pytest.mark.parametrize("shape", CONV_SHAPES)
@pytest.mark.parametrize("dtype", [F64, F32])
def test_fused_conv(shape, dtype):
    batch, c_in, c_out, k, s, p, h, w = shape
    G, a, W, x = conv_case(*shape, dtype=dtype)
    want = kernels.flip_delta_conv2d_reference(G.double(), a.double(), W.double(), x.double(), s, p)
    got = kernels.flip_delta_conv2d_fused(G, a, W, x, s, p)
    assert got.dtype == dtype and got.shape == x.shape and got.is_contiguous()
    assert torch.allclose(got.double(), want, rtol=0, atol=exact_tol(c_out * k * k, G, dtype))
    if dtype == F64:
        assert rel(got, want) < 1e-10


def test_fused_accepts_views_and_grad_tensors():
    G, a, W, x = conv_case(2, 3, 4, 3, 1, 1, 5, 5)
    want = kernels.flip_delta_conv2d_reference(G, a, W, x, 1, 1)
    xs = x.transpose(2, 3).contiguous().transpose(2, 3).requires_grad_()  # same values, strided
    got = kernels.flip_delta_conv2d_fused(G, a, W, xs, 1, 1)
    assert not got.requires_grad
    assert torch.allclose(got, want, rtol=0, atol=exact_tol(36, G, F64))


def test_fused_keeps_torch_thread_count():
    # the first launch of numba's OpenMP pool resets the shared OpenMP thread count: a fresh
    # process is needed to see it
    code = (
        "import torch; from sbnkit.kernels import flip_delta_dense_fused as f\n"
        "torch.set_num_threads(1)\n"
        "f(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3, 2), torch.ones(2, 2))\n"
        "print(torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1"]


def term_abs_sum_dense(G, a, W, x):
    """``Σ_j |G_j Δ_j|`` per output: the scale of the series error bound."""
    delta = torch.sigmoid(a[:, :, None] - 2 * W[None] * x[:, None, :]) - torch.sigmoid(a)[..., None]
    return (G.abs()[:, :, None] * delta.abs()).sum(1)


@pytest.mark.parametrize("shape", DENSE_SHAPES)
def test_series_dense_forced_order_and_bound(shape):
    G, a, W, x = dense_case(*shape, w_scale=0.05)
    want = kernels.flip_delta_dense_reference(G, a, W, x)
    got = kernels.flip_delta_dense_series(G, a, W, x, order=12)
    r = 2 * float(W.abs().max())
    assert r < 0.5  # small weights: ε_12(0.5) = 2e-10
    # per-term bound |R_N| ≤ ε_N(r) |Δ| plus the float64 rounding of both sides
    bound = series.remainder_bounds(r)[11] * term_abs_sum_dense(G, a, W, x)
    assert torch.all((got - want).abs() <= bound + exact_tol(shape[2], G, F64))
    assert rel(got, want) < 1e-9


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_series_conv_forced_order(shape):
    batch, c_in, c_out, k, s, p, h, w = shape
    G, a, W, x = conv_case(*shape, w_scale=0.04)
    want = kernels.flip_delta_conv2d_reference(G, a, W, x, s, p)
    got = kernels.flip_delta_conv2d_series(G, a, W, x, s, p, order=12)
    assert got.shape == x.shape
    assert 2 * float(W.abs().max()) < 0.5  # ε_12 ≤ 2e-10 relative to Σ|GΔ|, so ≤ 1e-9 of |g|
    assert rel(got, want) < 1e-9


@pytest.mark.parametrize("tol", [1e-2, 1e-3, 1e-4])
@pytest.mark.parametrize("seed", [0, 1])
def test_series_auto_order_meets_tol(tol, seed):
    # weights like a trained layer (std 2/sqrt(fan_in)), so r = max 2|W| is about 1.2
    G, a, W, x = conv_case(4, 16, 16, 3, 1, 1, 8, 8, w_scale=2 / 12, seed=seed)
    order = series.select_order(2 * float(W.abs().max()), tol)
    assert order is not None and order <= series.N_MAX
    want = kernels.flip_delta_conv2d_reference(G, a, W, x, 1, 1)
    got = kernels.flip_delta_conv2d(G, a, W, x, 1, 1, kernel="series", tol=tol)
    assert rel(got, want) <= tol
    Gd, ad, Wd, xd = dense_case(16, 30, 40, w_scale=0.15, seed=seed)  # r ≈ 1
    want = kernels.flip_delta_dense_reference(Gd, ad, Wd, xd)
    got = kernels.flip_delta_dense(Gd, ad, Wd, xd, kernel="series", tol=tol)
    r = 2 * float(Wd.abs().max())
    bound = series.remainder_bounds(r)[series.select_order(r, tol) - 1]
    assert bound <= tol
    assert torch.all((got - want).abs() <= bound * term_abs_sum_dense(Gd, ad, Wd, xd) + 1e-12)
    assert rel(got, want) <= tol


def test_series_error_falls_with_order():
    G, a, W, x = conv_case(2, 8, 8, 3, 1, 1, 6, 6, w_scale=0.3)
    want = kernels.flip_delta_conv2d_reference(G, a, W, x, 1, 1)
    errs = [
        rel(kernels.flip_delta_conv2d_series(G, a, W, x, 1, 1, order=n), want) for n in (1, 3, 6)
    ]
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] > 10 * errs[2]


def test_series_order_one_is_the_linearisation():
    G, a, W, x = dense_case(5, 6, 7)
    s = torch.sigmoid(a)
    lin = -2 * x * ((G * s * (1 - s)) @ W)  # Σ_j G_j σ'(a_j) (-2 W_ji x_i)
    got = kernels.flip_delta_dense_series(G, a, W, x, order=1)
    assert torch.allclose(got, lin, rtol=1e-12, atol=1e-14)


def test_series_float32():
    G, a, W, x = conv_case(2, 6, 5, 3, 2, 1, 9, 8, w_scale=0.1)
    want = kernels.flip_delta_conv2d_reference(G, a, W, x, 2, 1)
    got = kernels.flip_delta_conv2d_series(G.float(), a.float(), W.float(), x.float(), 2, 1)
    assert got.dtype == F32
    # truncation ≤ 1e-3, float32 rounding ~ 1e-6 of |g|
    assert rel(got, want) < 1e-3
    # G is normalised by max|G| inside, so a tiny G (whose products with w^k and Wⁿ would be
    # subnormal) gives the same result scaled: only float32 rounding (~1e-6) differs
    tiny = kernels.flip_delta_conv2d_series(
        G.float() * 1e-30, a.float(), W.float(), x.float(), 2, 1, order=8
    )
    same = kernels.flip_delta_conv2d_series(
        G.float(), a.float(), W.float(), x.float(), 2, 1, order=8
    )
    assert rel(tiny * 1e30, same) < 1e-5


@pytest.mark.parametrize("n", range(1, 7))
def test_derivative_polynomials_match_autograd(n):
    a = torch.linspace(-6, 6, 25, dtype=F64, requires_grad=True)
    y = torch.sigmoid(a)
    for _ in range(n):
        (y,) = torch.autograd.grad(y.sum(), a, create_graph=True)
    a = a.detach()
    w, z = torch.sigmoid(a) * torch.sigmoid(-a), torch.tanh(-a / 2)
    coef = series.derivative_polynomials(n)
    poly = sum(float(c) * w**j for j, c in enumerate(coef)) * (z if n % 2 == 0 else 1)
    want = y.detach() * (-2) ** n / math.factorial(n)
    assert torch.allclose(poly, want, rtol=1e-10, atol=1e-14)


def test_remainder_bound_holds_on_random_terms():
    gen = torch.Generator().manual_seed(3)
    for r in (0.3, 1.0, 1.6):
        a = (torch.rand(4000, generator=gen, dtype=F64) * 2 - 1) * 60  # also |a| > 30, a < 0
        d = (torch.rand(4000, generator=gen, dtype=F64) * 0.5 + 0.5) * r
        d = d * torch.where(torch.rand(4000, generator=gen) < 0.5, -1.0, 1.0)
        delta = -torch.sigmoid(a - d) * torch.sigmoid(-a) * torch.expm1(d)  # no cancellation
        w, z = torch.sigmoid(a) * torch.sigmoid(-a), torch.tanh(-a / 2)
        partial = torch.zeros_like(a)
        for n, bound in enumerate(series.remainder_bounds(r), start=1):
            coef = series.derivative_polynomials(n)
            c_n = sum(float(c) * w**j for j, c in enumerate(coef)) * (z if n % 2 == 0 else 1)
            partial += c_n * (d / 2) ** n
            ratio = ((delta - partial).abs() / delta.abs()).max()
            assert ratio <= bound * (1 + 1e-6) + 1e-13, (r, n)


def test_select_order_table():
    assert series.select_order(0.0) == 1
    assert series.select_order(0.5) == 4
    assert series.select_order(1.0) == 6
    assert series.select_order(1.5) == 10
    assert series.select_order(2.0) is None
    assert series.select_order(5.0) is None
    orders = [series.select_order(0.8, tol) for tol in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6)]
    assert orders == sorted(orders)


# --- extreme inputs ---------------------------------------------------------------------------


def extreme_case(conv: bool, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(7)
    if conv:
        G, a, W, x = conv_case(2, 4, 5, 3, 1, 1, 5, 5, seed=7)
    else:
        G, a, W, x = dense_case(4, 9, 11, seed=7)
    u = torch.rand(a.shape, generator=gen, dtype=F64)
    huge = (torch.rand(a.shape, generator=gen, dtype=F64) * 2 - 1) * 1e4
    mid = (torch.rand(a.shape, generator=gen, dtype=F64) * 2 - 1) * 120  # σ(a ∓ 100) undecided
    a = torch.where(u < 0.4, huge, torch.where(u < 0.8, mid, a))
    W = (torch.rand(W.shape, generator=gen, dtype=F64) * 2 - 1) * 50
    return G.to(dtype), a.to(dtype), W.to(dtype), x.to(dtype)


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_extreme_inputs(conv, dtype):
    G, a, W, x = extreme_case(conv, dtype)
    exact = [G.double(), a.double(), W.double(), x.double()]
    if conv:
        ref64 = kernels.flip_delta_conv2d_reference(*exact, 1, 1)
        ref = kernels.flip_delta_conv2d_reference(G, a, W, x, 1, 1)
        fused = kernels.flip_delta_conv2d_fused(G, a, W, x, 1, 1)
        auto = kernels.flip_delta_conv2d(G, a, W, x, 1, 1)
        n_terms = 5 * 9
    else:
        ref64 = kernels.flip_delta_dense_reference(*exact)
        ref = kernels.flip_delta_dense_reference(G, a, W, x)
        fused = kernels.flip_delta_dense_fused(G, a, W, x)
        auto = kernels.flip_delta_dense(G, a, W, x)
        n_terms = 11
    for got in (ref, fused, auto):
        assert got.dtype == dtype and torch.isfinite(got).all()
        # the inputs were rounded to dtype first, so ref64 is exact for these very inputs
        assert torch.allclose(got.double(), ref64, rtol=0, atol=exact_tol(n_terms, G, dtype))
    assert ref64.abs().max() > 1  # the case has large, undecided terms
    assert not kernels.series_supported(W)
    assert kernels.choose_kernel(a, W) == "fused"
    assert torch.equal(auto, fused)
    with pytest.raises(kernels.SeriesUnsupportedError, match="too large"):
        if conv:
            kernels.flip_delta_conv2d(G, a, W, x, 1, 1, kernel="series")
        else:
            kernels.flip_delta_dense(G, a, W, x, kernel="series")


def test_fused_float32_large_weights():
    # |a| ≤ 59 stays on the float32 path; 2|W| up to 100 exercises the clamp of e^{-2|W|} at e^-77
    G, a, W, x = conv_case(2, 3, 4, 3, 1, 1, 5, 5, seed=5)
    a = (torch.rand(a.shape, dtype=F64) * 2 - 1) * 59
    W = (torch.rand(W.shape, dtype=F64) * 2 - 1) * 50
    G, a, W, x = (t.float().double() for t in (G, a, W, x))  # exactly representable in float32
    want = kernels.flip_delta_conv2d_reference(G, a, W, x, 1, 1)
    got = kernels.flip_delta_conv2d_fused(G.float(), a.float(), W.float(), x.float(), 1, 1)
    assert torch.isfinite(got).all() and want.abs().max() > 1
    assert torch.allclose(got.double(), want, rtol=0, atol=exact_tol(36, G, F32))


def test_fused_float32_switches_to_float64_for_large_a():
    # |a| = 61..70 is past the float32 clamp (60) and 2|W| ≈ 130 makes the terms undecided
    G, a, W, x = dense_case(3, 4, 5, seed=2)
    a = (60 + torch.rand(a.shape, dtype=F64) * 10) * a.sign()
    W = 65 * W.sign()
    G, a = G.float().double(), a.float().double()  # exactly representable in float32
    want = kernels.flip_delta_dense_reference(G, a, W, x)
    assert want.abs().max() > 0.1
    got = kernels.flip_delta_dense_fused(G.float(), a.float(), W.float(), x.float())
    assert torch.allclose(got.double(), want, rtol=0, atol=exact_tol(5, G, F32))


# --- dispatch and bad inputs ------------------------------------------------------------------


def test_dispatch_all_kernels_agree():
    G, a, W, x = conv_case(2, 3, 4, 3, 2, 1, 7, 5, w_scale=0.1)
    want = kernels.flip_delta_conv2d_reference(G, a, W, x, 2, 1)
    assert kernels.KERNELS == ("auto", "reference", "fused", "series")
    for name in kernels.KERNELS:
        got = kernels.flip_delta_conv2d(G, a, W, x, 2, 1, kernel=name)
        assert rel(got, want) < 1e-3
    Gd, ad, Wd, xd = dense_case(3, 4, 5, w_scale=0.1)
    want = kernels.flip_delta_dense_reference(Gd, ad, Wd, xd)
    for name in kernels.KERNELS:
        assert rel(kernels.flip_delta_dense(Gd, ad, Wd, xd, kernel=name), want) < 1e-3


def test_auto_choice():
    # only the shapes of a and max|W| matter: a CIFAR-sized conv layer and a small dense one
    a_conv, w_conv = torch.zeros(64, 96, 28, 28), torch.full((96, 96, 3, 3), 0.04)
    assert kernels.select_order(0.08) == 3
    assert kernels.choose_kernel(a_conv, w_conv) == "series"  # 3 (1 + 80/50176 + 25/864) < 14
    assert kernels.choose_kernel(a_conv, w_conv * 30) == "fused"  # 2.4: no N ≤ 12 meets tol
    assert kernels.choose_kernel(a_conv, w_conv * 30, order=2) == "series"
    assert kernels.choose_kernel(a_conv, w_conv, kernel="reference") == "reference"
    a_dense, w_dense = torch.zeros(4, 1024), torch.full((1024, 1024), 0.04)
    assert kernels.choose_kernel(a_dense, w_dense) == "fused"  # 3 (1 + 80/4 + 25/1024) > 14
    assert kernels.choose_kernel(torch.zeros(256, 1024), w_dense) == "series"


def test_empty_batch():
    G, a, W, x = conv_case(0, 3, 4, 3, 1, 1, 5, 5, w_scale=0.1)
    for name in kernels.KERNELS:
        assert kernels.flip_delta_conv2d(G, a, W, x, 1, 1, kernel=name).shape == x.shape
    G, a, W, x = dense_case(0, 3, 4, w_scale=0.1)
    for name in kernels.KERNELS:
        assert kernels.flip_delta_dense(G, a, W, x, kernel=name).shape == x.shape


def test_bad_inputs():
    G, a, W, x = dense_case(3, 4, 5)
    with pytest.raises(ValueError, match="unknown flip-difference kernel 'fast'.*auto, reference"):
        kernels.flip_delta_dense(G, a, W, x, kernel="fast")
    with pytest.raises(ValueError, match=r"W must be \[n_out, n_in\] = \[5, 4\], got \[4, 5\]"):
        kernels.flip_delta_dense(G, a, W.T, x)
    with pytest.raises(ValueError, match="same shape"):
        kernels.flip_delta_dense(G[:, :4], a, W, x)
    with pytest.raises(ValueError, match="same batch size"):
        kernels.flip_delta_dense(G, a, W, x[:2])
    with pytest.raises(ValueError, match="2 dimensions"):
        kernels.flip_delta_dense(G, a, W, x[None])
    with pytest.raises(ValueError, match="one floating dtype"):
        kernels.flip_delta_dense(G, a, W.float(), x)
    with pytest.raises(ValueError, match="order must be an int"):
        kernels.flip_delta_dense(G, a, W, x, kernel="series", order=0)
    with pytest.raises(ValueError, match="tol must be > 0"):
        kernels.flip_delta_dense(G, a, W, x, kernel="series", tol=0.0)
    G, a, W, x = conv_case(2, 3, 4, 3, 1, 1, 5, 5)
    with pytest.raises(ValueError, match="gives outputs"):
        kernels.flip_delta_conv2d(G, a, W, x, 2, 1)
    with pytest.raises(ValueError, match=r"W must be \[C_out, C_in, K, K\]"):
        kernels.flip_delta_conv2d(G, a, W[:, :2], x, 1, 1)
    with pytest.raises(ValueError, match=r"W must be"):
        kernels.flip_delta_conv2d(G, a, W[..., :2], x, 1, 1)
    with pytest.raises(ValueError, match="stride must be"):
        kernels.flip_delta_conv2d(G, a, W, x, 0, 1)
    with pytest.raises(ValueError, match="padding must be one int"):
        kernels.flip_delta_conv2d(G, a, W, x, 1, (1, 2))
    with pytest.raises(ValueError, match="unknown flip-difference kernel"):
        kernels.flip_delta_conv2d(G, a, W, x, 1, 1, kernel="")
    for fn in (
        kernels.flip_delta_conv2d_reference,
        kernels.flip_delta_conv2d_fused,
        kernels.flip_delta_conv2d_series,
    ):
        with pytest.raises(ValueError, match="same shape"):
            fn(G[:1], a, W, x, 1, 1)
