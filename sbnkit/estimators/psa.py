"""PSA: the path sample-analytic gradient estimator (Shekhovtsov, Yanush & Flach 2020,
NeurIPS).

One sampled forward pass ``x^k = sign(a^k - z)`` with ``±1`` states. Every unit carries a
*linearised flip probability* ``q`` whose value is 0 (``q - q.detach()``) and whose derivative
propagates single flips along the path. With ``σ`` the logistic CDF, ``ã = a / s`` and
``W̃_ji = g_j W_ji / s`` (``s`` the noise scale, ``g_j`` the per-channel gain of the norm)::

    Δ_j       = -x^k_j σ(ã_j)                                 (d Δ_j = d P(x^k_j flips))
    q^1_j     = Δ^1_j                                          (the real input cannot flip)
    dq^k_j    = dΔ^k_j + Σ_i [σ(ã_j - 2 W̃_ji x_i) - σ(ã_j)] (-x^k_j) dq^{k-1}_i

The sum is the flip-difference kernel (:mod:`sbnkit.kernels`) run in the backward of a function
whose forward is zero; it already contains the "easy" term ``-Δ_j Σ_i dq_i`` (the ``-σ(ã_j)``), so
no separate window sum is added. Conv stages sum over the receptive field (cross-correlation
indexing). At the head, with ``η(x ⊕ i) = η(x) - 2 J[:, i] x_i`` (``J`` the head's linear map on
the flattened last binary layer, ``W / (H W)`` repeated over positions for ``avg`` pooling)::

    π_i = (1 - P_i) / n + q_i,   P_i = P(X_i = x_i) = σ(x_i ã_i)  (detached)
    Ê   = (1 - Σ_i π_i) f(η(x)) + Σ_i π_i f(η(x ⊕ i))

whose value is the Rao-Blackwellised loss estimate (the mean of the n local expectations).

Norms: the flip change of ``a_j`` is ``-2 g_c W_ji x_i`` with ``g = stage.norm_gain(op(x))``
treated as a constant (BatchNorm batch statistics are not differentiated through the flip).

Bernoulli weights in ``sample`` mode (weights sampled once per forward pass): weight ``w_ji`` with
``P(w_ji = +1) = F_w(η_ji)`` is an extra binary input shared by the batch; its flip changes
``a_j`` by ``-2 g_j w_ji x_i`` in every example, so it adds to each example's ``q``::

    q^w_ji   = -w_ji F_w(η_ji)  (zero in value)
    dq^k_j  += Σ_i [σ(ã_j - 2 W̃_ji x_i) - σ(ã_j)] (-x^k_j) dq^w_ji

The backward contraction ``Σ_b G_bj [σ(ã_bj - 2 W̃_ji x_bi) - σ(ã_bj)]`` (``G = -x^k ⊙ ∂/∂q^k``)
is exact and GEMM-shaped for ``±1`` inputs: with ``c_j = g_j / s``,
``D^±_bj = σ(ã_bj ∓ 2 c_j) - σ(ã_bj)`` and ``[x = w] = (1 + w x) / 2`` it is
``½ Σ_b G(D^+ + D^-)_bj + ½ w_ji Σ_b G(D^+ - D^-)_bj x_bi`` (conv: two weight-gradient convs, the
first over an all-ones input so padding contributes nothing). A real input (the first stage) uses
a chunked direct sum. The pre-activation uses the sampled weights detached, so the latents get
only this gradient; Bernoulli weights in ``mode``/``mean`` mode are treated as real weights and
head weights keep their parametrization's straight-through gradient.

Unbiased for the head and the last binary layer (with an affine or eval-mode norm; BatchNorm
batch statistics couple the examples), including its sampled weights when each weight reaches one
unit per example (dense stages, 1x1 conv outputs): a conv weight shared by several positions gets
the first-order sum over the units it reaches instead of the exact finite difference, a
second-order bias. Deeper layers are biased by the single-flip linearisation, and by the series
kernel's truncation (``tol``) when ``auto`` picks it. Needs logistic unit noise (any scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .. import kernels
from ..errors import UserError
from ..network import SBN, Stage, along
from ..noise import Logistic
from .base import Estimator, LossFn, per_example, register
from .walk import op_with_weight, path_modules, sampled_bernoulli

__all__ = ["PSA"]


def _conv_geometry(op: nn.Conv2d) -> tuple[int, int]:
    """``(stride, padding)`` of a square conv, or a :class:`UserError`."""
    where = f"psa: conv {op}"
    if op.groups != 1 or tuple(op.dilation) != (1, 1):
        raise UserError(f"{where} has groups/dilation != 1; PSA supports plain convolutions only")
    if op.padding_mode != "zeros":
        raise UserError(f"{where} uses padding_mode={op.padding_mode!r}; use zero padding")
    kh, kw = op.kernel_size
    if kh != kw or kh % 2 == 0:
        raise UserError(f"{where} needs a square odd kernel (got {kh}x{kw}); use e.g. 1, 3 or 5")
    sh, sw = op.stride
    if isinstance(op.padding, str):
        pad = (0, 0) if op.padding == "valid" else (kh // 2, kh // 2)
    else:
        pad = tuple(op.padding)
    if sh != sw or pad[0] != pad[1]:
        raise UserError(f"{where} needs equal strides and paddings in both dimensions")
    return int(sh), int(pad[0])


def _check(sbn: SBN, mods: list[nn.Module]) -> None:
    stages = [m for m in mods if isinstance(m, Stage)]
    if not stages:
        raise UserError("psa needs at least one binary stage; the model has none")
    for m in stages:
        if not isinstance(m.unit.noise, Logistic):
            raise UserError(
                f"psa needs logistic unit noise, got {m.unit.noise!r}; use 'st' or 'exact' "
                "for other noises"
            )
        if isinstance(m.op, nn.Conv2d):
            _conv_geometry(m.op)
        sampled_bernoulli(m.op)


class _FlipSpec:
    """What the flip backward of one stage needs besides the tensors."""

    def __init__(
        self, conv: tuple[int, int] | None, states_in: bool, options: dict, chunk: int
    ) -> None:
        self.conv = conv  # (stride, padding) or None for a dense stage
        self.states_in = states_in  # the stage input is ±1 states (not the real input)
        self.options = options
        self.chunk = chunk


class _Flip(torch.autograd.Function):
    """Forward 0; backward ``∂/∂q_in`` (flip kernel) and ``∂/∂q^w`` (weight contraction).

    ``w`` is the (detached) weight and ``c = g / s`` the per-channel factor: ``W̃ = c ⊙ w``.
    """

    @staticmethod
    def forward(ctx, q_in, q_w, at, w, c, x, x_out, spec):  # type: ignore[override]
        ctx.save_for_backward(at, w, c, x, x_out)
        ctx.spec = spec
        return torch.zeros_like(at)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        at, w, c, x, x_out = ctx.saved_tensors
        spec = ctx.spec
        big_g = -x_out * grad
        wt = w * along(c, 0, w.dim())
        g_in = g_w = None
        if ctx.needs_input_grad[0]:
            if spec.conv is None:
                g_in = kernels.flip_delta_dense(big_g, at, wt, x, **spec.options)
            else:
                stride, padding = spec.conv
                g_in = kernels.flip_delta_conv2d(big_g, at, wt, x, stride, padding, **spec.options)
        if ctx.needs_input_grad[1]:
            if spec.states_in:
                g_w = _weight_flip_states(big_g, at, w, c, x, spec.conv)
            else:
                g_w = _weight_flip_direct(big_g, at, wt, x, spec.conv, spec.chunk)
        return g_in, g_w, None, None, None, None, None, None


def _weight_flip_states(
    big_g: torch.Tensor,
    at: torch.Tensor,
    w: torch.Tensor,
    c: torch.Tensor,
    x: torch.Tensor,
    conv: tuple[int, int] | None,
) -> torch.Tensor:
    """``Σ_b G_bj [σ(ã_bj - 2 c_j w_ji x_bi) - σ(ã_bj)]`` for ``±1`` weights and inputs.

    ``= ½ Σ_b G(D^+ + D^-)_bj [x_bi exists] + ½ w_ji Σ_b G(D^+ - D^-)_bj x_bi`` with
    ``D^± = σ(ã ∓ 2c) - σ(ã)`` (conv: summed over output positions, as a weight gradient).
    """
    cc = along(c, 1, at.dim())
    base = torch.sigmoid(at)
    d_plus = torch.sigmoid(at - 2.0 * cc) - base
    d_minus = torch.sigmoid(at + 2.0 * cc) - base
    even = 0.5 * big_g * (d_plus + d_minus)
    odd = 0.5 * big_g * (d_plus - d_minus)
    if conv is None:
        return even.sum(0)[:, None] + w * (odd.T @ x)
    stride, padding = conv
    grad_w = torch.nn.grad.conv2d_weight
    ones = torch.ones_like(x[:1])  # the same for every example: sum the batch first
    total = grad_w(ones, w.shape, even.sum(0, keepdim=True), stride, padding)
    return total + w * grad_w(x, w.shape, odd, stride, padding)


def _weight_flip_direct(
    big_g: torch.Tensor,
    at: torch.Tensor,
    wt: torch.Tensor,
    x: torch.Tensor,
    conv: tuple[int, int] | None,
    chunk: int,
) -> torch.Tensor:
    """``Σ_b G_bj [σ(ã_bj - 2 W̃_ji x_bi) - σ(ã_bj)]`` for a real input, in batch chunks."""
    if conv is None:
        g, a, xs, w = big_g[:, :, None], at[:, :, None], x[:, None, :], wt[None]
        per_example, dims = wt.numel(), (0,)
    else:
        stride, padding = conv
        xu = F.unfold(x, wt.shape[-1], padding=padding, stride=stride)  # [B, C_in k k, L]
        g, a = big_g.flatten(2)[:, :, None, :], at.flatten(2)[:, :, None, :]
        xs, w = xu[:, None], wt.reshape(wt.shape[0], -1)[None, :, :, None]
        per_example, dims = wt.numel() * xu.shape[-1], (0, 3)
    step = max(1, chunk // per_example)
    total = torch.zeros_like(wt).reshape(w.shape[1:3])
    for s in range(0, at.shape[0], step):
        sl = slice(s, s + step)
        diff = torch.sigmoid(a[sl] - 2.0 * w * xs[sl]) - torch.sigmoid(a[sl])
        total = total + (g[sl] * diff).sum(dims)
    return total.view(wt.shape)


@register("psa")
class PSA(Estimator):
    """The PSA estimator (see the module docstring).

    ``kernel``/``tol``/``order`` select the flip-difference kernel (:mod:`sbnkit.kernels`);
    ``chunk`` bounds the elements of the ``[B, n, K]`` flipped-logit tensor and of the direct
    weight contraction per step. Raises :class:`UserError` for an unknown kernel or a
    non-positive ``chunk``.
    """

    def __init__(
        self,
        kernel: kernels.KernelName = "auto",
        tol: float = 1e-3,
        order: int | None = None,
        chunk: int = 2**22,
    ) -> None:
        if kernel not in kernels.KERNELS:
            known = ", ".join(kernels.KERNELS)
            raise UserError(f"unknown psa kernel {kernel!r}; known kernels: {known}")
        if int(chunk) < 1:
            raise UserError(f"psa chunk must be a positive integer, got {chunk!r}")
        self.kernel, self.tol, self.order, self.chunk = kernel, tol, order, int(chunk)

    def surrogate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> torch.Tensor:
        sbn, mods = path_modules(model, self.name)
        _check(sbn, mods)
        with parametrize.cached():
            h, q, keep = x, None, None
            for m in mods:
                if isinstance(m, Stage):
                    h, q, keep = self._stage(m, h, q)
                else:
                    h = m(h)
                    q = None if q is None else m(q)
            return self._head(sbn, h, q, keep, y, loss_fn)

    def _stage(
        self, stage: Stage, h: torch.Tensor, q: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample the stage; return its states, their ``q`` and ``P(X = x)`` (detached)."""
        op = stage.op
        bern = sampled_bernoulli(op)
        weight = op.weight.detach() if bern is not None else op.weight
        t = op_with_weight(op, h, weight) if bern is not None else op(h)
        gain = stage.norm_gain(t)
        a = t if stage.norm is None else stage.norm(t)
        scale = stage.unit.noise.scale
        at = a / scale
        x_out = stage.unit.sample(a.detach())
        delta = -x_out * torch.sigmoid(at)
        q_w = None
        if bern is not None:
            eta = op.parametrizations.weight.original
            d_w = -weight * bern.noise.cdf(eta)
            q_w = d_w - d_w.detach()
        if q is not None or q_w is not None:
            conv = _conv_geometry(op) if isinstance(op, nn.Conv2d) else None
            options = {"kernel": self.kernel, "tol": self.tol, "order": self.order}
            spec = _FlipSpec(conv, q is not None, options, self.chunk)
            c = (gain / scale).detach()
            tensors = (at.detach(), weight.detach(), c, h.detach(), x_out)
            delta = delta + _Flip.apply(q, q_w, *tensors, spec)
        q_out = delta - delta.detach()
        keep = torch.sigmoid(x_out * at).detach()
        return x_out, q_out, keep

    def _head(
        self,
        sbn: SBN,
        h: torch.Tensor,
        q: torch.Tensor,
        keep: torch.Tensor,
        y: torch.Tensor,
        loss_fn: LossFn,
    ) -> torch.Tensor:
        """``mean_b Ê_b`` with the single-flip expectation over the last binary layer."""
        head = sbn.head
        weight = head.linear.weight
        if head.pool == "avg" and h.dim() > 2:
            positions = h[0, 0].numel()
            jac = weight.repeat_interleave(positions, dim=1) / positions
        else:
            jac = weight
        xs, qs, keep = h.flatten(1), q.flatten(1), keep.flatten(1)
        batch, n = xs.shape
        eta = head(h)
        f0 = per_example(loss_fn(eta, y), batch)
        pi = (1.0 - keep) / n + qs
        step = max(1, self.chunk // max(1, batch * eta.shape[1]))
        flipped = eta.new_zeros(batch)
        for s in range(0, n, step):
            sl = slice(s, s + step)
            count = xs[:, sl].shape[1]
            eta_i = eta[:, None, :] - 2.0 * xs[:, sl, None] * jac[:, sl].T[None]
            f_i = loss_fn(eta_i.reshape(batch * count, -1), y.repeat_interleave(count, dim=0))
            flipped = flipped + (pi[:, sl] * f_i.view(batch, count)).sum(1)
        return ((1.0 - pi.sum(1)) * f0 + flipped).mean()
