"""The TOML config schema: parsing, overrides, round trip and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from sbnkit import UserError
from sbnkit.train.config import (
    Config,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_config,
    parse_override,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_defaults_and_sections():
    assert config_from_dict({}) == Config()
    for empty in ("", "# only a comment\n"):
        with pytest.raises(UserError, match="sets nothing.*configs/fmnist_default.toml"):
            parse_config(empty, ["train.epochs=1"])
    cfg = parse_config(
        """
        [model]
        hidden = [64, 32]
        norm = "affine"
        latent_clip = 1
        [estimator]
        name = "det_st"
        options = { proxy = "tanh" }
        [optim.latent]
        name = "sgd"
        lr = 0.5
        nesterov = true
        [train]
        epochs = 3
        """
    )
    assert cfg.model.hidden == [64, 32] and cfg.model.norm == "affine"
    assert cfg.model.latent_clip == 1.0 and isinstance(cfg.model.latent_clip, float)
    assert cfg.estimator.options == {"proxy": "tanh"}
    assert cfg.optim.latent.name == "sgd" and cfg.optim.latent.nesterov
    assert cfg.optim.real.lr == 1e-3 and cfg.train.epochs == 3


def test_toml_round_trip():
    cfg = parse_config('[estimator]\nname = "concrete"\noptions = { tau = 0.5 }')
    again = parse_config(cfg.to_toml())
    assert again == cfg
    assert parse_config(Config().to_toml()) == Config()


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.toml")), ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path):
    load_config(path)


def test_overrides():
    cfg = parse_config(
        "[train]\nepochs = 3",
        [
            "train.epochs=5",
            "model.norm=affine",
            "model.hidden=[8, 4]",
            "optim.latent.lr=1e-2",
            "estimator.name='det_st'",
            "estimator.options.proxy=tanh",
            "model.binary_head=true",
            " data.val_fraction = 0.25 ",
        ],
    )
    assert cfg.train.epochs == 5 and cfg.model.norm == "affine" and cfg.model.hidden == [8, 4]
    assert cfg.optim.latent.lr == 0.01 and cfg.estimator.name == "det_st"
    assert cfg.estimator.options == {"proxy": "tanh"} and cfg.model.binary_head is True
    assert cfg.data.val_fraction == 0.25


def test_parse_override_values():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=x-y.z") == (["a"], "x-y.z")
    assert parse_override('a="two words"') == (["a"], "two words")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


BAD_CONFIGS = [
    ("[model\nname = 1", "malformed TOML"),
    ("[train]\nepochs = 3\nepochs = 4", "malformed TOML"),
    ("[trian]\nepochs = 3", r"unknown section \[trian\]; did you mean train\?"),
    ("[train]\nepoch = 3", r"unknown key train\.epoch; did you mean train\.epochs\?"),
    ("[optim.latent]\nrl = 0.1", r"unknown key optim\.latent\.rl; did you mean optim\.latent\.lr"),
    ("[optim.fast]\nlr = 0.1", r"unknown section \[optim\.fast\]"),
    ("[model]\nzzz = 1", "unknown key model.zzz; valid keys: model.name"),
    ("foo = 1", "unknown key foo"),
    ("train = 3", r"train must be a table"),
    ('[train]\nepochs = "10"', r"train\.epochs must be an integer, got '10' \(a string\)"),
    ("[train]\nepochs = 2.5", r"train\.epochs must be an integer"),
    ("[train]\nepochs = true", r"train\.epochs must be an integer"),
    ("[train]\nepochs = 0", r"train\.epochs must be positive"),
    ("[train]\nbatch_size = -1", r"train\.batch_size must be positive"),
    ('[train]\nlr_schedule = "linear"', r"train\.lr_schedule must be one of constant"),
    ("[train]\ngrad_clip = -1.0", r"train\.grad_clip must be non-negative"),
    ("[model]\nbinary_weights = 1", r"model\.binary_weights must be a boolean"),
    ('[model]\nhidden = [64, "a"]', r"model\.hidden must be an array of integers"),
    ("[model]\nhidden = 64", r"model\.hidden must be an array of integers"),
    ("[model]\nhidden = []", r"model\.hidden must be a non-empty array"),
    ("[model]\nhidden = [0]", r"model\.hidden must be a non-empty array of positive"),
    ('[model]\nname = "resnet"', r"model\.name must be one of cifar_s1, convnet, mlp"),
    ('[model]\nnoise = "cauchy"', r"model\.noise must be one of logistic"),
    ('[model]\nweight_mode = "median"', r"model\.weight_mode must be one of sample"),
    ('[model]\nnorm = "layer"', r"model\.norm must be one of batch"),
    ('[model]\ninit = "xavier"', r"model\.init must be one of default, data"),
    ("[model]\nnoise_scale = 0", r"model\.noise_scale must be positive"),
    ("[model]\nlatent_clip = -1", r"model\.latent_clip must be non-negative"),
    ("[model]\nnoise_scale = nan", r"model\.noise_scale must be finite"),
    ('[estimator]\nname = "magic"', r"unknown estimator 'magic'"),
    ("[estimator]\noptions = { bogus = 1 }", r"bad options for estimator 'st'"),
    ('[estimator]\noptions = { proxy = "wavy" }', r"unknown proxy 'wavy'"),
    ("[estimator]\noptions = 3", r"estimator\.options must be a table"),
    ('[optim.latent]\nname = "rmsprop"', r"optim\.latent\.name must be one of adam, sgd"),
    ("[optim.real]\nlr = 0", r"optim\.real\.lr must be positive"),
    ("[optim.real]\nmomentum = 1.0", r"optim\.real\.momentum must lie in \[0, 1\)"),
    ("[optim.real]\nnesterov = true", r"optim\.real\.nesterov needs name = \"sgd\""),
    ("[optim.latent]\nweight_decay = -0.1", r"optim\.latent\.weight_decay must be non-neg"),
    ('[data]\nname = "svhn"', r"data\.name must be one of"),
    ("[data]\nval_fraction = 1.0", r"data\.val_fraction must lie in \[0, 1\)"),
    ('[data]\naugment = "mixup"', r"data\.augment must be one of none"),
    ('[data]\nname = "toy2d"\naugment = "flip"', r"needs image data"),
    ('[data]\nname = "toy2d"\n[model]\nname = "convnet"', r"model 'convnet' needs image data"),
    ("[eval]\nsamples = 0", r"eval\.samples must be positive"),
]


@pytest.mark.parametrize("text, message", BAD_CONFIGS)
def test_bad_configs(text, message):
    with pytest.raises(UserError, match=message) as info:
        parse_config(text)
    assert "\n" not in str(info.value)


BAD_OVERRIDES = [
    ("train.epochs", "bad override 'train.epochs'; write section.key=value"),
    ("=3", "bad override"),
    ("train..epochs=3", "bad override"),
    ("train.epochs=[1,", "bad override value"),
    ("train.epochs=1 2", "bad override value"),
    ("train.epochs=1\nx = 2", "give exactly one TOML value"),
    ("train.epochs.x=1", r"train\.epochs is not a table"),
    ("train.epochs=ten", r"train\.epochs must be an integer, got 'ten'"),
    ("train.epoch=3", r"did you mean train\.epochs"),
]


@pytest.mark.parametrize("override, message", BAD_OVERRIDES)
def test_bad_overrides(override, message):
    with pytest.raises(UserError, match=message):
        parse_config("[train]\nepochs = 3", [override])


def test_load_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b"# \xe9\n")
    with pytest.raises(UserError, match="not UTF-8"):
        load_config(tmp_path / "latin1.toml")
