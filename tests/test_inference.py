"""Evaluation modes and batch metrics against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

import sbnkit
from sbnkit.errors import UserError
from sbnkit.inference import evaluate_batches, predict_proba


def binary_mlp():
    torch.manual_seed(0)
    model = sbnkit.models.mlp(
        (3,), 3, hidden=(4,), binary_weights=True, weight_mode="mean", rule="mean"
    )
    model = model.double()
    x = torch.randn(6, 3, dtype=torch.float64)
    return model, x


def sign(t):
    return torch.where(t >= 0, 1.0, -1.0).double()


def test_mode_is_the_network_at_z_zero_with_weights_sign_eta():
    model, x = binary_mlp()
    stage, head = model.stages[0], model.head.linear
    w = sign(stage.op.parametrizations.weight.original.detach())
    h = sign(x @ w.T + stage.op.bias)
    want = F.softmax(h @ head.weight.T + head.bias, dim=1)
    torch.testing.assert_close(predict_proba(model, x), want)
    torch.testing.assert_close(predict_proba(model, x, "mode"), want)
    assert stage.unit.rule.kind == "mean"  # the model's own rule and weight mode are restored
    assert stage.op.parametrizations.weight[0].mode == "mean"


def sampled_softmax(model):
    """One joint sample of weights and units by hand (``sample="both"``): w = ±[u < σ(2η)]
    (logistic ½), h = ±[u < σ(a)] (logistic 1)."""
    stage, head = model.stages[0], model.head.linear

    def draw(x):
        eta = stage.op.parametrizations.weight.original.detach()
        w = torch.where(torch.rand_like(eta) < torch.sigmoid(2 * eta), 1.0, -1.0).double()
        a = x @ w.T + stage.op.bias
        h = torch.where(torch.rand_like(a) < torch.sigmoid(a), 1.0, -1.0).double()
        return F.softmax(h @ head.weight.T + head.bias, dim=1)

    return draw


@pytest.mark.parametrize("mode, samples, count", [("sample", 16, 1), ("ensemble", 3, 3)])
def test_sample_and_ensemble_average_independent_joint_samples(mode, samples, count):
    model, x = binary_mlp()
    draw = sampled_softmax(model)
    torch.manual_seed(7)
    got = predict_proba(model, x, mode, samples, sample="both")
    torch.manual_seed(7)
    with torch.no_grad():
        want = sum(draw(x) for _ in range(count)) / count
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(1), torch.ones(6, dtype=torch.float64))
    torch.manual_seed(7)
    one = predict_proba(model, x, "ensemble", 1, sample="both")
    torch.manual_seed(7)
    torch.testing.assert_close(one, predict_proba(model, x, "sample", sample="both"))
    assert model.stages[0].unit.rule.kind == "mean"


def test_ensemble_default_is_sixteen_samples():
    model, x = binary_mlp()
    draw = sampled_softmax(model)
    torch.manual_seed(8)
    got = predict_proba(model, x, "ensemble", sample="both")
    torch.manual_seed(8)
    with torch.no_grad():
        want = sum(draw(x) for _ in range(16)) / 16
    torch.testing.assert_close(got, want)


def test_evaluate_batches_ensemble_default_is_sixteen_samples():
    model, x = binary_mlp()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(9)
    got = evaluate_batches(model, [(x, y)], "ensemble")
    torch.manual_seed(9)
    p = predict_proba(model.eval(), x, "ensemble", 16)
    assert got["nll"] == pytest.approx(float(-torch.log(p[torch.arange(6), y]).mean()), rel=1e-12)


@pytest.mark.parametrize("samples", [0, -2, 2.0])
def test_bad_sample_counts_raise(samples):
    model, x = binary_mlp()
    with pytest.raises(UserError, match="samples"):
        predict_proba(model, x, "ensemble", samples)


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_batches_is_accuracy_and_nll_in_eval_mode(training):
    torch.manual_seed(1)
    model = sbnkit.models.mlp((3,), 3, hidden=(4,), norm="batch").double()
    with torch.no_grad():
        model.stages[0].norm.running_mean.fill_(0.3)
        model.stages[0].norm.running_var.fill_(2.0)
    model.train(training)
    xs = [torch.randn(5, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)]
    ys = [torch.tensor([0, 1, 2, 0, 1]), torch.tensor([2, 2])]
    got = evaluate_batches(model, zip(xs, ys, strict=True))
    assert model.training == training
    model.eval()
    p = torch.cat([predict_proba(model, x) for x in xs])
    y = torch.cat(ys)
    assert got["acc"] == pytest.approx(float((p.argmax(1) == y).double().mean()), abs=0)
    assert got["nll"] == pytest.approx(float(-torch.log(p[torch.arange(7), y]).mean()), rel=1e-12)
    assert 0 < got["acc"] < 1


def test_evaluate_batches_clamps_zero_probabilities():
    model = sbnkit.models.mlp((2,), 2, hidden=(2,)).double()
    with torch.no_grad():
        model.head.linear.weight.fill_(0.0)
        model.head.linear.bias.copy_(torch.tensor([1000.0, 0.0]))
    x, y = torch.zeros(4, 2, dtype=torch.float64), torch.tensor([0, 1, 1, 1])
    got = evaluate_batches(model, [(x, y)], "sample", 2)
    assert got == {"acc": 0.25, "nll": pytest.approx(3 / 4 * -math.log(1e-12), rel=1e-12)}


def test_evaluate_batches_refuses_an_empty_set_and_unknown_modes():
    model = sbnkit.models.mlp((2,), 2, hidden=(2,))
    with pytest.raises(UserError, match="empty"):
        evaluate_batches(model, [])
    with pytest.raises(UserError, match="evaluation mode"):
        evaluate_batches(model, [(torch.zeros(1, 2), torch.tensor([0]))], "vote")


def test_recalibrate_batch_norm_gives_the_statistics_of_the_evaluated_sign_network():
    from torch import nn

    from sbnkit.optim import TanhWeight

    torch.manual_seed(0)
    dense = sbnkit.make_binary(nn.Linear(4, 3, bias=False).double(), TanhWeight(beta=0.5))
    bn = nn.BatchNorm1d(3, momentum=0.2, affine=False).double()
    model = nn.Sequential(nn.Dropout(0.5), dense, bn)
    x1, x2 = torch.randn(8, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    model(x1)  # training forward: soft weights tanh(βθ), dropout: statistics of another network
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    w = sign(dense.parametrizations.weight.original.detach())
    assert sbnkit.recalibrate_batch_norm(model, [(x1, None), x2]) == 13
    a1, a2 = x1 @ w.T, x2 @ w.T  # momentum None: the plain average of the batches' statistics
    torch.testing.assert_close(bn.running_mean, (a1.mean(0) + a2.mean(0)) / 2)
    torch.testing.assert_close(bn.running_var, (a1.var(0) + a2.var(0)) / 2)
    assert int(bn.num_batches_tracked) == 2 and bn.momentum == 0.2 and model.training
    assert float(dense.parametrizations.weight[0].beta) == 0.5
    model.eval()
    want = (a2 - bn.running_mean) / (bn.running_var + bn.eps).sqrt()
    torch.testing.assert_close(model(x2), want)
    recalibrated = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.raises(UserError, match="no batches"):
        sbnkit.recalibrate_batch_norm(model, [])
    assert not model.training and bn.momentum == 0.2
    for k, v in bn.state_dict().items():
        assert torch.equal(v, recalibrated[k]) and not torch.equal(v, before[k])
