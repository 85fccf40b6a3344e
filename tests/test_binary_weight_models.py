"""The AdaSTE / BayesBiNN networks (parameter counts by hand) and every recipe in configs/
run for one short epoch on tiny synthetic data written in the real file formats."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sbnkit import binarize, optim
from sbnkit.data.cifar import write_cifar_bin
from sbnkit.data.idx import write_idx
from sbnkit.devices import NoImplicitDevice
from sbnkit.errors import UserError
from sbnkit.models import mlp_binaryconnect, resnet18, vgg16, vgg_binaryconnect
from sbnkit.optim import AdaSTEWeight, TanhWeight
from sbnkit.train import fit, load_config, parse_config, prepare
from sbnkit.weights import LatentWeight, latent_parameters, real_parameters

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPES = sorted(CONFIGS.glob("*.toml"))


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_vgg16_parameter_count_and_layout():
    model = vgg16((3, 32, 32), 10, binary_weights=False)
    convs = (
        3 * 64 * 9 + 64 * 64 * 9  # block 1
        + 64 * 128 * 9 + 128 * 128 * 9  # block 2
        + 128 * 256 * 9 + 2 * 256 * 256 * 9  # block 3
        + 256 * 512 * 9 + 2 * 512 * 512 * 9  # block 4
        + 3 * 512 * 512 * 9  # block 5
    )  # fmt: skip
    fcs = 512 * 512 + 512 * 512 + 512 * 10
    assert _count(model) == convs + fcs == 15_239_872
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 16 and not any(m.affine for m in bns)
    assert all(m.momentum == 0.2 for m in bns) and isinstance(model[-1], nn.BatchNorm1d)
    # the pool of a block comes before its BatchNorm
    kinds = [type(m).__name__ for m in model]
    assert kinds[:8] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "MaxPool2d", "BatchNorm2d"] + [
        "ReLU",
        "Conv2d",
    ]


def test_resnet18_parameter_count():
    model = resnet18((3, 32, 32), 10, binary_weights=False)
    k = 9
    stem = 3 * 64 * k
    layer1 = 4 * 64 * 64 * k
    layer2 = 64 * 128 * k + 3 * 128 * 128 * k + 64 * 128  # + 1×1 projection
    layer3 = 128 * 256 * k + 3 * 256 * 256 * k + 128 * 256
    layer4 = 256 * 512 * k + 3 * 512 * 512 * k + 256 * 512
    head = 512 * 10 + 10  # Linear with bias
    # the well-known 11,173,962 of the CIFAR ResNet-18 minus its 9,600 BatchNorm affine parameters
    assert _count(model) == stem + layer1 + layer2 + layer3 + layer4 + head == 11_164_362
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 1 + 16 + 3 + 1 and not any(m.affine for m in bns)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert resnet18((3, 64, 64), 10, binary_weights=False).conv1.stride == (2, 2)


def test_binaryconnect_networks_parameter_counts():
    vgg = vgg_binaryconnect((3, 32, 32), 10, binary_weights=False)
    convs = 3 * 128 * 9 + 128 * 128 * 9 + 128 * 256 * 9 + 256 * 256 * 9
    convs += 256 * 512 * 9 + 512 * 512 * 9
    assert _count(vgg) == convs + 512 * 4 * 4 * 1024 + 1024 * 1024 + 1024 * 10 == 14_022_016
    mlp = mlp_binaryconnect((784,), 10, binary_weights=False)
    assert _count(mlp) == 784 * 2048 + 2 * 2048 * 2048 + 2048 * 10 == 10_014_720
    drops = [m.p for m in mlp.modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.2] * 4
    bns = [m for m in mlp.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 4 and all(m.eps == 1e-4 and m.momentum == 0.15 for m in bns)


def test_width_multiplier_counts():
    # width 1/8: VGG16 channels 8-8-16-16-32×3-64×3-64×3, FC 64-64
    small = vgg16((3, 32, 32), 10, width=0.125, binary_weights=False)
    convs = 3 * 8 * 9 + 8 * 8 * 9 + 8 * 16 * 9 + 16 * 16 * 9 + 16 * 32 * 9 + 2 * 32 * 32 * 9
    convs += 32 * 64 * 9 + 5 * 64 * 64 * 9
    assert _count(small) == convs + 64 * 64 + 64 * 64 + 64 * 10
    r = resnet18((3, 32, 32), 100, width=0.125, binary_weights=False)
    k = 9
    want = 3 * 8 * k + 4 * 8 * 8 * k
    want += 8 * 16 * k + 3 * 16 * 16 * k + 8 * 16
    want += 16 * 32 * k + 3 * 32 * 32 * k + 16 * 32
    want += 32 * 64 * k + 3 * 64 * 64 * k + 32 * 64 + 64 * 100 + 100
    assert _count(r) == want
    m = mlp_binaryconnect((784,), 10, width=0.25, binary_weights=False)
    assert _count(m) == 784 * 512 + 2 * 512 * 512 + 512 * 10


def test_mlp_binaryconnect_logit_norm_option():
    m = mlp_binaryconnect((784,), 10, width=0.25)
    assert isinstance(m[-1], nn.BatchNorm1d) and m[-1].num_features == 10
    bare = mlp_binaryconnect((784,), 10, width=0.25, logit_norm=False)
    assert isinstance(bare[-1], nn.Linear) and len(bare) == len(m) - 1
    assert bare(torch.randn(3, 784)).shape == (3, 10)
    with pytest.raises(UserError, match="logit_norm"):
        mlp_binaryconnect((784,), 10, logit_norm="no")


def test_binary_first_and_head_choose_the_binary_layers():
    make = lambda: optim.get("adaste").make_parametrization()  # noqa: E731
    model = resnet18((3, 32, 32), 10, width=0.125, weight=make)
    ops = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(latent_parameters(model)) == len(ops) == 21  # 17 convs, 3 shortcuts, 1 Linear
    assert all(isinstance(m.parametrizations.weight[0], AdaSTEWeight) for m in ops)
    assert [p.shape for p in real_parameters(model)] == [torch.Size([10])]  # the Linear's bias
    partial = vgg16(
        (3, 32, 32), 10, width=0.125, binary_first=False, binary_head=False, weight=make
    )
    ops = [m for m in partial.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    flags = [nn.utils.parametrize.is_parametrized(m) for m in ops]
    assert flags == [False] + [True] * 14 + [False]


def _fake_data(root: Path) -> None:
    """Tiny training and test sets of every data set the recipes use, in their real formats."""
    rng = np.random.default_rng(0)
    for folder in ("fashion-mnist", "mnist"):
        (root / folder).mkdir(parents=True)
        for prefix, n in (("train", 40), ("t10k", 20)):
            images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            write_idx(root / folder / f"{prefix}-images-idx3-ubyte.gz", images)
            labels = rng.integers(0, 10, n, dtype=np.uint8)
            write_idx(root / folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    c10 = root / "cifar-10-batches-bin"
    c10.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        write_cifar_bin(c10 / name, rng.integers(0, 256, (8, 3, 32, 32)), rng.integers(0, 10, 8))
    c100 = root / "cifar-100-binary"
    c100.mkdir()
    for name, n in (("train.bin", 40), ("test.bin", 20)):
        images, labels = rng.integers(0, 256, (n, 3, 32, 32)), rng.integers(0, 100, n)
        write_cifar_bin(c100 / name, images, labels, label_bytes=2)


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    _fake_data(root)
    return root


def test_every_recipe_has_a_provenance_header():
    for path in RECIPES:
        lines = path.read_text().splitlines()
        assert lines[0].startswith("# ") and sum(line.startswith("#") for line in lines) >= 3


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_on_tiny_synthetic_data(path, fake_data, tmp_path, monkeypatch):
    monkeypatch.setenv("SBNKIT_DATA", str(fake_data))
    threads = torch.get_num_threads()
    overrides = [
        "train.epochs=1",
        "train.batch_size=8",
        "train.threads=1",
        "model.width=0.0625",
        "eval.samples=2",
        "eval.batch_size=20",
    ]
    cfg = load_config(path, overrides)
    if cfg.model.name in ("mlp", "convnet"):  # the SBN recipes: smaller hidden layers
        cfg.model.hidden, cfg.model.channels = [16, 16], [8, 8, 8]
    try:
        run = prepare(cfg)
        before = [p.detach().clone() for p in latent_parameters(run.model)]
        with NoImplicitDevice():  # every tensor on the model's device (see test_devices.py)
            metrics = fit(run, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    assert 0.0 <= metrics["test_acc_mode"] <= 1.0
    after = latent_parameters(run.model)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    binary = [n for n, m in run.model.named_modules() if nn.utils.parametrize.is_parametrized(m)]
    assert binary
    plain = binarize(run.model)
    for name in binary:
        op = plain.get_submodule(name)
        assert not nn.utils.parametrize.is_parametrized(op)
        assert set(op.weight.unique().tolist()) <= {-1.0, 1.0}


TOY = """
[model]
name = "mlp_binaryconnect"
width = 0.01
binary_head = true
[data]
name = "toy2d"
[train]
epochs = 3
batch_size = 50
threads = 1
[eval]
samples = 2
[optim.latent]
"""


def test_fit_drives_epoch_and_step_schedules_of_any_method(tmp_path):
    threads = torch.get_num_threads()
    try:
        run = prepare(parse_config(TOY + 'name = "adaste"\nbeta = 0.01\nbeta_rate = 2.0'))
        fit(run, progress=False)
        betas = [float(p.beta) for p in run.model.modules() if isinstance(p, AdaSTEWeight)]
        assert betas == [pytest.approx(0.08, rel=1e-12)] * 4  # 0.01·2³: before each of 3 epochs
        text = TOY + 'name = "md_tanh_s"\nbeta_scale = 2.0\nbeta_interval = 4'
        run = prepare(parse_config(text))
        fit(run, progress=False)
    finally:
        torch.set_num_threads(threads)
    steps = 3 * (run.train[0].shape[0] // 50)
    tanh = [p for p in run.model.modules() if isinstance(p, TanhWeight)]
    assert len(tanh) == 4 and all(int(p.steps) == steps for p in tanh)
    assert all(float(p.beta) == 2.0 ** (steps // 4) for p in tanh)


@pytest.mark.parametrize("beta, warned", [(1.0, True), (1e6, False)])
def test_fit_logs_the_unsaturated_ratio_and_warns_when_training_ends_unsaturated(beta, warned):
    text = TOY + f'name = "md_tanh_s"\nbeta = {beta}\nbeta_interval = 100000'
    threads = torch.get_num_threads()
    records, lines = [], []
    try:
        run = prepare(parse_config(text.replace("epochs = 3", "epochs = 1")))
        metrics = fit(run, records.append, progress=False, echo=lines.append)
    finally:
        torch.set_num_threads(threads)
    ratio = metrics["unsaturated_ratio"]
    assert records[-1]["unsaturated_ratio"] == ratio
    assert (ratio > 0.5) == warned and (ratio == 0.0) != warned
    assert any(line.startswith("warning:") and "unsaturated" in line for line in lines) == warned
    run = prepare(parse_config(TOY.replace("epochs = 3", "epochs = 1") + 'name = "md"'))
    try:
        assert "unsaturated_ratio" not in fit(run, progress=False)
    finally:
        torch.set_num_threads(threads)


SBN_TOY = """
[model]
name = "mlp"
hidden = [8, 8]
binary_head = true
[data]
name = "toy2d"
[train]
epochs = 1
batch_size = 50
threads = 1
[eval]
samples = 2
[estimator]
name = "{estimator}"
[optim.latent]
name = "{method}"
"""


@pytest.mark.parametrize("estimator", ["st", "psa"])
@pytest.mark.parametrize("method", optim.names())
def test_every_method_trains_an_sbn_with_binary_units(method, estimator, tmp_path):
    threads = torch.get_num_threads()
    try:
        run = prepare(parse_config(SBN_TOY.format(method=method, estimator=estimator)))
        metrics = fit(run, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert math.isfinite(metrics["test_nll_ensemble"])
    kinds = {type(p) for p in run.model.modules() if isinstance(p, LatentWeight)}
    assert kinds == {type(optim.get(method).make_parametrization())}
    plain = binarize(run.model)
    ops = [m for m in plain.modules() if isinstance(m, nn.Linear)]
    assert len(ops) == 3 and all(set(m.weight.unique().tolist()) <= {-1.0, 1.0} for m in ops)
