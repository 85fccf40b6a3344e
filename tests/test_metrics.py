"""Evaluation metrics against hand computations: ECE, unit entropy, the K-sample ensemble curve,
and the explicit choice of what an evaluation samples (units, weights or both)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sbnkit import UserError, cli
from sbnkit.inference import (
    draws_randomly,
    evaluate_batches,
    predict_proba,
    resolve_sample,
    trained_sampling,
    using_sampling,
)
from sbnkit.models import mlp
from sbnkit.network import SBN, Head, Stage
from sbnkit.train import build_model, checkpoint, parse_config
from sbnkit.train.metrics import (
    accuracy_nll,
    binary_entropy_bits,
    curve_sizes,
    ensemble_curve,
    evaluate,
    expected_calibration_error,
    final_metrics,
    running_means,
    sampled_softmax,
    unit_entropy_bits,
)
from sbnkit.units import BinaryUnit, binary_units
from sbnkit.weights import BernoulliWeight, bernoulli_parametrizations, make_binary

H_QUARTER = 0.5 + 0.75 * math.log2(4 / 3)  # H(1/4) = −¼log₂¼ − ¾log₂¾ = 0.8112781244591328


def _p(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- ECE


def test_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong) share bin (13/15, 14/15]; 0.62 and 0.7 have their own.
    p = _p([[0.9, 0.1], [0.1, 0.9], [0.62, 0.38], [0.3, 0.7]])
    y = torch.tensor([0, 0, 0, 1])
    # 2/4·|½ − 0.9| + 1/4·|1 − 0.62| + 1/4·|1 − 0.7| = 0.2 + 0.095 + 0.075
    assert expected_calibration_error(p, y) == pytest.approx(0.37, abs=1e-12)
    # one bin: |accuracy − mean confidence| = |0.75 − 0.78|
    assert expected_calibration_error(p, y, bins=1) == pytest.approx(0.03, abs=1e-12)


def test_ece_edges():
    y = torch.tensor([0, 0])
    assert expected_calibration_error(_p([[1.0, 0.0], [1.0, 0.0]]), y) == 0.0  # conf 1: last bin
    # a calibrated bin: confidence 0.5, half right
    assert expected_calibration_error(_p([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([0, 1])) == 0.0
    with pytest.raises(UserError, match="empty"):
        expected_calibration_error(_p([[0.5, 0.5]])[:0], y[:0])
    with pytest.raises(UserError, match="bin"):
        expected_calibration_error(_p([[0.5, 0.5]]), y[:1], bins=0)


# ---------------------------------------------------------------- entropy


def test_binary_entropy_bits():
    h = binary_entropy_bits(_p([0.0, 0.5, 0.25, 0.75, 1.0]))
    torch.testing.assert_close(h, _p([0.0, 1.0, H_QUARTER, H_QUARTER, 0.0]), rtol=0, atol=1e-15)


def _two_stage_model() -> SBN:
    """Zero weights, so every unit's pre-activation is its bias: units with P(+1) = σ(b) of
    ½, ¾ (first stage) and ¼ (second stage), whatever the input."""
    first, second, head = (nn.Linear(*s).double() for s in ((1, 2), (2, 1), (1, 2)))
    with torch.no_grad():
        for lin in (first, second, head):
            lin.weight.zero_()
        first.bias.copy_(_p([0.0, math.log(3.0)]))
        second.bias.fill_(math.log(1 / 3))
        head.bias.zero_()
    stages = [Stage(first, BinaryUnit("logistic", 1.0)), Stage(second, BinaryUnit("logistic", 1.0))]
    return SBN(stages, Head(head), (1,))


def test_unit_entropy_is_the_mean_over_units_and_examples():
    model = _two_stage_model()
    x = torch.randn(5, 1, dtype=torch.float64)
    # (H(½) + H(¾) + H(¼)) / 3 units, the same for every example; exact up to rounding
    expected = (1.0 + 2 * H_QUARTER) / 3
    assert unit_entropy_bits(model, x, batch_size=2) == pytest.approx(expected, abs=1e-12)
    assert not any(u._forward_hooks for u in binary_units(model))  # hooks removed
    plain = nn.Sequential(nn.Linear(1, 2))
    assert unit_entropy_bits(plain, x.float()) == 0.0


# ---------------------------------------------------------------- the ensemble curve


DRAWS = [
    _p([[0.2, 0.8], [0.6, 0.4]]),
    _p([[0.6, 0.4], [0.8, 0.2]]),
    _p([[0.7, 0.3], [0.1, 0.9]]),
    _p([[0.9, 0.1], [0.3, 0.7]]),
    _p([[0.0, 1.0], [0.0, 1.0]]),
]
Y = torch.tensor([0, 0])


def test_ensemble_curve_by_hand():
    consumed = []

    def draws():
        for d in DRAWS:
            consumed.append(d)
            yield d

    curve = ensemble_curve(draws(), Y, [1, 2, 4])
    assert len(consumed) == 4  # lazily: the fifth draw is never made
    # K=1: p_y = 0.2, 0.6, prediction [1, 0]; K=2: mean rows [0.4 0.6], [0.7 0.3];
    # K=4: mean rows [0.6 0.4], [0.45 0.55]
    expected = {
        1: (0.5, -(math.log(0.2) + math.log(0.6)) / 2),
        2: (0.5, -(math.log(0.4) + math.log(0.7)) / 2),
        4: (0.5, -(math.log(0.6) + math.log(0.45)) / 2),
    }
    assert set(curve) == set(expected)
    for k, (acc, nll) in expected.items():
        assert curve[k]["acc"] == acc
        assert curve[k]["nll"] == pytest.approx(nll, abs=1e-12)


def test_running_means_and_sizes():
    means = dict(running_means(iter(DRAWS), [3, 1]))
    torch.testing.assert_close(means[1], DRAWS[0])
    torch.testing.assert_close(means[3], (DRAWS[0] + DRAWS[1] + DRAWS[2]) / 3)
    assert DRAWS[0][0, 0] == 0.2  # the draws are not modified
    with pytest.raises(ValueError, match="5 draws for an ensemble of 6"):
        dict(running_means(iter(DRAWS), [6]))
    assert curve_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert curve_sizes(12) == [1, 2, 4, 8] and curve_sizes(1) == [1]
    with pytest.raises(UserError):
        curve_sizes(0)


def test_accuracy_nll_zero_probability_is_clamped():
    scores = accuracy_nll(DRAWS[4], Y, chunk=1)
    assert scores["acc"] == 0.0 and scores["nll"] == pytest.approx(-math.log(1e-12))


# ---------------------------------------------------------------- what is sampled


def _binary_linear(mode: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(make_binary(nn.Linear(3, 4), BernoulliWeight(mode=mode)))


def _mlp(weight_mode: str) -> SBN:
    torch.manual_seed(0)
    return mlp((3,), 4, hidden=(8,), binary_weights=True, weight_mode=weight_mode).double()


def test_the_default_samples_what_training_sampled():
    assert trained_sampling(_mlp("sample")) == "both"
    assert trained_sampling(_mlp("mode")) == "units"
    assert trained_sampling(_mlp("mean")) == "units"
    assert trained_sampling(_binary_linear("sample")) == "weights"
    assert trained_sampling(_binary_linear("mode")) == "units"  # nothing random
    assert trained_sampling(nn.Linear(2, 2)) == "units"
    assert resolve_sample(_mlp("mode"), "both") == "both"
    with pytest.raises(UserError, match="unknown sampling choice 'all'"):
        resolve_sample(_mlp("mode"), "all")


@pytest.mark.parametrize(
    ("mode", "sample", "rule", "weights"),
    [
        ("mode", "both", "det_st", "mode"),
        ("ensemble", "units", "st", "mode"),
        ("ensemble", "weights", "det_st", "sample"),
        ("sample", "both", "st", "sample"),
        ("sample", "auto", "st", "mode"),  # trained with weight_mode = "mode"
    ],
)
def test_using_sampling_sets_and_restores(mode, sample, rule, weights):
    model = _mlp("mode")
    with using_sampling(model, mode, sample):
        assert {u.rule.kind for u in binary_units(model)} == {rule}
        assert {p.mode for _, p in bernoulli_parametrizations(model)} == {weights}
    assert {u.rule.kind for u in binary_units(model)} == {"st"}
    assert {p.mode for _, p in bernoulli_parametrizations(model)} == {"mode"}


def test_what_is_not_sampled_stays_at_its_mode():
    x = torch.randn(50, 3, dtype=torch.float64)
    lone = _binary_linear("sample").double()  # random weights only
    mode = predict_proba(lone, x, "mode")
    # the mean of 5 equal outputs: equal up to the rounding of the sum
    same = predict_proba(lone, x, "ensemble", 5, sample="units")
    torch.testing.assert_close(same, mode, rtol=1e-15, atol=1e-15)
    assert not torch.allclose(predict_proba(lone, x, "ensemble", 5, sample="weights"), mode)
    model = _mlp("sample")
    for _, p in bernoulli_parametrizations(model):  # every weight sure to be its mode...
        p.noise.scale = 1e-9
    mode = predict_proba(model, x, "mode")
    # ...so sampling only the weights is the mode network; sampling the units is not
    torch.testing.assert_close(predict_proba(model, x, "ensemble", 3, "weights"), mode)
    assert not torch.allclose(predict_proba(model, x, "ensemble", 3, "units"), mode)


# ---------------------------------------------------------------- final metrics


def test_final_metrics_from_one_set_of_draws():
    torch.manual_seed(1)
    model = _mlp("sample")
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randint(0, 4, (40,))
    forwards = []
    model.head.register_forward_hook(lambda *_: forwards.append(1))
    m = final_metrics(model, x, y, samples=3, batch_size=40, curve_max=8)
    assert len(forwards) == 1 + 8  # the mode pass, then 8 draws serve K = 1, 2, 3, 4, 8
    assert list(m["test_ensemble_curve"]) == ["1", "2", "4", "8"]
    assert m["test_ensemble_curve"]["1"] == {
        "acc": m["test_acc_sample"],
        "nll": m["test_nll_sample"],
    }
    assert m["ensemble_samples"] == 3 and m["eval_sample"] == "both"
    mode = evaluate(model, x, y, "mode", batch_size=40)
    assert (m["test_acc_mode"], m["test_nll_mode"]) == (mode["acc"], mode["nll"])
    assert 0.0 <= m["test_ece_mode"] <= 1.0 and 0.0 <= m["test_ece_ensemble"] <= 1.0
    assert m["test_unit_entropy_bits"] == pytest.approx(unit_entropy_bits(model, x))
    assert 0.0 < m["test_unit_entropy_bits"] < 1.0
    assert model.training  # restored

    m = final_metrics(model, x, y, samples=4, batch_size=7, curve_max=4, sample="units")
    assert m["test_ensemble_curve"]["4"] == {
        "acc": m["test_acc_ensemble"],
        "nll": m["test_nll_ensemble"],
    }
    assert m["eval_sample"] == "units"
    batches = [(x[i : i + 7], y[i : i + 7]) for i in range(0, 40, 7)]
    assert m["test_nll_mode"] == evaluate_batches(model, batches)["nll"]  # same sums, same number
    with pytest.raises(UserError, match="samples"):
        final_metrics(model, x, y, samples=0, batch_size=7)
    with pytest.raises(UserError, match="empty"):
        final_metrics(model, x[:0], y[:0], samples=2, batch_size=7)


def test_a_model_with_nothing_to_draw_is_evaluated_once():
    """Binary weights at their mode and real ReLU activations: every sample is the mode network,
    so one pass serves every K, and the values are those of K real draws."""
    torch.manual_seed(2)
    model = nn.Sequential(
        make_binary(nn.Linear(3, 6), BernoulliWeight(mode="mode")), nn.ReLU(), nn.Linear(6, 4)
    ).double()
    x, y = torch.randn(30, 3, dtype=torch.float64), torch.randint(0, 4, (30,))
    assert not draws_randomly(model) and draws_randomly(model, "weights")
    forwards = []
    model[2].register_forward_hook(lambda *_: forwards.append(1))
    m = final_metrics(model, x, y, samples=3, batch_size=10, curve_max=8)
    assert len(forwards) == 3  # the mode pass over 3 batches, no draws
    drawn = evaluate(model, x, y, "ensemble", samples=3, batch_size=10)
    assert (m["test_acc_ensemble"], m["test_nll_ensemble"]) == pytest.approx(
        (drawn["acc"], drawn["nll"]), rel=1e-12
    )
    assert m["test_ece_ensemble"] == m["test_ece_mode"]
    assert all(v == m["test_ensemble_curve"]["1"] for v in m["test_ensemble_curve"].values())
    assert len(final_metrics(model, x, y, 2, 10, curve_max=2, sample="weights")) == len(m)
    assert len(forwards) > 3 + 3  # sampling the weights on request draws again


@pytest.mark.parametrize(("sample", "first_op_calls"), [("units", 1), ("both", 3)])
def test_sampled_softmax_is_predict_proba_with_the_first_stage_cached(sample, first_op_calls):
    model = _mlp("mode").eval()
    x = torch.randn(10, 3, dtype=torch.float64)
    calls = []
    model.stages[0].op.register_forward_hook(lambda *_: calls.append(1))
    draw = sampled_softmax(model, x, sample)
    for seed in (3, 4, 5):
        torch.manual_seed(seed)
        got = draw()
        torch.manual_seed(seed)
        expected = predict_proba(model, x, "sample", 1, sample)  # the same random stream
        assert torch.equal(got, expected)
    # 3 draws and 3 predict_proba calls: the first layer runs once for all draws when its
    # weights are not sampled, and in every draw when they are
    assert len(calls) == first_op_calls + 3


# ---------------------------------------------------------------- config and command line

TOY = """
[model]
hidden = [6]
weight_mode = "mode"
[data]
name = "toy2d"
[eval]
samples = 2
"""


def test_eval_sample_config_key():
    assert parse_config(TOY).eval.sample == "auto"
    assert parse_config(TOY, ["eval.sample=weights"]).eval.sample == "weights"
    with pytest.raises(UserError, match="eval.sample must be one of auto, units, weights, both"):
        parse_config(TOY, ["eval.sample=all"])


def test_evaluate_command_sample_option(tmp_path, capsys):
    cfg = parse_config(TOY)
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path / "model.pt"
    checkpoint.save(path, model, cfg.to_dict(), {})
    assert cli.main(["evaluate", str(path), "--mode", "ensemble", "--samples", "3"]) == 0
    assert "(ensemble K=3, sampling units)" in capsys.readouterr().out
    assert cli.main(["evaluate", str(path), "--mode", "sample", "--sample", "both"]) == 0
    assert "(one sample, sampling both)" in capsys.readouterr().out
    assert cli.main(["evaluate", str(path), "--sample", "all"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'all'" in err and len(err.strip().splitlines()) == 1
