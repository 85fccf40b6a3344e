"""Unbiased sampling estimators: REINFORCE (score function) and ARM, the unbiased baselines of
Shekhovtsov, Yanush & Flach (2020)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import UserError
from ..network import SBN, Head, Stage
from ..noise import Logistic
from .base import Estimator, LossFn, per_example, register
from .walk import op_with_weight, path_modules, sampled_bernoulli

__all__ = ["ARM", "Reinforce"]


def _detached_op(op: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``op(x)``, with sampled Bernoulli weights detached (their gradient is the score term)."""
    if sampled_bernoulli(op) is None:
        return op(x)
    return op_with_weight(op, x, op.weight.detach())


def _head_logits(head: Head, h: torch.Tensor) -> torch.Tensor:
    return _detached_op(head.linear, head.features(h))


def _weight_log_prob(ops: list[nn.Module], like: torch.Tensor) -> torch.Tensor:
    """``log P(w)`` of the current (cached) sample of every sampled Bernoulli weight."""
    total = like.new_zeros(())
    for op in ops:
        bern = sampled_bernoulli(op)
        if bern is not None:
            eta = op.parametrizations.weight.original
            total = total + bern.noise.log_cdf(op.weight.detach() * eta).sum()
    return total


@torch.no_grad()
def _sampled_losses(
    mods: list[nn.Module], head: Head, h: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> torch.Tensor:
    """Per-example losses of one sampled pass of ``mods`` and ``head`` from ``h``."""
    for m in mods:
        h = m.unit.sample(m.preactivation(h)) if isinstance(m, Stage) else m(h)
    return per_example(loss_fn(head(h), y), h.shape[0])


@register("reinforce")
class Reinforce(Estimator):
    """REINFORCE: ``E + (E - b)·(S - S.detach())`` per example, ``S = Σ log F(x_j a_j)``.

    ``S`` is the log-probability of the sampled path (all units of all stages, any symmetric
    noise); sampled Bernoulli weights (shared by the batch) add ``mean_b(E_b - b)·(S_w -
    S_w.detach())`` with ``S_w = Σ log F_w(w · η)``. The head's real parameters get the pathwise
    gradient. ``baseline=True`` sets ``b`` to a running mean of the batch loss
    (``b ← decay · b + (1 - decay) · mean E``, updated after use, 0 at the first call); else
    ``b = 0`` as in the PSA paper. Raises :class:`UserError` for a ``decay`` outside ``[0, 1)``.
    """

    def __init__(self, baseline: bool = False, decay: float = 0.9) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise UserError(f"reinforce baseline decay must lie in [0, 1), got {decay!r}")
        self.baseline = bool(baseline)
        self.decay = float(decay)
        self._mean: float | None = None

    def surrogate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> torch.Tensor:
        sbn, mods = path_modules(model, self.name)
        with parametrize.cached():
            h, log_p = x, x.new_zeros(x.shape[0])
            for m in mods:
                if not isinstance(m, Stage):
                    h = m(h)
                    continue
                t = _detached_op(m.op, h)
                a = t if m.norm is None else m.norm(t)
                h = m.unit.sample(a.detach())
                log_p = log_p + m.unit.noise.log_cdf(h * a).flatten(1).sum(1)
            losses = per_example(loss_fn(_head_logits(sbn.head, h), y), x.shape[0])
            ops = sbn.ops
            log_pw = _weight_log_prob(ops, x)
        base = self._mean if self.baseline and self._mean is not None else 0.0
        centred = losses.detach() - base
        score = (centred * (log_p - log_p.detach())).mean()
        score = score + centred.mean() * (log_pw - log_pw.detach())
        if self.baseline:
            value = float(losses.detach().mean())
            self._mean = (
                value
                if self._mean is None
                else (self.decay * self._mean + (1.0 - self.decay) * value)
            )
        return losses.mean() + score


@register("arm")
class ARM(Estimator):
    """ARM (Yin & Zhou 2019) per binary stage, for logistic noise of scale ``s``.

    For each stage draw ``U ~ U(0,1)^n`` and, with ``ã = a / s`` (``P(x = +1) = σ(ã)``),
    ``b1 = ±[U > σ(-ã)]``, ``b2 = ±[U < σ(ã)]``; ``f1``, ``f2`` are per-example losses of one
    independent sampled pass from ``b1`` and from ``b2`` through the rest of the network. The
    surrogate adds ``(f1 - f2).detach() · Σ_j ã_j (U_j - ½)``, i.e.
    ``∂/∂a_j = (f1 - f2)(U_j - ½) / s`` (the ``1/s`` is ``dã/da``; the ``±1`` encoding needs no
    factor because ARM differentiates the logit of ``P(x = +1)``). The path continues with
    ``b1``, itself a sample; the head gets the pathwise gradient. Unbiased; 2 extra downstream
    passes per stage. Sampled Bernoulli weights are refused (use reinforce, psa or exact).
    """

    def surrogate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> torch.Tensor:
        sbn, mods = path_modules(model, self.name)
        _check_arm(sbn, mods)
        with parametrize.cached():
            h, terms = x, x.new_zeros(x.shape[0])
            for k, m in enumerate(mods):
                if not isinstance(m, Stage):
                    h = m(h)
                    continue
                at = m.preactivation(h) / m.unit.noise.scale
                u = torch.rand_like(at)
                one = torch.ones_like(at)
                b1 = torch.where(u > torch.sigmoid(-at.detach()), one, -one)
                b2 = torch.where(u < torch.sigmoid(at.detach()), one, -one)
                rest = mods[k + 1 :]
                f1 = _sampled_losses(rest, sbn.head, b1, y, loss_fn)
                f2 = _sampled_losses(rest, sbn.head, b2, y, loss_fn)
                terms = terms + (f1 - f2) * (at * (u - 0.5)).flatten(1).sum(1)
                h = b1
            losses = per_example(loss_fn(sbn.head(h), y), x.shape[0])
        return losses.mean() + (terms - terms.detach()).mean()


def _check_arm(sbn: SBN, mods: list[nn.Module]) -> None:
    for m in mods:
        if isinstance(m, Stage) and not isinstance(m.unit.noise, Logistic):
            raise UserError(
                f"arm needs logistic unit noise, got {m.unit.noise!r}; use 'reinforce' instead"
            )
    ops = sbn.ops
    if any(sampled_bernoulli(op) is not None for op in ops):
        raise UserError(
            "arm does not handle sampled Bernoulli weights; use 'reinforce', 'psa' or 'exact'"
        )
