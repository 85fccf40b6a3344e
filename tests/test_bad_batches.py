"""Every estimator and the model's forward refuse an unusable batch with one clear line."""

import pytest
import torch
from torch import nn

from sbnkit import UserError, estimators, models
from sbnkit.inference import predict_proba

NAMES = estimators.names()


def _model(norm: str = "none") -> nn.Module:
    torch.manual_seed(0)
    return models.mlp((4,), 2, hidden=(3, 3), norm=norm)


def _batch(n: int, dtype: torch.dtype = torch.float32):
    return torch.randn(n, 4, dtype=dtype), torch.zeros(n, dtype=torch.long)


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_batch_is_refused(name):
    model = _model()
    x, y = _batch(0)
    with pytest.raises(UserError) as info:
        estimators.get(name).loss(model, x, y)
    assert "the batch is empty" in _one_line(info)


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_of_another_dtype_is_refused(name):
    model = _model()
    x, y = _batch(3, torch.float64)
    with pytest.raises(UserError) as info:
        estimators.get(name).loss(model, x, y)
    assert "input is torch.float64 but the model is torch.float32" in _one_line(info)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "exact"])
def test_one_example_through_training_batchnorm_is_refused(name):
    model = _model("batch").train()
    x, y = _batch(1)
    with pytest.raises(UserError) as info:
        estimators.get(name).loss(model, x, y)
    assert "BatchNorm in training mode needs at least 2 examples" in _one_line(info)


def test_the_checks_hold_outside_estimators_too():
    model = _model("batch")
    with pytest.raises(UserError, match="BatchNorm"):
        model(_batch(1)[0])
    with pytest.raises(UserError, match="empty"):
        predict_proba(model.eval(), _batch(0)[0])
    assert predict_proba(model, _batch(1)[0]).shape == (1, 2)  # eval mode: one example is fine
    plain = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(UserError, match="float64 but the model is torch.float32"):
        estimators.get("st").loss(plain, *_batch(2, torch.float64))
    with pytest.raises(UserError, match="empty"):
        estimators.get("st").loss(plain, *_batch(0))
    assert torch.isfinite(estimators.get("st").loss(plain, *_batch(2)))
