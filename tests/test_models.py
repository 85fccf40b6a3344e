"""The model registry: registration by decorator, the builders' common signature and their option
checks, build_model from a config, and the estimators' single place for defaults."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

import sbnkit
from sbnkit import estimators, models
from sbnkit.errors import UserError
from sbnkit.network import SBN
from sbnkit.train import build_model, parse_config

BUILTIN = [
    "cifar_s1",
    "convnet",
    "mlp",
    "mlp_binaryconnect",
    "resnet18",
    "vgg16",
    "vgg_binaryconnect",
]


@pytest.fixture
def tiny_model():
    """A user model registered for one test, removed afterwards."""

    @models.register("tiny")
    def tiny(
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        depth: int = 1,
        hidden: tuple[int, ...] = (6,),
    ) -> nn.Module:
        if depth < 1:
            raise sbnkit.errors.OptionError("depth", f"depth must be at least 1, got {depth}")
        layers: list[nn.Module] = [nn.Flatten()]
        n_in = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(n_in, hidden[0]), sbnkit.BinaryUnit()]
            n_in = hidden[0]
        return nn.Sequential(*layers, nn.Linear(n_in, num_classes))

    yield tiny
    del models.MODELS["tiny"]


def test_a_registered_user_model_is_built_from_a_config(tiny_model):
    assert "tiny" in models.names() and models.get("tiny") is tiny_model
    assert models.builder_options("tiny") == {"depth": 1, "hidden": (6,)}
    cfg = parse_config(
        '[model]\nname = "tiny"\ndepth = 2\nhidden = [5]\nchannels = [3]\n[data]\nname = "toy2d"'
    )
    assert cfg.model.options == {"depth": 2}
    model = build_model(cfg)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 5), (5, 5), (5, 2)]
    loss = estimators.get("st").loss(model, torch.randn(4, 2), torch.tensor([0, 1, 1, 0]))
    loss.backward()
    assert linears[0].weight.grad is not None
    assert parse_config(cfg.to_toml()) == cfg


@pytest.mark.parametrize(
    "text, message",
    [
        ("depth = 0", r"^model\.depth must be at least 1, got 0$"),
        ("width = 2.0\ndepht = 2", r"unknown key model\.depht; did you mean model\.depth\?"),
        ("[model.options]\nhidden = [3]", r"unknown key model\.hidden"),
        ('init = "data"', r"model\.init = 'data' needs an SBN model .* builds a Sequential"),
    ],
)
def test_a_user_model_options_are_checked_from_a_config(tiny_model, text, message):
    with pytest.raises(UserError, match=message) as info:
        parse_config(f'[data]\nname = "toy2d"\n[model]\nname = "tiny"\n{text}')
    assert "\n" not in str(info.value)


def test_register_refuses_other_signatures_and_taken_names():
    def star(input_shape, num_classes, **options):
        return nn.Identity()

    def positional(input_shape, num_classes, width=1.0):
        return nn.Identity()

    def no_default(input_shape, num_classes, *, width):
        return nn.Identity()

    def short(input_shape):
        return nn.Identity()

    for builder, fragment in (
        (star, "'options' must be keyword-only"),
        (positional, "'width' must be keyword-only"),
        (no_default, "option 'width' needs a default"),
        (short, "input_shape and num_classes"),
    ):
        with pytest.raises(UserError, match=fragment):
            models.register("odd")(builder)
    with pytest.raises(UserError, match="'mlp' is already registered; pass replace=True"):
        models.register("mlp")(no_default)
    assert "odd" not in models.MODELS


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builder_takes_input_shape_and_num_classes_alone(name):
    params = list(inspect.signature(models.get(name)).parameters.values())
    assert [p.name for p in params[:2]] == ["input_shape", "num_classes"]
    assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in params[2:])
    with torch.device("meta"):
        model = models.get(name)([3, 32, 32], 7)
    assert isinstance(model, nn.Module)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last.out_features == 7
    if isinstance(model, SBN):
        assert model.input_shape == (3, 32, 32)


def test_builders_share_the_defaults_of_their_common_options():
    seen: dict[str, object] = {}
    for name in BUILTIN:
        for key, default in models.builder_options(name).items():
            if key in ("binary_weights", "binary_head"):  # SBNs: real; AdaSTE nets: binary
                continue
            assert seen.setdefault(key, default) == default, (name, key)


def test_mlp_flattens_any_input_and_convnet_takes_rectangular_images():
    flat = models.mlp((3,), 2, hidden=[4])
    assert not isinstance(flat.stages[0], nn.Flatten)
    image = models.mlp((1, 2, 3), 2, hidden=[4])
    assert isinstance(image.stages[0], nn.Flatten) and image(torch.randn(5, 1, 2, 3)).shape == (
        5,
        2,
    )
    conv = models.convnet((1, 6, 10), 3, channels=[2, 4])
    assert conv(torch.randn(2, 1, 6, 10)).shape == (2, 3)


BAD_BUILDS = [
    ("mlp", (4,), {"hidden": []}, "hidden must be a non-empty array of positive integers"),
    ("mlp", (4,), {"hidden": [3, 0]}, "hidden must be a non-empty array"),
    ("mlp", (4,), {"noise": "cauchy"}, "noise must be one of logistic, uniform"),
    ("mlp", (4,), {"noise_scale": 0}, "noise_scale must be positive, got 0"),
    ("mlp", (4,), {"norm": "layer"}, "norm must be one of batch, affine, none"),
    ("mlp", (4,), {"rule": "sample"}, "rule must be one of st, det_st"),
    ("mlp", (4,), {"binary_weights": 1}, "binary_weights must be true or false"),
    ("mlp", (4,), {"weight_mode": "median"}, "weight_mode must be one of sample, mode, mean"),
    ("mlp", (4,), {"weight_noise_scale": -1.0}, "weight_noise_scale must be positive"),
    ("mlp", (4,), {"latent_clip": -1.0}, "latent_clip must be non-negative"),
    ("mlp", (4,), {"weight": 3}, "weight must be a factory"),
    (
        "mlp",
        (4,),
        {"sizes": [4, 3]},
        "unknown option 'sizes' for model 'mlp'; known options: hidden",
    ),
    ("mlp", (4,), {"hiden": [3]}, "did you mean hidden?"),
    ("mlp", (), {}, "input_shape must be a non-empty sequence of positive integers"),
    ("mlp", (0, 3), {}, "input_shape must be a non-empty sequence"),
    ("mlp", 784, {}, "input_shape must be a non-empty sequence"),
    ("convnet", (784,), {}, "model 'convnet' needs image data of shape (channels, height, width)"),
    ("convnet", (1, 28, 28), {"channels": [8, -1]}, "channels must be a non-empty array"),
    ("convnet", (1, 28, 28), {"width": 0.5}, "unknown option 'width' for model 'convnet'"),
    ("cifar_s1", (3, 8, 8), {}, "too small for model 'cifar_s1'; use 32×32 images"),
    ("cifar_s1", (3, 32, 32), {"hidden": [3]}, "unknown option 'hidden' for model 'cifar_s1'"),
    ("vgg16", (3, 32, 32), {"width": 0}, "width must be positive, got 0"),
    ("vgg16", (3, 16, 16), {}, "too small for model 'vgg16'"),
    ("vgg16", (3, 32, 32), {"norm": "batch"}, "unknown option 'norm' for model 'vgg16'"),
    ("vgg_binaryconnect", (10,), {}, "model 'vgg_binaryconnect' needs image data"),
    ("resnet18", (3, 32, 32), {"width": True}, "width must be positive, got True"),
    ("resnet18", (3, 16, 16), {}, "too small for model 'resnet18'"),
    ("mlp_binaryconnect", (784,), {"width": "wide"}, "width must be positive"),
]


@pytest.mark.parametrize(
    "name, shape, options, fragment",
    BAD_BUILDS,
    ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_BUILDS)],
)
def test_builders_check_their_options_and_input_shape(name, shape, options, fragment):
    with pytest.raises(UserError) as info, torch.device("meta"):
        models.get(name)(shape, 10, **options)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert repr(name) in message or f"model {name!r}" in message or "unknown option" in message


def test_num_classes_and_unknown_models_are_refused():
    with pytest.raises(UserError, match="num_classes must be a positive integer"):
        models.mlp((4,), 0)
    with pytest.raises(UserError, match="unknown model 'resnet'; known models: cifar_s1"):
        models.get("resnet")


def test_config_prefixes_builder_option_errors_and_ignores_keys_a_model_does_not_take():
    with pytest.raises(UserError, match=r"^model\.channels must be a non-empty array"):
        parse_config('[model]\nname = "convnet"\nchannels = [0]')
    cfg = parse_config('[model]\nname = "convnet"\nhidden = [3]\nwidth = 0.5\nchannels = [4]')
    assert [s.op.out_channels for s in build_model(cfg).stages] == [4]


def test_checking_a_config_builds_on_meta_and_draws_no_random_numbers():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    parse_config('[model]\nname = "cifar_s1"\n[data]\nname = "cifar10"')
    assert torch.equal(torch.rand(3), expected)


def test_estimator_defaults_live_in_the_constructors():
    assert estimators.options("exact") == {"max_states": 2**20, "chunk": 2**24}
    assert estimators.options("psa") == {
        "kernel": "auto",
        "tol": 1e-3,
        "order": None,
        "chunk": 2**22,
    }
    assert estimators.options("reinforce") == {"baseline": False, "decay": 0.9}
    for name in estimators.names():
        est = estimators.get(name)
        assert est.name == name and type(est) is estimators.ESTIMATORS[name]
    assert vars(estimators.get("psa")) == {
        "kernel": "auto",
        "tol": 1e-3,
        "order": None,
        "chunk": 2**22,
    }


@pytest.mark.parametrize(
    "name, options, message",
    [
        (
            "psa",
            {"kernal": "series"},
            "unknown option 'kernal'; known options: kernel, tol, order, chunk",
        ),
        ("exact", {"max_state": 4}, "unknown option 'max_state'; known options: max_states, chunk"),
        ("arm", {"baseline": 1}, "unknown option 'baseline'; it takes no options"),
    ],
)
def test_unknown_estimator_options_name_the_known_ones(name, options, message):
    with pytest.raises(UserError, match=f"bad options for estimator '{name}': {message}") as info:
        estimators.get(name, **options)
    assert "\n" not in str(info.value)
    section = ", ".join(f"{k} = {v!r}".replace("'", '"') for k, v in options.items())
    with pytest.raises(UserError, match=message):
        parse_config(f'[estimator]\nname = "{name}"\noptions = {{ {section} }}')
