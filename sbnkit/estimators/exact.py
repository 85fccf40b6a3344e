"""Exact expected loss by enumeration.

The layers of an SBN form a Markov chain: given ``x^{k-1}`` the units of layer ``k`` are
independent with ``P(x^k = s | x^{k-1}) = Π_j F(s_j a^k_j)`` (symmetric noise), so the marginal
of every layer follows by forward filtering over *all* its ``2^{n_k}`` states::

    P_1[b, s]  = Π_j F(s_j a^1_j(x_b))                          (the real input)
    P_k[b, s]  = Σ_{s'} P_{k-1}[b, s'] T_k[s', s],   T_k[s', s] = Π_j F(s_j a^k_j(s'))
    E[loss_b]  = Σ_s P_L[b, s] · loss(head(s), y_b)

This is the expectation over every joint hidden state, computed at the cost of the largest
transition table ``2^{n_{k-1}} · 2^{n_k}`` per stage instead of ``Π_k 2^{n_k}``; autograd of it is
the exact gradient. Bernoulli weights in ``sample`` mode are enumerated too (every joint
configuration ``w`` of all of them, weighted by ``P(w) = Π F_w(w · η)``), which is only feasible
for a handful of weights; weights in ``mode``/``mean`` mode are deterministic and used as they are.
BatchNorm must be in eval mode (batch statistics would couple the examples).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..network import SBN, Stage
from ..noise import Noise
from .base import Estimator, LossFn, per_example, register
from .walk import apply_op, path_modules, sampled_bernoulli

__all__ = ["Exact", "refuse_batchnorm_training", "state_table"]


def refuse_batchnorm_training(mods: list[nn.Module], estimator: str) -> None:
    """BatchNorm in training mode couples the examples of a batch: raise :class:`UserError`
    if one of ``mods`` has it."""
    for k, m in enumerate(mods):
        norm = getattr(m, "norm", None)
        if isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)) and norm.training:
            raise UserError(
                f"estimator {estimator!r} needs per-example distributions, but model.stages[{k}] "
                "has BatchNorm in training mode (batch statistics); call model.eval() first"
            )


def state_table(n: int, like: torch.Tensor) -> torch.Tensor:
    """All ``2^n`` states of ``n`` binary units as a ``[2^n, n]`` tensor of ``±1``."""
    idx = torch.arange(2**n, device=like.device)
    bits = (idx[:, None] >> torch.arange(n, device=like.device)) & 1
    return bits.to(like.dtype) * 2.0 - 1.0


class _WeightConfigs:
    """All joint configurations of the sampled Bernoulli weights of a model.

    Configuration ``c`` gives binary tensor ``t`` the bits ``offset_t ... offset_t + m_t - 1`` of
    ``c``; ``log_prob`` is ``log P(c) = Σ log F_w(w · η)``.
    """

    def __init__(self, ops: list[nn.Module], like: torch.Tensor) -> None:
        self.values: dict[int, torch.Tensor] = {}
        self.bits = 0
        entries = []
        for op in ops:
            bern = sampled_bernoulli(op)
            if bern is None:
                continue
            eta = op.parametrizations.weight.original
            if isinstance(op, nn.Conv2d) and op.groups != 1:
                raise UserError("exact enumeration of binary weights needs groups=1 convolutions")
            entries.append((op, bern, eta, self.bits))
            self.bits += eta.numel()
        self.entries = entries
        self.like = like

    @property
    def count(self) -> int:
        return 2**self.bits

    def build(self) -> torch.Tensor:
        """Fill :attr:`values` (``[N_w, *weight.shape]`` per op) and return ``log P(c)``."""
        like = self.like
        idx = torch.arange(self.count, device=like.device)
        log_prob = torch.zeros(self.count, dtype=like.dtype, device=like.device)
        for op, bern, eta, offset in self.entries:
            shifts = offset + torch.arange(eta.numel(), device=like.device)
            w = ((idx[:, None] >> shifts) & 1).to(like.dtype) * 2.0 - 1.0
            w = w.view(self.count, *eta.shape)
            self.values[id(op)] = w
            log_prob = log_prob + bern.noise.log_cdf(w * eta).flatten(1).sum(1)
        return log_prob


def _apply_op(op: nn.Module, x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``op(x)`` as ``[N_w or 1, N, *out]``, for every weight configuration when given."""
    if weights is None:
        return op(x).unsqueeze(0)
    nw = weights.shape[0]
    stacked = weights.reshape(nw * weights.shape[1], *weights.shape[2:])
    bias = None if op.bias is None else op.bias.repeat(nw)
    out = apply_op(op, x, stacked, bias)
    out = out.view(x.shape[0], nw, -1, *out.shape[2:])
    return out.transpose(0, 1)


def _preactivation(stage: Stage, x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``norm(op(x))`` as ``[N_w or 1, N, *out]``."""
    t = _apply_op(stage.op, x, weights)
    if stage.norm is not None:
        nw, n = t.shape[:2]
        t = stage.norm(t.reshape(nw * n, *t.shape[2:])).view(t.shape)
    return t


def _log_transition(noise: Noise, a: torch.Tensor, states01: torch.Tensor) -> torch.Tensor:
    """``log Π_j F(s_j a_j)`` for all states ``s``: ``[..., n] -> [..., 2^n]`` by two matmuls."""
    return noise.log_cdf(a) @ states01.T + noise.log_cdf(-a) @ (1.0 - states01).T


@register("exact")
class Exact(Estimator):
    """The exact mean expected loss ``mean_b Σ_states P(states | x_b) loss_b``, differentiable.

    ``max_states`` bounds the work per example: the largest per-stage table
    ``N_w · 2^{n_{k-1}} · 2^{n_k}`` (``N_w`` = joint configurations of the sampled binary weights,
    ``n_0 = 0`` for the stage reading the input); larger models raise :class:`UserError`.
    ``chunk`` bounds the elements of one batch chunk's ``[b, N_w, 2^{n_k}]`` tensors.
    Use float64 models for reference values. BatchNorm must be in eval mode. Raises
    :class:`UserError` for non-positive ``max_states`` or ``chunk``.
    """

    def __init__(self, max_states: int = 2**20, chunk: int = 2**24) -> None:
        if int(max_states) < 1 or int(chunk) < 1:
            raise UserError("exact: max_states and chunk must be positive integers")
        self.max_states = int(max_states)
        self.chunk = int(chunk)

    def surrogate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> torch.Tensor:
        sbn, mods = path_modules(model, self.name)
        refuse_batchnorm_training(mods, self.name)
        ops = sbn.ops
        configs = _WeightConfigs(ops, x)
        counts = _unit_counts(mods, x)
        need = configs.count * max(
            [2 ** (p + n) for p, n in zip([0, *counts[:-1]], counts, strict=True)], default=1
        )
        if need > self.max_states:
            layers = "-".join(map(str, counts)) or "none"
            raise UserError(
                f"exact enumeration needs 2^{need.bit_length() - 1} states per example (binary "
                f"layers {layers}, "
                f"{configs.bits} sampled binary weights) but max_states={self.max_states}; use a "
                "smaller network or pass a larger max_states"
            )
        log_pw = configs.build() if configs.bits else None
        widest = configs.count * max([2**n for n in counts], default=1)
        step = max(1, self.chunk // widest)
        total = x.new_zeros(())
        for start in range(0, x.shape[0], step):
            xb, yb = x[start : start + step], y[start : start + step]
            total = total + _expected_losses(sbn, mods, xb, yb, loss_fn, configs, log_pw).sum()
        return total / x.shape[0]


def _unit_counts(mods: list[nn.Module], x: torch.Tensor) -> list[int]:
    """The number of units of every binary stage."""
    counts = []
    with torch.no_grad():
        h = x[:1]
        for m in mods:
            h = m(h)
            if isinstance(m, Stage):
                counts.append(h[0].numel())
    return counts


def _expected_losses(
    sbn: SBN,
    mods: list[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    configs: _WeightConfigs,
    log_pw: torch.Tensor | None,
) -> torch.Tensor:
    """``E[loss_b]`` for the examples of ``x``: ``[b]``."""
    b = x.shape[0]
    h = x  # the real input until the first stage, then the enumerated states [S, *shape]
    prob = None  # [b, N_w or 1, 2^{n_k}]: the marginal of the current layer
    for m in mods:
        if not isinstance(m, Stage):
            h = m(h)
            continue
        t = _preactivation(m, h, configs.values.get(id(m.op)))  # [N_w|1, N, *out]
        a = t.flatten(2)
        states = state_table(a.shape[-1], a)
        trans = torch.exp(_log_transition(m.unit.noise, a, (states + 1.0) / 2.0))
        prob = trans.transpose(0, 1) if prob is None else (prob.unsqueeze(2) @ trans).squeeze(2)
        h = states.view(states.shape[0], *t.shape[2:])
    logits = _apply_op(
        sbn.head.linear, sbn.head.features(h), configs.values.get(id(sbn.head.linear))
    )  # [N_w|1, N, K]
    if prob is None:  # no binary stage: the head reads the input itself
        prob = torch.ones(b, 1, 1, dtype=x.dtype, device=x.device)
        logits = logits.transpose(0, 1).unsqueeze(2)
    else:
        logits = logits.unsqueeze(0)
    nw, count = max(prob.shape[1], logits.shape[1]), prob.shape[2]
    logits = logits.expand(b, nw, count, logits.shape[-1])
    losses = loss_fn(logits.reshape(b * nw * count, -1), y.repeat_interleave(nw * count, dim=0))
    per_example(losses, b * nw * count)
    expected = (prob * losses.view(b, nw, count)).sum(2)  # [b, N_w]
    if log_pw is not None:
        expected = expected * torch.exp(log_pw)
    return expected.sum(1)
