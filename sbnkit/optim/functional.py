"""Functional forms of the binary-weight methods (like ``torch.optim``'s functional API).

Pure tensor functions, no state and no in-place changes, exact in float32 and float64:

* :func:`adaste_forward` / :func:`adaste_factor`: the AdaSTE forward map ``w*(θ)`` and the factor
  ``ρ(θ, g)`` of its backward (Le, Høier, Lin, Zach, CVPR 2022, "AdaSTE");
* :func:`bayesbinn_sample` / :func:`bayesbinn_update`: the relaxed weight sample and one step of
  the Bayesian learning rule for Bernoulli weights (Meng, Bachmann, Khan, ICML 2020, Alg. 1).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

__all__ = [
    "ADASTE_CAP",
    "ADASTE_G_GATE",
    "ADASTE_RULES",
    "ADASTE_THETA_GATE",
    "ADASTE_THETA_GATE_B",
    "BAYESBINN_EPS",
    "AdaSTERule",
    "adaste_factor",
    "adaste_forward",
    "bayesbinn_sample",
    "bayesbinn_update",
]

AdaSTERule = Literal["code", "corrected"]
ADASTE_RULES: tuple[str, ...] = get_args(AdaSTERule)

# Thresholds and cap of the authors' published code (AdaSTE repository, FenBPOpt.get_grad).
ADASTE_G_GATE = 1e-3  # |g| above this counts as a signed gradient
ADASTE_THETA_GATE = 1e-6  # |θ| above this counts as non-zero (case αβ < 1)
ADASTE_THETA_GATE_B = 1e-3  # |θ| gate of the case αβ ≥ 1
ADASTE_CAP = 0.5  # upper clamp of the boosted "toward" factor
BAYESBINN_EPS = 1e-10  # BayesBiNN's guard in the scale s


def adaste_forward(theta: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``w*(θ) = clip((θ + β(1+α) sign θ)/(1+β), -1, 1)``, the minimiser over ``w ∈ [-1, 1]`` of
    ``½(w - θ)² + (β/2)(|w| - (1+α))²`` (a quadratic double well with minima at ``±(1+α)``).

    ``w*(0) = 0``; for ``αβ ≥ 1`` it equals ``sign θ`` for every ``θ ≠ 0``.
    """
    w = torch.sign(theta).mul_(beta * (1.0 + alpha)).add_(theta)
    return w.div_(1.0 + beta).clamp_(-1.0, 1.0)


def _check_rule(rule: str) -> str:
    if rule not in ADASTE_RULES:
        raise ValueError(f"rule must be one of {', '.join(ADASTE_RULES)}, got {rule!r}")
    return rule


def adaste_factor(
    theta: torch.Tensor, grad: torch.Tensor, alpha: float, beta: float, rule: AdaSTERule = "code"
) -> torch.Tensor:
    """The factor ``ρ`` of AdaSTE's backward: the latent gradient is ``ρ * grad``.

    ``grad = ∂ℓ/∂w`` at ``w*(θ)``. ``ρ`` is the finite-difference slope
    ``(w*(θ) - w*(θ - β̃ g)) / (β̃ g)`` with a per-weight perturbation ``β̃``: infinitesimal when
    the descent step moves ``θ`` away from 0 (the local slope: ``1/(1+β)`` in the linear part,
    0 when saturated), and ``β̃ = |θ|/|g|`` when it moves ``θ`` towards 0, so that the nudged
    latent lands just across the jump of ``w*`` at 0.

    ``rule="code"`` reproduces the authors' published code: gates ``|g| > 1e-3`` and
    ``|θ| > 1e-6``, the toward factor clamped to ``[0, 0.5]``, the positive linear-region branch
    ``(2β(1+α) - θ)/((1+β)|θ|)`` (not ``+|θ|`` as on the negative side), and for ``αβ ≥ 1`` a
    default factor 1, toward factor ``min(1/|θ|, 0.5)`` (gate ``|θ| > 1e-3``), away factor 0.

    ``rule="corrected"`` is the finite-difference principle itself, symmetric in ``θ``, without
    gates or cap: toward ``(|w*(θ)| + min(1, β(1+α)/(1+β)))/|θ|`` (for ``αβ ≥ 1``: ``2/|θ|``),
    away the local slope; at ``g = 0`` the local slope; at ``θ = 0`` the slope ``1/(1+β)`` of the
    continuous part.

    Raises ``ValueError`` for an unknown ``rule``.
    """
    if _check_rule(rule) == "code":
        return _adaste_factor_code(theta, grad, alpha, beta)
    one = torch.ones_like(theta)
    slope = 1.0 / (1.0 + beta)
    abs_theta = theta.abs()
    w = adaste_forward(theta, alpha, beta)
    saturated = w.abs() >= 1.0
    local = torch.where(saturated, torch.zeros_like(theta), one * slope)
    jump = w.abs() + min(1.0, beta * (1.0 + alpha) / (1.0 + beta))
    toward = (torch.sign(grad) == torch.sign(theta)) & (theta != 0)
    rho = torch.where(toward, jump / torch.where(toward, abs_theta, one), local)
    return torch.where(theta == 0, one * slope, rho)


def _adaste_factor_code(
    theta: torch.Tensor, grad: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """:func:`adaste_factor` of ``rule="code"``, with the sign-symmetric gates computed once.

    ``g sign θ`` is positive when the descent step moves ``θ`` towards 0 ("toward") and negative
    when it moves ``θ`` away from 0 ("away"); both gates need ``|g| > 1e-3``.
    """
    ab = alpha * beta
    abs_theta = theta.abs()
    g_signed = torch.sign(theta).mul_(grad)
    toward = g_signed > ADASTE_G_GATE
    if ab >= 1.0:
        big = abs_theta > ADASTE_THETA_GATE_B
        toward &= big
        away = (g_signed < -ADASTE_G_GATE).logical_and_(big)
        rho = (
            abs_theta.reciprocal_().clamp_(0.0, ADASTE_CAP).masked_fill_(toward.logical_not_(), 1.0)
        )
        return rho.masked_fill_(away, 0.0)
    edge = 1.0 - ab
    sat = abs_theta > max(ADASTE_THETA_GATE, edge)  # saturated; else the linear region if gated
    toward &= abs_theta > ADASTE_THETA_GATE
    toward &= abs_theta != edge
    away = (g_signed < -ADASTE_G_GATE).logical_and_(sat)
    den = abs_theta.mul_(1.0 + beta)
    mid = (2.0 * beta * (1.0 + alpha) - theta).div_(den)
    rho = torch.where(sat, den.reciprocal_().mul_(1.0 + 2.0 * beta + ab), mid).clamp_(
        0.0, ADASTE_CAP
    )
    rho.masked_fill_(toward.logical_not_(), 1.0 / (1.0 + beta))
    return rho.masked_fill_(away, 0.0)


def bayesbinn_sample(lam: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """The relaxed (Gumbel-softmax) ``±1`` sample ``tanh((λ + δ)/τ)``, ``δ = ½ log(u/(1-u))``.

    ``u ~ U(0, 1)`` has ``lam``'s shape; ``δ`` is logistic noise of scale ½, so as ``τ → 0`` the
    sample tends to ``w ∈ {±1}`` with ``P(w = +1) = σ(2λ)``.
    """
    delta = torch.log(u).sub_(torch.neg(u).log1p_()).mul_(0.5)
    return delta.add_(lam).div_(temperature).tanh_()


def bayesbinn_update(
    lam: torch.Tensor,
    exp_avg: torch.Tensor,
    grad: torch.Tensor,
    w: torch.Tensor,
    mu: torch.Tensor,
    step: int,
    *,
    lr: float,
    momentum: float,
    temperature: float,
    train_size: float,
    prior: float | torch.Tensor = 0.0,
    kl_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One BayesBiNN step from one relaxed sample ``w`` and ``grad = ∂ℓ̄/∂w`` at ``w``.

    ``s = (1 - w² + 1e-10) / τ / (1 - μ² + 1e-10)`` (the reparametrisation scale of the natural
    gradient, ``μ = tanh λ`` the mean), ``ĝ = N s g`` with ``N = train_size``,
    ``m ← β m + (1 - β)(ĝ + kl_weight (λ - λ₀))`` and ``λ ← λ - lr m / (1 - β^step)``
    (``β = momentum``, ``λ₀ = prior``, ``step`` counts from 1). Returns the new ``(λ, m)``.
    """
    den = torch.mul(mu, mu).neg_().add_(1.0).add_(BAYESBINN_EPS)
    g = torch.mul(w, w).neg_().add_(1.0).add_(BAYESBINN_EPS).div_(temperature).div_(den)
    g.mul_(train_size).mul_(grad)
    pull = lam - prior if not isinstance(prior, float) or prior != 0.0 else lam
    g.add_(pull if kl_weight == 1.0 else kl_weight * pull)
    if momentum != 0.0:
        g.mul_(1.0 - momentum).add_(momentum * exp_avg)
    step_size = torch.mul(g, lr)
    if momentum != 0.0:
        step_size.div_(1.0 - momentum**step)
    return step_size.neg_().add_(lam), g
