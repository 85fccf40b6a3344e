"""REINFORCE and ARM against the same estimators written out by hand, draw for draw.

Each check seeds torch, lets the estimator run, re-seeds and repeats its random draws in the same
order in plain torch code; values and gradients must agree to rounding. This fixes every factor of
the estimators (including the baseline's averaging weights and ARM's ``U - ½``), which the
unbiasedness tests of test_path_estimators.py cannot see: a wrong baseline or an extra zero-mean
term keeps an estimator unbiased.
"""

import pytest
import torch
from sbn_testing import ce, gradient

from sbnkit import models
from sbnkit.errors import UserError
from sbnkit.estimators import get
from sbnkit.estimators.score import Reinforce


def two_stage_net(noise_scale=0.7, **options):
    torch.manual_seed(3)
    model = models.mlp((3,), 2, hidden=(4, 3), noise_scale=noise_scale, **options).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    return model, x, y


def hand_gradient(model, surrogate):
    model.zero_grad()
    loss = surrogate()
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-14)
    assert got[1].keys() == want[1].keys()
    for n in want[1]:
        torch.testing.assert_close(got[1][n], want[1][n], rtol=1e-10, atol=1e-13, msg=n)


def log_sigmoid(t):
    return torch.log(torch.sigmoid(t))


def hand_reinforce(model, x, y, base):
    """``mean E + mean((E - base)·(S - S.detach()))``, ``S = Σ log σ(h a / s)``, ``h`` sampled
    as ``+1`` iff ``u < σ(a / s)``: one uniform per unit, stage by stage."""
    h, log_p = x, 0.0
    for stage in model.stages:
        a = stage.op(h)
        s = stage.unit.noise.scale
        u = torch.rand_like(a)
        h = torch.where(u < torch.sigmoid(a.detach() / s), 1.0, -1.0).double()
        log_p = log_p + log_sigmoid(h * a / s).sum(1)
    losses = ce(model.head(h), y)
    centred = losses.detach() - base
    return losses.mean() + (centred * (log_p - log_p.detach())).mean()


def test_reinforce_is_the_score_function_surrogate_drawn_by_hand():
    model, x, y = two_stage_net()
    torch.manual_seed(11)
    got = gradient(get("reinforce"), model, x, y, ce)
    torch.manual_seed(11)
    want = hand_gradient(model, lambda: hand_reinforce(model, x, y, 0.0))
    assert_same(got, want)


@pytest.mark.parametrize("binary_weights", [False, True])
def test_reinforce_baseline_is_the_running_mean_of_past_batch_losses(binary_weights):
    """``b_1 = 0``, ``b_2 = v_1``, ``b_{k+1} = d·b_k + (1 - d)·v_k`` with ``v_k`` the mean loss
    of call ``k``. A baseline ``b`` gives the estimate of the loss shifted by ``-b`` with no
    baseline (same draws), so call k must match reinforce() on ``loss - b_k``."""
    model, x, y = two_stage_net(binary_weights=binary_weights, binary_head=binary_weights)
    decay = 0.7
    est = get("reinforce", baseline=True, decay=decay)
    base, values = 0.0, []
    for k in range(4):
        torch.manual_seed(20 + k)
        got = gradient(est, model, x, y, ce)
        torch.manual_seed(20 + k)
        want = gradient(get("reinforce"), model, x, y, lambda eta, t, b=base: ce(eta, t) - b)
        assert_same((got[0] - base, got[1]), want)
        values.append(float(got[0]))
        base = values[0] if k == 0 else decay * base + (1 - decay) * values[-1]
    assert len(set(values)) >= 3  # the calls saw different samples, so b really moved
    with torch.no_grad():  # the baseline is a constant: it changes the estimate, not its value
        torch.manual_seed(20)
        plain = get("reinforce").loss(model, x, y, ce)
        torch.manual_seed(20)
        assert float(get("reinforce", baseline=True).loss(model, x, y, ce)) == float(plain)


def test_reinforce_without_baseline_ignores_decay_and_defaults():
    est = get("reinforce")
    assert est.baseline is False and est.decay == 0.9
    assert vars(Reinforce()) == vars(est)
    assert get("reinforce", decay=0.0).decay == 0.0
    for bad in (1.0, -0.1):
        with pytest.raises(UserError, match="decay"):
            get("reinforce", decay=bad)
    model, x, y = two_stage_net()
    torch.manual_seed(4)
    gradient(est, model, x, y, ce)
    torch.manual_seed(5)
    got = gradient(est, model, x, y, ce)
    torch.manual_seed(5)
    assert_same(got, hand_gradient(model, lambda: hand_reinforce(model, x, y, 0.0)))


def hand_arm(model, x, y):
    """ARM stage by stage: ``b1 = ±[U > σ(-ã)]``, ``b2 = ±[U < σ(ã)]``, one sampled pass of the
    rest of the network from each, surrogate term ``(f1 - f2)·Σ ã (U - ½)``; continue with b1."""
    stages = list(model.stages)
    h, terms = x, 0.0
    for k, stage in enumerate(stages):
        s = stage.unit.noise.scale
        at = stage.op(h) / s
        u = torch.rand_like(at)
        b1 = torch.where(u > torch.sigmoid(-at.detach()), 1.0, -1.0).double()
        b2 = torch.where(u < torch.sigmoid(at.detach()), 1.0, -1.0).double()
        f = []
        for start in (b1, b2):
            g = start
            with torch.no_grad():
                for later in stages[k + 1 :]:
                    a = later.op(g)
                    p = torch.sigmoid(a / later.unit.noise.scale)
                    g = torch.where(torch.rand_like(a) < p, 1.0, -1.0).double()
                f.append(ce(model.head(g), y))
        terms = terms + (f[0] - f[1]) * (at * (u - 0.5)).sum(1)
        h = b1
    return ce(model.head(h), y).mean() + (terms - terms.detach()).mean()


def test_arm_is_the_antithetic_surrogate_drawn_by_hand():
    model, x, y = two_stage_net(noise_scale=0.6)
    torch.manual_seed(12)
    got = gradient(get("arm"), model, x, y, ce)
    torch.manual_seed(12)
    want = hand_gradient(model, lambda: hand_arm(model, x, y))
    assert_same(got, want)
    assert all(g.abs().sum() > 0 for g in got[1].values())
