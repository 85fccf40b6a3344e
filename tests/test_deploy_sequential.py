"""Export, engine and summary of the binary-weight networks with real activations (vgg16, resnet18,
vgg_binaryconnect, mlp_binaryconnect) against the PyTorch mode network, per weight method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sbn_testing import fake_fmnist
from torch import nn

from sbnkit import cli, deploy, models, optim
from sbnkit.deploy import format as deploy_format
from sbnkit.errors import UserError
from sbnkit.weights import BernoulliWeight, latent_parameters, make_binary, using_weight_mode

SHAPES = {
    "vgg16": (3, 32, 32),
    "resnet18": (3, 32, 32),
    "vgg_binaryconnect": (3, 32, 32),
    "mlp_binaryconnect": (1, 28, 28),
}
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
METHODS = ("bernoulli", "adaste", "bayesbinn", "binaryconnect")
U = 2.0**-24  # float32 unit round-off


def _build(name: str, method: str = "bernoulli", width: float = 0.0625) -> nn.Module:
    """``name`` at ``width``, 10 classes, every weight binary; ``bernoulli`` is the builders'
    default parametrization, other methods are attached by :func:`sbnkit.optim.attach`."""
    binary = method == "bernoulli"
    model = models.get(name)(SHAPES[name], 10, width=width, binary_weights=binary)
    return model if binary else optim.attach(model, method)


def _settle(model: nn.Module, shape: tuple[int, ...], forwards: int = 12) -> nn.Module:
    """Non-trivial BatchNorm running statistics: train-mode forwards of the mode network on
    random batches; returns the model in eval mode."""
    model.train()
    with torch.no_grad(), using_weight_mode(model, "mode"):
        for _ in range(forwards):
            model(torch.randn(16, *shape) * 2 + 0.5)
    return model.eval()


def _mode_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad(), using_weight_mode(model, "mode"):
        return model.eval()(x).numpy()


def _ops(layers) -> list:
    """The engine's dense/conv layers, residual branches included."""
    out = []
    for layer in layers:
        if layer.meta["kind"] == "residual":
            out += _ops(layer.body) + _ops(layer.shortcut)
        elif layer.meta["kind"] in ("dense", "conv2d"):
            out.append(layer)
    return out


def _tolerance(engine: deploy.Engine) -> float:
    """Relative tolerance of the engine's float32 logits against PyTorch's float32 ones.

    Each layer computes ``t = Σ_{i≤K} w_i x_i`` in float32; the rounding error of such a sum is
    ``≲ √K·u·Σ|x_i|`` (the probabilistic bound, Higham & Mary 2019) and, with ``±1`` weights and
    BatchNorm-normalised inputs, ``Σ|x_i| ≈ √K·|t|``, so each side adds ``≲ K·u`` relative error
    per layer. Both sides round and the errors of L layers add: ``2·L·K_max·u``.
    """
    ops = _ops(engine.layers)
    return 2 * len(ops) * max(op.k for op in ops) * U


def _check_logits(got: np.ndarray, want: np.ndarray, rel: float) -> None:
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * scale)
    # argmax equal wherever the top two logits are further apart than the tolerance allows
    top2 = np.sort(want, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 2 * rel * scale
    assert decided.mean() >= 0.75
    np.testing.assert_array_equal(got.argmax(1)[decided], want.argmax(1)[decided])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_engine_matches_mode_network(name, method, tmp_path):
    torch.manual_seed(METHODS.index(method))
    shape = SHAPES[name]
    model = _build(name, method)
    with torch.no_grad():  # latents as after training: their signs no longer those of the init
        for latent in latent_parameters(model):
            latent.copy_(torch.randn_like(latent))
    model = _settle(model, shape)
    ops = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    kinds = {type(m.parametrizations.weight[0]) for m in ops}
    spec = optim.get("md" if method == "bernoulli" else method)  # md: Bernoulli weights
    assert kinds == {type(spec.make_parametrization())}
    x = torch.randn(6, *shape) * 2 + 0.5
    want = _mode_logits(model, x)
    path = deploy.export(model, tmp_path / "m.npz", input_shape=shape)
    engine = deploy.load(path, kernel="numpy")
    assert all(op.meta["weight"] == "bits" for op in _ops(engine.layers))
    rel = _tolerance(engine)
    assert rel < 1e-2
    got = engine.predict(x.numpy())
    assert got.dtype == np.float32 and got.shape == (6, 10)
    _check_logits(got, want, rel)
    # the compiled kernels give the numpy reference's logits to round-off
    numba = deploy.load(path, kernel="numba").predict(x.numpy())
    _check_logits(numba, got, rel)
    # export leaves the model as it was: still eval, same logits
    assert not model.training
    np.testing.assert_array_equal(_mode_logits(model, x), want)


def test_layer_sequences_follow_the_models(tmp_path):
    torch.manual_seed(0)
    kinds = {}
    for name, shape in SHAPES.items():
        deploy.export(_build(name), tmp_path / f"{name}.npz", input_shape=shape)
        header, layers = deploy_format.read(tmp_path / f"{name}.npz")
        assert header["version"] == deploy_format.VERSION == 2
        kinds[name] = [layer.meta["kind"] for layer in layers]
    two = ["conv2d", "conv2d", "maxpool2d", "affine"]  # the BN after a pool: an affine layer
    three = ["conv2d", *two]
    assert kinds["vgg16"] == two * 2 + three * 3 + ["dense"] * 3
    assert kinds["vgg_binaryconnect"] == two * 3 + ["dense"] * 3
    assert kinds["mlp_binaryconnect"] == ["dense"] * 4
    assert kinds["resnet18"] == ["conv2d"] + ["residual"] * 8 + ["avgpool2d", "dense"]
    _, layers = deploy_format.read(tmp_path / "resnet18.npz")
    shortcuts = [len(layer.branches["shortcut"]) for layer in layers[1:9]]
    assert shortcuts == [0, 0, 1, 0, 1, 0, 1, 0]  # 1×1 projections where the shape changes
    assert all(len(layer.branches["body"]) == 2 for layer in layers[1:9])
    assert [b.meta["output"] for b in layers[3].branches["body"]] == ["relu", "identity"]
    assert layers[1].meta["output"] == "relu"
    # ReLU folded into the layer before it; the logits' BatchNorm into the last dense layer
    _, vgg = deploy_format.read(tmp_path / "vgg_binaryconnect.npz")
    assert [layer.meta.get("output") for layer in vgg[-3:]] == ["relu", "relu", "identity"]


def test_folding_by_hand(tmp_path):
    """conv (bias) → max-pool → BN (γ < 0, so it cannot move before the max) → ReLU → avg-pool →
    flatten → dropout → Linear (real first layer kept in float32) → BN, against PyTorch."""
    torch.manual_seed(3)
    bn2 = nn.BatchNorm2d(3)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.MaxPool2d(2),
        bn2,
        nn.ReLU(),
        nn.AvgPool2d(2, stride=1),
        nn.Flatten(),
        nn.Dropout(0.5),
        make_binary(nn.Linear(3 * 2 * 2, 4), BernoulliWeight(mode="mode")),
        nn.BatchNorm1d(4),
    )
    with torch.no_grad():
        bn2.weight.copy_(torch.tensor([-1.5, 0.7, 0.0]))
        bn2.bias.copy_(torch.tensor([0.3, -0.2, 0.4]))
    model = _settle(model, (2, 6, 6))
    x = torch.randn(5, 2, 6, 6)
    deploy.export(model, tmp_path / "m.npz", input_shape=(2, 6, 6))
    _, layers = deploy_format.read(tmp_path / "m.npz")
    assert [layer.meta["kind"] for layer in layers] == [
        "conv2d",
        "maxpool2d",
        "affine",
        "avgpool2d",
        "dense",
    ]
    conv, _, affine, pool, dense = layers
    assert conv.meta["weight"] == "float32" and dense.meta["weight"] == "bits"
    np.testing.assert_array_equal(conv.arrays["scale"], np.ones(3, np.float32))
    np.testing.assert_allclose(conv.arrays["shift"], model[0].bias.detach().numpy())
    assert affine.meta["output"] == "relu" and affine.arrays["scale"][0] < 0
    assert pool.meta["out_hw"] == [2, 2]
    engine = deploy.load(tmp_path / "m.npz")
    np.testing.assert_allclose(
        engine.predict(x.numpy()), _mode_logits(model, x), rtol=1e-5, atol=1e-5
    )


def test_round_trip_and_version_1_files(tmp_path):
    torch.manual_seed(1)
    model = _settle(_build("resnet18"), SHAPES["resnet18"])
    deploy.export(model, tmp_path / "a.npz", input_shape=SHAPES["resnet18"])
    header, layers = deploy_format.read(tmp_path / "a.npz")
    deploy_format.write(tmp_path / "b.npz", layers, tuple(header["input_shape"]))
    again, layers_b = deploy_format.read(tmp_path / "b.npz")
    assert again == header
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert any(".body1.weight" in k for k in a.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    x = np.random.default_rng(0).standard_normal((3, *SHAPES["resnet18"])).astype(np.float32)
    e_a, e_b = deploy.load(tmp_path / "a.npz"), deploy.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(e_a.predict(x), e_b.predict(x))
    # stored weights: one uint64 word per 64 inputs of every binary row, plus the float32 ones
    words = sum(op.words.nbytes for op in _ops(e_a.layers))
    assert e_a.weight_bytes() == words
    # a version-1 file (an SBN's layers, which version 1 had) is still read; its header may not
    # use the kinds version 2 added
    sbn = models.mlp((20,), 4, hidden=(30,), norm="batch", binary_weights=True)
    deploy.export(sbn, tmp_path / "s.npz")
    _rewrite(tmp_path / "s.npz", tmp_path / "v1.npz", lambda d: _set_header(d, version=1))
    xs = np.random.default_rng(1).standard_normal((2, 20)).astype(np.float32)
    np.testing.assert_array_equal(
        deploy.load(tmp_path / "v1.npz").predict(xs), deploy.load(tmp_path / "s.npz").predict(xs)
    )
    _rewrite(tmp_path / "a.npz", tmp_path / "a1.npz", lambda d: _set_header(d, version=1))
    with pytest.raises(UserError, match="layer1 has unknown kind 'residual'"):
        deploy.load(tmp_path / "a1.npz")


def _rewrite(src, dst, change) -> None:
    with np.load(src, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    change(data)
    with open(dst, "wb") as f:
        np.savez(f, **data)


def _header(data) -> dict:
    return json.loads(data["header"].tobytes())


def _set_header(data, **fields) -> None:
    header = {**_header(data), **fields}
    data["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def _edit_layers(data, edit) -> None:
    header = _header(data)
    edit(header["layers"])
    data["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def _tampered(src, folder) -> dict:
    """Damaged copies of a ResNet export and the phrase each error must contain."""
    raw = src.read_bytes()
    cases = {"truncated": (lambda p: p.write_bytes(raw[: len(raw) * 2 // 3]), "truncated")}

    def rewrite(change):
        return lambda p: _rewrite(src, p, change)

    cases["nested array missing"] = (
        rewrite(lambda d: d.pop("layer3.shortcut0.weight")),
        "layer3.shortcut0.weight is missing",
    )
    cases["nested array shape"] = (
        rewrite(lambda d: d.update({"layer2.body1.scale": d["layer2.body1.scale"][:-1]})),
        "array layer2.body1.scale has shape",
    )
    cases["stray array"] = (
        rewrite(lambda d: d.update({"layer99.weight": np.zeros(3, np.float32)})),
        "array layer99.weight belongs to no layer",
    )
    cases["branches disagree"] = (
        rewrite(lambda d: _edit_layers(d, lambda ls: ls[3].update(shortcut=[]))),
        "layer3: the body",
    )
    cases["pool geometry"] = (
        rewrite(lambda d: _edit_layers(d, lambda ls: ls[9].update(out_hw=[2, 2]))),
        "layer9: pool geometry does not fit",
    )
    cases["pool kernel"] = (
        rewrite(lambda d: _edit_layers(d, lambda ls: ls[9].update(stride=[0, 4]))),
        "stride must be two integers >= 1",
    )
    cases["affine output"] = (
        rewrite(lambda d: _edit_layers(d, lambda ls: ls[1]["body"][0].update(output="tanh"))),
        "layer1.body0 has unknown output 'tanh'",
    )
    cases["unknown kind"] = (
        rewrite(lambda d: _edit_layers(d, lambda ls: ls[9].update(kind="lstm"))),
        "layer9 has unknown kind 'lstm'",
    )
    return cases


def test_tampered_files_give_one_line_errors(tmp_path):
    torch.manual_seed(0)
    src = deploy.export(_build("resnet18"), tmp_path / "m.npz", input_shape=(3, 32, 32))
    for case, (make, phrase) in _tampered(src, tmp_path).items():
        bad = tmp_path / f"{case.replace(' ', '_')}.npz"
        make(bad)
        with pytest.raises(UserError) as info:
            deploy.load(bad)
            pytest.fail(f"{case}: no error")
        message = str(info.value)
        assert phrase in message and "\n" not in message, (case, message)


@pytest.mark.parametrize("name", list(SHAPES))
def test_truncated_export_of_each_model(name, tmp_path):
    torch.manual_seed(0)
    path = deploy.export(_build(name), tmp_path / "m.npz", input_shape=SHAPES[name])
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(UserError, match="truncated") as info:
        deploy.load(path)
    assert "\n" not in str(info.value)


def test_unexportable_graphs_are_refused(tmp_path):
    out = tmp_path / "m.npz"
    for model, shape, phrase in (
        (_build("mlp_binaryconnect"), None, "needs its input shape; pass input_shape"),
        (_build("vgg_binaryconnect"), (3, 32), r"\[C, H, W\] or \[F\]"),
        (nn.Sequential(nn.Linear(4, 3), nn.Tanh()), (4,), "cannot export a Tanh"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(4, 3)), (1, 6, 6), "needs an nn.Flatten"),
        (nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(4, 3)), (1, 2, 2), "between nn.Flatten"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, padding=1)), (1, 6, 6), "padding"),
        (nn.Sequential(nn.Conv2d(1, 2, 3)), (1, 6, 6), "must end in a vector of logits"),
        (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm2d(3)), (4,), "cannot read an input"),
        (nn.Sequential(nn.ReLU()), (4,), "no Linear or Conv2d"),
        (models.mlp((4,), 2, hidden=(5,)), (5,), "differs from the model's"),
        (_build("mlp_binaryconnect"), (3, 32, 32), "expects 784 inputs, its input has 3072"),
        (nn.Linear(2, 2), (2,), "SBN, an nn.Sequential or a ResNet18"),
    ):
        with pytest.raises(UserError, match=phrase):
            deploy.export(model, out, input_shape=shape)
    assert not list(tmp_path.iterdir())


# --- summary --------------------------------------------------------------------------------


def _rows(s):
    return [
        (r.name, r.output_shape, r.bit_params, r.float_params, r.binary_macs, r.float_macs)
        for r in s.rows
    ]


def test_summary_of_mlp_binaryconnect_by_hand():
    # width 1/16: 784-128-128-128-10, every weight binary, BatchNorm without affine (running
    # mean and variance: 2 floats per channel), no biases; real ReLU activations, so every MAC
    # reads a real value: float MACs
    s = deploy.summary(_build("mlp_binaryconnect"), input_shape=(1, 28, 28))
    assert _rows(s) == [
        ("2 Linear", (128,), 784 * 128, 2 * 128, 0, 784 * 128),
        ("6 Linear", (128,), 128 * 128, 2 * 128, 0, 128 * 128),
        ("10 Linear", (128,), 128 * 128, 2 * 128, 0, 128 * 128),
        ("14 Linear", (10,), 128 * 10, 2 * 10, 0, 128 * 10),
    ]
    bits, floats = 784 * 128 + 2 * 128 * 128 + 1280, 3 * 256 + 20
    assert (s.bit_params, s.float_params) == (bits, floats) == (134_400, 788)
    assert s.packed_bytes == bits // 8 + 4 * floats == 19_952
    assert s.float32_bytes == 4 * (bits + floats)


def test_summary_of_a_conv_sequential_by_hand():
    # conv 2→3 (3×3, pad 1, bias) on 6×6 → 3×6×6; the BatchNorm after the pool counts towards
    # the conv (γ, β, mean, var); Linear 12→4 with bias on the 2×2 pooled map, then BN1d
    model = nn.Sequential(
        make_binary(nn.Conv2d(2, 3, 3, padding=1)),
        nn.MaxPool2d(3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12, 4),
        nn.BatchNorm1d(4, affine=False),
    )
    s = deploy.summary(model, input_shape=(2, 6, 6))
    assert _rows(s) == [
        ("0 Conv2d", (3, 6, 6), 54, 3 + 4 * 3, 0, 54 * 36),
        ("5 Linear", (4,), 0, 48 + 4 + 2 * 4, 0, 48),
    ]
    assert s.packed_bytes == 7 + 4 * (15 + 60)  # ⌈54/8⌉ = 7


def test_summary_of_resnet18_totals_by_hand():
    # width 1/16: stem 3→4, stages of 4/8/16/32 channels, 1×1 projections 4→8, 8→16, 16→32
    s = deploy.summary(_build("resnet18"), input_shape=(3, 32, 32))
    k = 9
    bits = 3 * 4 * k + 4 * 4 * 4 * k  # stem, stage 1
    bits += 4 * 8 * k + 3 * 8 * 8 * k + 4 * 8  # stage 2 with its projection
    bits += 8 * 16 * k + 3 * 16 * 16 * k + 8 * 16
    bits += 16 * 32 * k + 3 * 32 * 32 * k + 16 * 32 + 32 * 10  # stage 4, Linear
    channels = 4 + 4 * 4 + (5 * 8) + (5 * 16) + (5 * 32) + 10  # every BatchNorm, incl. logits'
    assert (s.bit_params, s.float_params) == (bits, 2 * channels + 10) == (44_012, 630)
    assert len(s.rows) == 21 and s.binary_macs == 0
    assert s.rows[0] == s.rows[0].__class__("conv1 Conv2d", (4, 32, 32), 108, 8, 0, 108 * 1024)
    assert s.rows[7].name == "layers.2.shortcut.0 Conv2d" and s.rows[7].float_params == 16
    with pytest.raises(UserError, match=r"cannot run on inputs of shape \[3, 28, 28\]"):
        deploy.summary(_build("vgg16"), input_shape=(3, 28, 28))
    with pytest.raises(UserError, match="needs its input shape"):
        deploy.summary(_build("resnet18"))


# --- CLI ------------------------------------------------------------------------------------


def test_cli_trains_exports_and_summarises_an_adaste_recipe(tmp_path, monkeypatch, capsys):
    data = fake_fmnist(tmp_path / "data")
    monkeypatch.setenv("SBNKIT_DATA", str(data))
    run = tmp_path / "run"
    overrides = [
        "train.epochs=1",
        "train.batch_size=20",
        "train.threads=1",
        "model.width=0.0625",
        "eval.samples=2",
        "eval.batch_size=50",
    ]
    threads = torch.get_num_threads()
    try:
        argv = ["train", str(CONFIGS / "fmnist_adaste.toml"), *overrides, "--out", str(run)]
        assert cli.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    ckpt = run / "model.pt"
    assert cli.main(["summary", str(ckpt)]) == 0
    table = capsys.readouterr().out
    assert "14 Linear" in table and "compression ratio" in table
    out = tmp_path / "m.npz"
    assert cli.main(["export", str(ckpt), str(out)]) == 0
    assert "smaller than the checkpoint" in capsys.readouterr().out
    model, shape = deploy.source.load_model(ckpt)
    assert shape == (1, 28, 28)
    x = torch.rand(7, *shape)
    engine = deploy.load(out)
    _check_logits(engine.predict(x.numpy()), _mode_logits(model, x), _tolerance(engine))
    before = out.read_bytes()
    assert cli.main(["export", str(ckpt), str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists; pass --overwrite" in err and err.count("\n") == 1
    assert out.read_bytes() == before
