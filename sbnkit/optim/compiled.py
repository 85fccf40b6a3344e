"""Compiled CPU paths (numba) of AdaSTE's forward/backward and BayesBiNN's sample/update.

Each function gives **bit-identical** results to the torch forms of :mod:`.functional`, which
stay the reference (and the path for other devices, dtypes and non-contiguous tensors): one loop
over the elements repeats the reference's float operations in its order, in the tensor's dtype,
with the Python constants rounded to it as torch rounds them.

* AdaSTE: :func:`adaste_forward` is ``w*(θ)``, :func:`adaste_grad` is ``ρ(θ, g) · g`` (both
  rules), each one pass instead of ~5 and ~15 torch passes.
* BayesBiNN: the transcendental functions are torch's, vectorised, but only where their value is
  not ``±1``. torch's ``tanh`` is exactly ``±1`` beyond :data:`TANH_SATURATED` (checked by the
  tests), so in :func:`bayesbinn_update_` ``μ = tanh λ`` is only computed (by torch, on the
  gathered elements) where ``|λ| ≤`` that bound; the uniforms (torch's ``rand`` or
  :func:`~sbnkit.optim.philox.uniform_like`) are ``u = 0`` or ``u ∈ [2^-p, 1 - 2^-p]``
  (``p`` the significand bits), where ``|δ| = |½ log(u/(1-u))| ≤ D``, so
  :func:`bayesbinn_sample` is ``sign λ`` (``-1`` for ``u = 0``) wherever ``|λ| > D + τ·bound``;
  for the gathered rest torch computes ``log u`` and ``log(1 - u)``, the loop the reference's
  arithmetic, and torch the ``tanh`` where it is not ``±1``. With a small temperature and latents
  far from 0 (BayesBiNN's ``τ = 1e-10``, ``λ₀ = ±10``) nearly every element takes the first case.

numba is imported on first use (:mod:`._jit`, so ``import sbnkit`` does not load it);
the loops compile then for each dtype (cached on disk). They run on one thread.
"""

from __future__ import annotations

import threading

import torch

from . import functional as F

__all__ = [
    "TANH_SATURATED",
    "adaste_forward",
    "adaste_grad",
    "bayesbinn_sample",
    "bayesbinn_update_",
    "supported",
]

TANH_SATURATED = {torch.float32: 10.0, torch.float64: 20.0}  # |x| above: torch.tanh(x) = ±1
_RAND_BITS = {torch.float32: 24, torch.float64: 53}  # the uniforms' resolution 2^-p
_DELTA_BOUND: dict[torch.dtype, float] = {}
_LOCAL = threading.local()  # per thread: the scratch arrays of the BayesBiNN loops


def supported(*tensors: torch.Tensor) -> bool:
    """Whether the compiled path applies: CPU, contiguous, one dtype of float32/float64."""
    dtype = tensors[0].dtype
    return dtype in TANH_SATURATED and all(
        t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() for t in tensors
    )


def _flat(t: torch.Tensor):
    return t.detach().numpy().reshape(-1)


def _scratch(like: torch.Tensor) -> tuple:
    """Room for the indices of all of ``like``'s elements and two arrays of their values: views
    of this thread's arrays, grown as needed (each call uses them up before it returns)."""
    from . import _jit as jit

    n = like.numel()
    cache = _LOCAL.__dict__.setdefault("scratch", {})
    arrays = cache.get(like.dtype)
    if arrays is None or arrays[0].shape[0] < n:
        dtype = jit.np.float32 if like.dtype == torch.float32 else jit.np.float64
        arrays = jit.np.empty(n, jit.np.int64), jit.np.empty(n, dtype), jit.np.empty(n, dtype)
        cache[like.dtype] = arrays
    return tuple(a[:n] for a in arrays)


def _consts(dtype: torch.dtype, *values: float | bool) -> tuple:
    """``values`` as numpy scalars of ``dtype`` (rounded as torch rounds a Python scalar), bools
    kept."""
    from . import _jit as jit

    c = jit.np.float32 if dtype == torch.float32 else jit.np.float64
    return tuple(v if isinstance(v, bool) else c(v) for v in values)


def adaste_forward(theta: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """:func:`~sbnkit.optim.functional.adaste_forward`, compiled on the CPU."""
    if not supported(theta):
        return F.adaste_forward(theta, alpha, beta)
    from . import _jit as jit

    out = torch.empty_like(theta)
    jit.adaste_forward(
        _flat(theta), _flat(out), *_consts(theta.dtype, beta * (1.0 + alpha), 1.0 + beta, 1.0)
    )
    return out


def adaste_grad(
    theta: torch.Tensor, grad: torch.Tensor, alpha: float, beta: float, rule: F.AdaSTERule = "code"
) -> torch.Tensor:
    """``adaste_factor(theta, grad, alpha, beta, rule) * grad``, compiled on the CPU. Raises
    ``ValueError`` for an unknown ``rule``."""
    if rule not in F.ADASTE_RULES:
        raise ValueError(f"rule must be one of {', '.join(F.ADASTE_RULES)}, got {rule!r}")
    if not supported(theta, grad):
        return F.adaste_factor(theta, grad, alpha, beta, rule).mul_(grad)
    from . import _jit as jit

    out = torch.empty_like(theta)
    args = (_flat(theta), _flat(grad), _flat(out))
    if rule == "corrected":
        jump0 = min(1.0, beta * (1.0 + alpha) / (1.0 + beta))
        consts = (beta * (1.0 + alpha), 1.0 + beta, 1.0 / (1.0 + beta), jump0, 1.0)
        jit.adaste_backward_corrected(*args, *_consts(theta.dtype, *consts))
        return out
    ab = alpha * beta
    if ab >= 1.0:
        consts = (F.ADASTE_G_GATE, F.ADASTE_THETA_GATE_B, F.ADASTE_CAP, 1.0)
        jit.adaste_backward_big(*args, *_consts(theta.dtype, *consts))
        return out
    edge = 1.0 - ab
    consts = (
        F.ADASTE_G_GATE,
        F.ADASTE_THETA_GATE,
        max(F.ADASTE_THETA_GATE, edge),
        edge,
        2.0 * beta * (1.0 + alpha),
        1.0 + 2.0 * beta + ab,
        1.0 / (1.0 + beta),
        1.0 + beta,
        F.ADASTE_CAP,
        1.0,
    )
    jit.adaste_backward_code(*args, *_consts(theta.dtype, *consts))
    return out


def _delta_bound(dtype: torch.dtype) -> float:
    """``max |δ|`` over ``u ∈ [2^-p, 1 - 2^-p]`` as torch computes ``δ``, with a margin."""
    if dtype not in _DELTA_BOUND:
        lo = 2.0 ** -_RAND_BITS[dtype]
        u = torch.tensor([lo, 1.0 - lo], dtype=dtype, device="cpu")
        delta = torch.log(u).sub_(torch.neg(u).log1p_()).mul_(0.5)
        _DELTA_BOUND[dtype] = float(delta.abs().max()) * (1.0 + 2.0**-10)
    return _DELTA_BOUND[dtype]


def bayesbinn_sample(lam: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """:func:`~sbnkit.optim.functional.bayesbinn_sample`, compiled on the CPU."""
    if not supported(lam, u):
        return F.bayesbinn_sample(lam, u, temperature)
    from . import _jit as jit

    dtype = lam.dtype
    lo = 2.0 ** -_RAND_BITS[dtype]
    far = (_delta_bound(dtype) + TANH_SATURATED[dtype] * temperature) * (1.0 + 2.0**-10)
    out = torch.empty_like(lam)
    near, near_lam, near_u = _scratch(lam)
    consts = _consts(dtype, far, lo, 1.0 - lo, 1.0)
    arrays = (_flat(lam), _flat(u), _flat(out), near, near_lam, near_u)
    k = jit.bayesbinn_sample(*arrays, *consts)
    if k:  # torch's log and tanh where needed, as in the reference (its order of operations)
        near_u = torch.from_numpy(near_u[:k])
        log_u, log1m_u = torch.log(near_u), torch.neg(near_u).log1p_()
        rest = jit.np.empty(k, jit.np.int64)
        rest_x = near_u.numpy()  # reused: its values are consumed
        finish = (temperature, TANH_SATURATED[dtype], 1.0)
        r = jit.finish_sample(
            arrays[2], near[:k], near_lam[:k], log_u.numpy(), log1m_u.numpy(), rest, rest_x,
            *_consts(dtype, 0.5, *finish),
        )  # fmt: skip
        if r:
            values = torch.from_numpy(rest_x[:r]).tanh_().numpy()
            jit.scatter(arrays[2], near[:k][rest[:r]], values)
    return out


def bayesbinn_update_(
    lam: torch.Tensor,
    exp_avg: torch.Tensor,
    grad: torch.Tensor,
    w: torch.Tensor,
    step: int,
    *,
    lr: float,
    momentum: float,
    temperature: float,
    train_size: float,
    prior: float = 0.0,
    kl_weight: float = 1.0,
) -> None:
    """:func:`~sbnkit.optim.functional.bayesbinn_update` with ``μ = tanh λ``, in place: ``lam``
    becomes the new ``λ`` and ``exp_avg`` the new ``m``; compiled on the CPU."""
    if not supported(lam, exp_avg, grad, w) or not isinstance(prior, float):
        new_lam, new_avg = F.bayesbinn_update(
            lam, exp_avg, grad, w, torch.tanh(lam), step, lr=lr, momentum=momentum,
            temperature=temperature, train_size=train_size, prior=prior, kl_weight=kl_weight,
        )  # fmt: skip
        lam.copy_(new_lam)
        exp_avg.copy_(new_avg)
        return
    from . import _jit as jit

    mom = momentum != 0.0
    consts = (
        temperature,
        F.BAYESBINN_EPS,
        train_size,
        prior,
        kl_weight,
        1.0 - momentum,
        momentum,
        lr,
        1.0 - momentum**step if mom else 1.0,
        1.0,
    )
    h = _consts(lam.dtype, *consts, prior != 0.0, kl_weight != 1.0, mom)
    arrays = (_flat(lam), _flat(exp_avg), _flat(grad), _flat(w))
    near, near_lam, _ = _scratch(lam)
    sat = _consts(lam.dtype, TANH_SATURATED[lam.dtype])[0]
    k = jit.bayesbinn_update(*arrays, near, near_lam, sat, h)
    if k:
        mu = torch.tanh(torch.from_numpy(near_lam[:k]))
        jit.bayesbinn_update_at(*arrays, near[:k], mu.numpy(), h)
