"""Bit-packed export and the packed engine: packing, folding, exactness, bad files, CLI."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sbnkit import binarize, cli, deploy, models, optim
from sbnkit.deploy import format as deploy_format
from sbnkit.deploy.engine import popcount_numba, popcount_numpy, signed_sum_numba
from sbnkit.deploy.fold import fold_threshold
from sbnkit.deploy.packing import dot_reference, pack_signs, unpack_signs, words_for
from sbnkit.errors import UserError
from sbnkit.inference import predict_proba
from sbnkit.network import SBN, Head, Stage
from sbnkit.train import checkpoint, parse_config
from sbnkit.train.loop import build_model
from sbnkit.units import BinaryUnit, Rule, using_rule
from sbnkit.weights import BernoulliWeight, make_binary, using_weight_mode

# --- packing and kernels -------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 63, 64, 65, 130])
def test_pack_unpack_and_reference_dot(n):
    rng = np.random.default_rng(n)
    x = rng.choice([-1, 1], size=(5, n))
    w = rng.choice([-1, 1], size=(7, n))
    xw, ww = pack_signs(x < 0), pack_signs(w < 0)
    assert xw.shape == (5, words_for(n)) and xw.dtype == np.dtype("<u8")
    np.testing.assert_array_equal(unpack_signs(xw, n, np.int64), x)
    np.testing.assert_array_equal(dot_reference(xw, ww, n), x @ w.T)


def test_bit_order_is_documented_one():
    negative = np.zeros(70, dtype=bool)
    negative[[0, 3, 64, 69]] = True
    words = pack_signs(negative)
    assert words.tolist() == [(1 << 0) | (1 << 3), (1 << 0) | (1 << 5)]


def test_numba_kernel_equals_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**64, size=(37, 5), dtype=np.uint64)
    w = rng.integers(0, 2**64, size=(11, 5), dtype=np.uint64)
    expected = np.bitwise_count(x[:, None, :] ^ w[None]).sum(-1)
    np.testing.assert_array_equal(popcount_numpy(x, w), expected)
    np.testing.assert_array_equal(popcount_numba(x, w), expected)


@pytest.mark.parametrize("k", [5, 64, 100])
def test_lookup_kernel_for_float_inputs_and_packed_weights(k):
    rng = np.random.default_rng(k)
    w = rng.choice([-1.0, 1.0], size=(9, k))
    x = rng.standard_normal((3, k)).astype(np.float32)
    out = signed_sum_numba(x, pack_signs(w < 0), k)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w.T, rtol=1e-6, atol=1e-5)


def test_fold_threshold_rule_against_brute_force():
    s = np.array([0.7, -0.3, 0.0, 0.0, 2.0, -1.5])
    c = np.array([1.4, 0.9, 0.5, -0.5, -3.0, -4.5])
    t, flip = fold_threshold(s, c)
    grid = np.arange(-10, 11)[:, None]
    plus = s * grid + c >= 0
    rule = np.where(flip, grid <= t, grid >= t)
    np.testing.assert_array_equal(rule, plus)


def test_packed_weights_take_32x_less_memory(tmp_path):
    torch.manual_seed(0)
    model = models.mlp((128,), 10, hidden=(256, 256), norm="batch", binary_weights=True)
    deploy.export(model, tmp_path / "m.npz")
    engine = deploy.load(tmp_path / "m.npz")
    hidden = [layer for layer in engine.layers if layer.meta["weight"] == "bits"]
    assert [layer.stored_bytes for layer in hidden] == [128 * 256 // 8, 256 * 256 // 8]
    assert hidden[1].words.nbytes * 32 == 256 * 256 * 4
    assert engine.weight_bytes() == 128 * 256 // 8 + 256 * 256 // 8 + 10 * 256 * 4  # + float head


# --- exactness against the PyTorch mode network --------------------------------------------


def _randomize_norms(model: nn.Module) -> None:
    """Running statistics and affine params of both signs, so thresholds and flips vary."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-4, 4)
            m.running_var.uniform_(0.5, 6)
            m.weight.data.uniform_(-1, 1)
            m.weight.data[0] = 0.0  # γ = 0: a constant unit
            m.bias.data.uniform_(-1, 1)
        elif type(m).__name__ == "ChannelAffine":
            m.weight.data.uniform_(-1, 1)
            m.bias.data.uniform_(-2, 2)
        elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            m.bias.data.uniform_(-2, 2)


def _relu_sbn() -> SBN:
    """Binary weights, real (ReLU) activations: the engine keeps float activations."""
    stages = []
    for n_in, n_out in ((20, 33), (33, 17)):
        op = make_binary(nn.Linear(n_in, n_out), BernoulliWeight(mode="mode"))
        stages.append(Stage(op, nn.ReLU(), nn.BatchNorm1d(n_out)))
    return SBN(stages, Head(nn.Linear(17, 4)), (20,))


CASES = {
    # input 100 (not a multiple of 64), binary everything, BatchNorm with γ of both signs and 0
    "mlp-batch": (
        lambda: models.mlp((100,), 5, hidden=(70, 130), norm="batch", binary_weights=True),
        16,
    ),
    "mlp-bias-binary-head": (
        lambda: models.mlp((30,), 3, hidden=(65,), binary_weights=True, binary_head=True),
        16,
    ),
    "mlp-real-weights": (lambda: models.mlp((30,), 4, hidden=(40, 50), norm="affine"), 16),
    # padding 1 on ±1 states, stride 2, odd sizes
    "convnet-batch": (
        lambda: models.convnet((2, 9, 9), 4, channels=(5, 7, 9), norm="batch", binary_weights=True),
        6,
    ),
    "convnet-affine-real-first": (
        lambda: models.convnet(
            (1, 7, 7), 3, channels=(4, 6), norm="affine", binary_weights=True, binary_first=False
        ),
        6,
    ),
    # chosen strides, a flatten head reading the last ±1 map (columns permuted to (h, w, c))
    "convnet-strides-flatten": (
        lambda: models.convnet(
            (1, 9, 9),
            3,
            channels=(4, 6, 5),
            strides=(2, 1, 2),
            head="flatten",
            norm="batch",
            binary_weights=True,
        ),
        6,
    ),
    # a binary dense stage reading the flattened last ±1 map, then the head
    "convnet-dense": (
        lambda: models.convnet(
            (1, 8, 8),
            3,
            channels=(4, 5),
            strides=(2, 2),
            head="flatten",
            dense=(11,),
            norm="batch",
            binary_weights=True,
        ),
        6,
    ),
    "cifar_s1": (lambda: models.cifar_s1((3, 32, 32), 10, binary_weights=True), 2),
    "relu-binary-weights": (_relu_sbn, 16),
}


def _torch_trace(model: SBN, x: torch.Tensor):
    """Mode-network (input, output) of every Stage, and the logits."""
    seen = []
    modules = [s for s in model.stages if isinstance(s, Stage)] + [model.head]
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((i[0], o))) for m in modules]
    with using_rule(model, Rule("det_st")), using_weight_mode(model, "mode"), torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return seen, logits


def _channels_last(t: torch.Tensor) -> np.ndarray:
    return (t.permute(0, 2, 3, 1) if t.dim() == 4 else t).numpy()


@pytest.mark.parametrize("name", list(CASES))
def test_engine_matches_mode_network(name, tmp_path):
    build, batch = CASES[name]
    torch.manual_seed(1)
    model = build().double()
    _randomize_norms(model)
    model.eval()
    deploy.export(model, tmp_path / "m.npz")
    engine = deploy.load(tmp_path / "m.npz", kernel="numpy")
    x = torch.randn(batch, *model.input_shape, dtype=torch.float64)
    seen, logits = _torch_trace(model, x)
    trace = engine.trace(x.float().numpy())
    ops = [s.op for s in model.stages if isinstance(s, Stage)] + [model.head.linear]
    clean = np.ones(batch, dtype=bool)  # examples whose states all agree so far
    integer_layers = 0
    for op, (x_in, y), layer, (t, out) in zip(ops, seen, engine.layers, trace, strict=True):
        with using_weight_mode(model, "mode"), torch.no_grad():
            if op is model.head.linear:
                x_in = model.head.features(x_in)
            conv = isinstance(op, nn.Conv2d)
            ref = op._conv_forward(x_in, op.weight, None) if conv else F.linear(x_in, op.weight)
        ref = _channels_last(ref)
        if layer.integer:
            integer_layers += 1
            # exact integers, wherever the layer's ±1 input states agree with PyTorch's
            np.testing.assert_array_equal(t[clean], ref[clean].astype(np.int64))
        else:
            np.testing.assert_allclose(t[clean], ref[clean], rtol=1e-5, atol=1e-4)
        if layer.output == "sign":
            states = _channels_last(y) < 0
            differ = out != states
            if layer.integer:
                assert not differ[clean].any()
            else:
                # float round-off may flip a unit only within round-off of its threshold
                thr = np.broadcast_to(layer.threshold, ref.shape)
                gap = np.abs(ref - thr)[differ & clean[(...,) + (None,) * (ref.ndim - 1)]]
                assert np.all(gap <= 1e-4 * (1 + np.abs(ref).max()))
                assert differ.mean() < 1e-3
            clean &= ~differ.reshape(batch, -1).any(axis=1)
        else:
            np.testing.assert_allclose(out[clean], _channels_last(y)[clean], rtol=1e-4, atol=1e-4)
    assert clean.mean() >= 0.5
    np.testing.assert_allclose(
        engine.predict(x.float().numpy())[clean], logits.numpy()[clean], rtol=1e-4, atol=1e-4
    )
    if name not in ("mlp-real-weights", "relu-binary-weights"):
        assert integer_layers >= 1
    # the compiled kernels: identical integers, float layers equal to round-off
    numba_trace = deploy.load(tmp_path / "m.npz", kernel="numba").trace(x.float().numpy())
    for layer, (t, _), (t_numba, _) in zip(engine.layers, trace, numba_trace, strict=True):
        if layer.integer:
            np.testing.assert_array_equal(t_numba, t)
        else:
            np.testing.assert_allclose(t_numba, t, rtol=1e-5, atol=1e-4)


def test_sign_of_zero_and_padding_by_hand(tmp_path):
    """Zero pixels give +1 states (sign(0) = +1); a 3x3 stride-2 conv of all-ones weights with
    padding 1 on a 5x5 map then counts only its in-map taps: 4 at corners, 6 on edges, 9 inside."""
    first = nn.Conv2d(1, 1, 1, bias=True)
    second = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():
        for op in (first, second):
            op.weight.fill_(1.0)
            op.bias.zero_()
    model = SBN(
        [Stage(first, BinaryUnit()), Stage(second, BinaryUnit())],
        Head(nn.Linear(9, 2), "flatten"),
        (1, 5, 5),
    )
    deploy.export(model, tmp_path / "m.npz")
    engine = deploy.load(tmp_path / "m.npz")
    counts = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    for value, sign in ((0.0, 1), (-1.0, -1)):
        trace = engine.trace(np.full((1, 1, 5, 5), value, np.float32))
        assert (trace[0][1] == (sign < 0)).all()
        np.testing.assert_array_equal(trace[1][0][0, :, :, 0], sign * counts)


def test_integer_thresholds_reproduce_pytorch_at_every_reachable_value(tmp_path):
    """For each unit, every integer t in [-K, K] through the model's own norm gives the engine's
    decision (t ≥ T, or t ≤ T when flipped)."""
    torch.manual_seed(2)
    model = models.mlp((9,), 3, hidden=(40, 67), norm="batch", binary_weights=True)
    _randomize_norms(model)
    model.eval()
    deploy.export(model, tmp_path / "m.npz")
    layer = deploy.load(tmp_path / "m.npz").layers[1]
    k = layer.k
    grid = torch.arange(-k, k + 1, dtype=torch.float32)[:, None].expand(-1, 67)
    with torch.no_grad():
        plus = (model.stages[1].norm(grid) >= 0).numpy()
    t = grid.numpy()
    engine_plus = np.where(layer.flip, t <= layer.threshold, t >= layer.threshold)
    np.testing.assert_array_equal(engine_plus, plus)


def test_export_uses_running_statistics_and_keeps_training_mode(tmp_path):
    torch.manual_seed(4)
    model = models.mlp((12,), 3, hidden=(20,), norm="batch", binary_weights=True)
    _randomize_norms(model)
    model.train()
    deploy.export(model, tmp_path / "train.npz")
    assert model.training
    model.eval()
    deploy.export(model, tmp_path / "eval.npz")
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    a = deploy.load(tmp_path / "train.npz").predict(x)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, deploy.load(tmp_path / "eval.npz").predict(x))


def test_binarized_plain_weights_are_packed(tmp_path):
    torch.manual_seed(3)
    model = models.mlp((20,), 4, hidden=(30,), norm="batch", binary_weights=True)
    plain = binarize(model)
    deploy.export(plain, tmp_path / "a.npz")
    deploy.export(model, tmp_path / "b.npz")
    a, b = deploy.load(tmp_path / "a.npz"), deploy.load(tmp_path / "b.npz")
    assert a.layers[0].meta["weight"] == "bits"
    x = np.random.default_rng(0).standard_normal((5, 20)).astype(np.float32)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


# --- files, inputs and the CLI -------------------------------------------------------------


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    model = models.convnet((1, 6, 6), 3, channels=(4, 5), norm="batch", binary_weights=True)
    path = tmp_path / "m.npz"
    deploy.export(model, path)
    return path


def _rewrite(src, dst, change):
    with np.load(src, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    change(data)
    with open(dst, "wb") as f:
        np.savez(f, **data)


def _set_header(data, **fields):
    header = json.loads(data["header"].tobytes())
    header.update(fields)
    data["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def _bad_files(src, folder):
    out = {}
    raw = src.read_bytes()
    (folder / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    out["truncated"] = (folder / "truncated.npz", "truncated")
    (folder / "text.npz").write_text("hello")
    out["not npz"] = (folder / "text.npz", "truncated or not an npz")
    _rewrite(src, folder / "magic.npz", lambda d: d.update(magic=np.frombuffer(b"nope", np.uint8)))
    out["wrong magic"] = (folder / "magic.npz", "wrong magic")
    _rewrite(src, folder / "version.npz", lambda d: _set_header(d, version=99))
    out["wrong version"] = (folder / "version.npz", "format version 99")
    _rewrite(
        src, folder / "shape.npz", lambda d: d.update({"layer1.weight": d["layer1.weight"][:-1]})
    )
    out["weight shape"] = (folder / "shape.npz", "array layer1.weight has shape")
    _rewrite(src, folder / "chain.npz", lambda d: _set_header(d, input_shape=[1, 7, 7]))
    out["input shape"] = (folder / "chain.npz", "conv geometry does not fit")
    _rewrite(src, folder / "missing.npz", lambda d: d.pop("layer0.threshold"))
    out["missing array"] = (folder / "missing.npz", "layer0.threshold is missing")
    with open(folder / "pickle.npz", "wb") as f:
        np.savez(f, magic=np.array([{"a": 1}], dtype=object))
    out["pickled"] = (folder / "pickle.npz", "pickled objects")
    out["absent"] = (folder / "absent.npz", "does not exist")
    return out


def test_bad_files_give_one_line_errors(exported, tmp_path):
    for case, (path, phrase) in _bad_files(exported, tmp_path).items():
        with pytest.raises(UserError) as info:
            deploy.load(path)
        message = str(info.value)
        assert phrase in message, case
        assert "\n" not in message, case


def test_bad_inputs_and_overwrite(exported):
    engine = deploy.load(exported)
    good = np.zeros((2, 1, 6, 6), np.float32)
    assert engine.predict(good).shape == (2, 3)
    for bad, phrase in (
        (np.zeros((2, 6, 6), np.float32), "expects [B, 1, 6, 6]"),
        (np.zeros((2, 1, 6, 6), np.int32), "floating point"),
        (np.full((2, 1, 6, 6), np.nan, np.float32), "NaN"),
        (torch.zeros(2, 1, 6, 6), "numpy array"),
    ):
        with pytest.raises(UserError, match=phrase.replace("[", r"\[")):
            engine.predict(bad)
    with pytest.raises(UserError, match="--overwrite"):
        deploy.export(models.mlp((3,), 2, hidden=(4,)), exported, overwrite=False)
    assert [p.name for p in exported.parent.iterdir()] == [exported.name]


def test_unsupported_modules_are_refused(tmp_path):
    model = models.mlp((4,), 2, hidden=(5,))
    model.stages[0].unit = nn.Tanh()
    with pytest.raises(UserError, match="Tanh"):
        deploy.export(model, tmp_path / "m.npz")
    with pytest.raises(UserError, match="SBN"):
        deploy.export(nn.Linear(2, 2), tmp_path / "m.npz")
    assert not list(tmp_path.iterdir())


def test_cli_summary_and_export(tmp_path, capsys):
    cfg = parse_config(
        '[model]\nhidden = [24]\nnorm = "batch"\nbinary_weights = true\n'
        '[data]\nname = "fashion_mnist"\n'
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    ckpt = tmp_path / "model.pt"
    checkpoint.save(ckpt, model, cfg.to_dict())
    (tmp_path / "c.toml").write_text(cfg.to_toml())
    assert cli.main(["summary", str(ckpt)]) == 0
    assert "compression ratio" in capsys.readouterr().out
    assert cli.main(["summary", str(tmp_path / "c.toml")]) == 0
    assert "stage0 Linear" in capsys.readouterr().out
    out = tmp_path / "m.npz"
    assert cli.main(["export", str(ckpt), str(out)]) == 0
    assert "smaller than the checkpoint" in capsys.readouterr().out
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert deploy.load(out).predict(x).shape == (3, 10)
    before = out.read_bytes()
    for argv, phrase in (
        (["export", str(ckpt), str(out)], "exists; pass --overwrite"),
        (["export", str(tmp_path / "c.toml"), str(tmp_path / "n.npz")], "is a config"),
        (["export", str(tmp_path / "no.pt"), str(tmp_path / "n.npz")], "does not exist"),
        (["export", str(ckpt), str(tmp_path / "no" / "n.npz")], "does not exist"),
        (["summary", str(tmp_path / "no.pt")], "does not exist"),
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("sbnkit: error: ") and phrase in err and err.count("\n") == 1
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "m.npz", "model.pt"]
    assert cli.main(["export", str(ckpt), str(out), "--overwrite"]) == 0
    with zipfile.ZipFile(out) as z:
        assert "header.npy" in z.namelist()
    header, _ = deploy_format.read(out)
    assert header["semantics"]["sign"].startswith("sign(0) = +1")


@pytest.mark.parametrize("method", ["adaste", "bop", "md_tanh_s", "bayesbinn", "binaryconnect"])
def test_every_binary_weight_method_exports_its_sign_weights(tmp_path, method):
    """An SBN trained with any binary-weight method exports the mode network's ±1 weights."""
    torch.manual_seed(0)
    model = models.mlp((20,), 3, hidden=(8, 8), norm="batch", binary_weights=False)
    optim.attach(model, method, modules=[s.op for s in model.stages])
    model.eval()
    x = torch.randn(5, 20)
    deploy.export(model, tmp_path / "m.npz")
    engine = deploy.load(tmp_path / "m.npz")
    want = predict_proba(model, x).log()
    got = torch.from_numpy(engine.predict(x.numpy())).log_softmax(1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
