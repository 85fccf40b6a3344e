"""Device choice, and every estimator and a training step creating no tensor off the model's
device (checked without a GPU: factories called from sbnkit without ``device=`` raise)."""

from pathlib import Path

import pytest
import torch

import sbnkit
from sbnkit import UserError, estimators, models
from sbnkit.devices import NoImplicitDevice, resolve_device
from sbnkit.train import fit, parse_config, prepare

BERNOULLI_OK = {"st", "hard_st", "det_st", "concrete", "mean", "psa", "reinforce", "adf"}


def _case(kind: str, binary_weights: bool):
    torch.manual_seed(0)
    if kind == "mlp":
        model = models.mlp((4,), 2, hidden=(3, 3), norm="batch", binary_weights=binary_weights)
        x = torch.randn(5, 4, dtype=torch.float64)
    else:
        model = models.convnet((1, 6, 6), 2, channels=[2, 2], binary_weights=binary_weights)
        x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    return model.double(), x, torch.randint(0, 2, (x.shape[0],))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("name", estimators.names())
def test_estimators_create_no_tensor_off_the_model_device(name, kind):
    for binary_weights in (False, True):
        if binary_weights and name not in BERNOULLI_OK:
            continue
        model, x, y = _case(kind, binary_weights)
        if name == "exact":
            if kind == "conv":
                continue  # far too many states; the mlp covers its code
            model.eval()
        with NoImplicitDevice():
            loss = estimators.get(name).loss(model, x, y)
            loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_training_run_creates_no_tensor_off_the_model_device():
    cfg = parse_config(
        '[model]\nhidden = [8]\ninit = "data"\nnorm = "none"\n[train]\nepochs = 1\n'
        'batch_size = 50\nthreads = 1\ndevice = "cpu"\n[data]\nname = "toy2d"\n'
        "[eval]\nsamples = 2\n"
    )
    run = prepare(cfg)
    assert run.device == torch.device("cpu")
    with NoImplicitDevice():
        metrics = fit(run, progress=False)
    assert 0.0 <= metrics["test_acc_ensemble"] <= 1.0


def test_the_check_catches_an_implicit_device():
    """Code in the package that calls a factory without device= is reported with its line."""
    fake = str(Path(sbnkit.__file__).resolve().parent / "planted.py")
    code = compile("torch.zeros(3)", fake, "exec")
    with NoImplicitDevice(), pytest.raises(AssertionError, match=r"planted.py:1: torch.zeros"):
        exec(code, {"torch": torch})
    with NoImplicitDevice():
        exec(compile("torch.zeros(3, device='cpu')", fake, "exec"), {"torch": torch})
        torch.zeros(3)  # outside the package (this test): allowed


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bad = ["tpu", "", "cuda:x"]
    if not torch.cuda.is_available():
        bad += ["cuda", "cuda:0"]
    bad.append(f"cuda:{torch.cuda.device_count() + 3}")
    if not torch.backends.mps.is_available():
        bad.append("mps")
    for name in bad:
        with pytest.raises(UserError) as info:
            resolve_device(name)
        message = str(info.value)
        assert "\n" not in message and ("not available" in message or "unknown device" in message)


def test_config_device_is_checked():
    with pytest.raises(UserError, match="train.device must be one of"):
        parse_config('[train]\ndevice = "gpu"')


def test_a_batch_on_another_device_is_refused():
    model = models.mlp((4,), 2, hidden=(3,))
    with pytest.raises(UserError, match="input is on meta but the model is on cpu"):
        estimators.get("st").loss(model, torch.empty(2, 4, device="meta"), torch.zeros(2).long())
