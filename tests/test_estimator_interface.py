"""The estimator interface: the issue's snippet, every local estimator on dense and conv SBNs,
and a table of bad inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

import sbnkit
from sbnkit.errors import UserError

LOCAL = ["st", "hard_st", "det_st", "concrete", "mean"]


def test_issue_snippet_runs_and_fills_grad():
    x = torch.randn(200, 2, dtype=torch.float64)
    y = torch.randint(0, 2, (200,)).double() * 2 - 1
    model = sbnkit.models.mlp((2,), 1, hidden=(5, 5, 5)).double()
    est = sbnkit.estimators.get("st")

    def loss_fn(logits, y):
        return F.softplus(-y * logits[:, 0])

    est.loss(model, x, y, loss_fn).backward()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4
    assert [tuple(m.weight.shape) for m in linears] == [(5, 2), (5, 5), (5, 5), (1, 5)]
    for m in linears:
        assert m.weight.grad is not None and m.weight.grad.dtype == torch.float64
        assert torch.isfinite(m.weight.grad).all() and m.bias.grad is not None


@pytest.mark.parametrize("name", LOCAL)
@pytest.mark.parametrize("build", ["mlp", "mlp_binary", "convnet"])
def test_local_estimators_on_dense_and_conv(name, build):
    torch.manual_seed(0)
    if build == "convnet":
        model = sbnkit.models.convnet(
            (1, 28, 28), 10, channels=(4, 6), norm="batch", binary_weights=True
        )
        x = torch.randn(5, 1, 28, 28)
    else:
        model = sbnkit.models.mlp(
            (12,),
            3,
            hidden=(8, 6),
            norm="batch" if build == "mlp_binary" else None,
            binary_weights=build == "mlp_binary",
        )
        x = torch.randn(5, 12)
    y = torch.tensor([0, 1, 2, 0, 1])
    loss = sbnkit.estimators.get(name).loss(model, x, y)
    loss.backward()
    assert loss.dim() == 0 and math.isfinite(float(loss.detach()))
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_default_loss_is_mean_cross_entropy():
    torch.manual_seed(0)
    model = sbnkit.models.mlp((4,), 3, hidden=(3,))
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 2, 1, 0])
    loss = sbnkit.estimators.get("mean").loss(model, x, y)
    with sbnkit.using_rule(model, "mean"):
        expected = F.cross_entropy(model(x), y)
    torch.testing.assert_close(loss, expected)


def test_local_estimators_work_in_any_module():
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), sbnkit.BinaryUnit(), torch.nn.Linear(6, 2))
    loss = sbnkit.estimators.get("st").loss(net, torch.randn(3, 4), torch.tensor([0, 1, 1]))
    loss.backward()
    assert net[0].weight.grad is not None


def test_registry_lists_names_and_options():
    assert set(LOCAL) <= set(sbnkit.estimators.names())
    assert sbnkit.estimators.get("concrete", tau=0.1).rule.tau == 0.1


MODEL = sbnkit.models.mlp((4,), 3, hidden=(3,))
X, Y = torch.randn(2, 4), torch.tensor([0, 2])


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: sbnkit.estimators.get("straight_through"), "known estimators"),
        (lambda: sbnkit.estimators.get("concrete", temperature=1.0), "bad options"),
        (lambda: sbnkit.estimators.get("det_st", proxy="relu"), "known proxies"),
        (lambda: sbnkit.models.mlp((4,), 3, hidden=(3,), noise="cauchy"), "known noises"),
        (lambda: sbnkit.models.mlp((4,), 3, hidden=(3,), norm="layer"), "known norms"),
        (lambda: sbnkit.models.mlp((4,), 3, hidden=()), "mlp sizes"),
        (
            lambda: sbnkit.models.mlp((4,), 3, hidden=(3,), weight_mode="x", binary_weights=True),
            "modes",
        ),
        (lambda: sbnkit.predict_proba(MODEL, X, "majority"), "evaluation mode"),
        (lambda: sbnkit.predict_proba(MODEL, X, "ensemble", samples=0), "samples"),
        (lambda: sbnkit.estimators.get("st").loss(MODEL, torch.randn(2, 5), Y), "shape"),
        (lambda: sbnkit.estimators.get("st").loss(MODEL, torch.randn(4), Y), "shape"),
        (
            lambda: sbnkit.estimators.get("st").loss(
                MODEL, torch.tensor([[1.0, float("nan"), 0, 0], [0, 0, 0, 0]]), Y
            ),
            "NaN",
        ),
        (
            lambda: sbnkit.estimators.get("st").loss(MODEL, torch.full((2, 4), float("inf")), Y),
            "Inf",
        ),
        (lambda: sbnkit.estimators.get("st").loss(MODEL, X, torch.tensor([0, 3])), "labels"),
        (lambda: sbnkit.estimators.get("st").loss(MODEL, X, torch.tensor([-1, 0])), "labels"),
        (lambda: sbnkit.estimators.get("st").loss(MODEL, X, torch.tensor([0, 1, 2])), "targets"),
        (lambda: sbnkit.estimators.get("st").loss(MODEL, X, torch.tensor([0.0, 1.0])), "integer"),
        (lambda: sbnkit.estimators.get("st").loss(MODEL, X.long(), Y), "floating point"),
        (
            lambda: sbnkit.estimators.get("st").loss(MODEL, X, Y, lambda lg, y: lg[:1, 0]),
            "one loss per example",
        ),
    ],
)
def test_bad_inputs_raise_one_line_errors(call, fragment):
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_local_factories_set_the_documented_rules():
    from sbnkit.units import Rule

    est = sbnkit.estimators.get
    assert est("st").rule == Rule("st", "noise") and est("st").name == "st"
    assert est("st", proxy="tanh").rule == Rule("st", "tanh")
    assert est("hard_st").rule == Rule("st", "htanh") and est("hard_st").name == "hard_st"
    assert est("det_st").rule == Rule("det_st", "htanh", beta=5.0)
    assert est("det_st", proxy="swishsign", beta=2.0).rule == Rule("det_st", "swishsign", beta=2.0)
    assert est("concrete").rule == Rule("concrete", tau=1.0) and est("concrete").name == "concrete"
    assert est("mean").rule == Rule("mean") and est("mean").name == "mean"


def _hand_local_surrogate(name, a, gen):
    """The hidden states of a one-hidden-layer SBN (logistic noise of scale 1), by hand: the
    forward ``value`` with the backward of ``f`` (straight-through: ``value + f - f.detach()``)."""
    sig = torch.sigmoid(a)
    if name in ("st", "hard_st"):
        value = torch.where(torch.rand(a.shape, generator=gen, dtype=a.dtype) < sig, 1.0, -1.0)
    else:
        value = torch.where(a >= 0, 1.0, -1.0)
    if name == "st":
        f = 2 * sig - 1  # f' = 2 p(a)
    elif name in ("hard_st", "det_st"):
        f = a.clamp(-1, 1)  # f' = 1[|a| <= 1]
    elif name == "concrete":
        u = torch.rand(a.shape, generator=gen, dtype=a.dtype)
        u = u.clamp(torch.finfo(a.dtype).eps, 1 - torch.finfo(a.dtype).eps)
        return torch.tanh((a - torch.log(u / (1 - u))) / 2)
    else:
        return 2 * sig - 1
    return value.double() + f - f.detach()


@pytest.mark.parametrize("name", LOCAL)
def test_local_estimators_give_the_hand_computed_loss_and_gradient(name):
    """Beside the smoke test above: values. The generator replays the estimator's draws."""
    torch.manual_seed(0)
    model = sbnkit.models.mlp((4,), 3, hidden=(5,)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    torch.manual_seed(9)
    loss = sbnkit.estimators.get(name).loss(model, x, y)
    got = torch.autograd.grad(loss, list(model.parameters()))
    stage, head = model.stages[0].op, model.head.linear
    h = _hand_local_surrogate(
        name, x @ stage.weight.T + stage.bias, torch.Generator().manual_seed(9)
    )
    want_loss = F.cross_entropy(h @ head.weight.T + head.bias, y)
    want = torch.autograd.grad(want_loss, list(model.parameters()))
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-14)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)
    assert all(g.abs().sum() > 0 for g in got)
