"""The TOML schema of a training run, its validation and ``key=value`` overrides.

Sections and keys (defaults in parentheses)::

    [model]           name (mlp) | convnet | cifar_s1 | vgg16 | resnet18 | vgg_binaryconnect |
                      mlp_binaryconnect | any model registered with sbnkit.models.register;
                      init (default) | data (needs an SBN). The other keys are options of the
                      model's builder (sbnkit.models), passed to it where it takes them and
                      ignored otherwise: hidden ([1024, 1024], mlp); channels ([32, 64, 128],
                      convnet; also its own strides (1, 2, 2, ...), head (avg) | flatten and
                      dense ([], binary dense stages after the convs; need head = "flatten"));
                      width (1.0, the binary-weight networks' multiplier);
                      norm (batch) | affine | none; binary_weights (true); binary_first (true);
                      binary_head (false); noise (logistic); noise_scale (1.0);
                      weight_noise (logistic); weight_noise_scale (0.5);
                      weight_mode (sample) | mode | mean; latent_clip (0 = none). Any other key
                      is an option of the model (e.g. of a registered model of one's own),
                      checked by its builder. The builder checks every value it takes.
    [estimator]       name (st); [estimator.options]: keyword options of the estimator
    [optim.latent]    the binary-weight method (sbnkit.optim): name (adam) | sgd (both: md,
                      Bernoulli weights of [model] with that optimizer) | md | binaryconnect |
                      md_tanh_s | bayesbinn | adaste | bop; lr (0.01); momentum (0.9; sgd,
                      bayesbinn, adaste); nesterov (false); weight_decay (0 = latent weight
                      decay, i.e. KL to the uniform prior; md, binaryconnect, md_tanh_s); any
                      other key is an option of the method (e.g. temperature, train_scale,
                      rule), checked by the method; train_size defaults to the training set's
                      size. The builder attaches the method's weight parametrization.
    [optim.real]      optimizer of all other parameters, same keys; lr (0.001)
    [train]           epochs (10); batch_size (100); lr_schedule (cosine) | constant | step;
                      lr_step_epochs (10) and lr_gamma (0.1) for step; seed (1);
                      grad_clip (0 = off, else clamp each gradient entry); threads (2);
                      checkpoint_every (1: the training state is saved every N epochs, and on
                      SIGTERM/Ctrl-C; 0 = only then); device (auto = CUDA when present) | cpu |
                      cuda | cuda:N | mps; batch_norm (local: each process normalises its own
                      slice of the batch) | sync (SyncBatchNorm over all processes; CUDA only;
                      the same as local with one process); tensorboard ("auto": write
                      TensorBoard events when the package is installed) | true | false
    [data]            name (fashion_mnist); val_fraction (0); augment (none) | flip | crop |
                      flipcrop; crop_padding (4); standardize (true); root ("" = default lookup)
    [eval]            samples (16, ensemble size K); batch_size (2000); sample (auto) | units |
                      weights | both: what the sample/ensemble evaluations draw, "auto" = what
                      training drew (see sbnkit.inference); curve_max (64, the largest
                      ensemble size of the accuracy-vs-K curve 1, 2, 4, ...: each size up to
                      max(samples, curve_max) costs a sampled pass over the test set)

Keys a method does not use (e.g. momentum for bop) are ignored, and so are the ``[model]``
``weight_*`` / ``latent_clip`` keys for methods other than md (adam, sgd) and the ``[model]``
keys a model does not take (e.g. hidden for convnet). Unknown keys, wrong types and bad values
raise :class:`~sbnkit.errors.UserError` naming the key.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import torch
from torch import nn

from .. import data as data_lib
from .. import estimators, models
from .. import optim as optim_lib
from ..devices import DEVICE_NAMES
from ..distributed import BATCH_NORMS
from ..errors import OptionError, UserError
from ..inference import SAMPLE_CHOICES
from ..network import SBN
from ..noise import NOISE_NAMES
from ..weights import WEIGHT_MODES

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = [
    "INITS",
    "OPTIMIZERS",
    "SCHEDULES",
    "Config",
    "DataConfig",
    "EstimatorConfig",
    "EvalConfig",
    "Init",
    "ModelConfig",
    "OptimConfig",
    "OptimizerConfig",
    "Schedule",
    "TrainConfig",
    "apply_overrides",
    "check",
    "check_latent",
    "check_model",
    "config_from_dict",
    "dump_toml",
    "latent_method",
    "load_config",
    "model_options",
    "parse_config",
    "parse_override",
]

Optimizer = Literal["adam", "sgd"]
Schedule = Literal["constant", "cosine", "step"]
Init = Literal["default", "data"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
LATENT_METHODS = (*OPTIMIZERS, *optim_lib.names())
SCHEDULES: tuple[str, ...] = get_args(Schedule)
INITS: tuple[str, ...] = get_args(Init)


@dataclass
class ModelConfig:
    """``[model]``: the architecture and its binary units and weights; the keys besides
    ``name`` and ``init`` are options of the model's builder (module docstring), ``options``
    holds the keys of a model's own that this schema does not know."""

    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [1024, 1024])
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    width: float = 1.0
    norm: str = "batch"
    binary_weights: bool = True
    binary_first: bool = True
    binary_head: bool = False
    noise: str = "logistic"
    noise_scale: float = 1.0
    weight_noise: str = "logistic"
    weight_noise_scale: float = 0.5
    weight_mode: str = "sample"
    latent_clip: float = 0.0
    init: str = "default"
    options: dict = field(default_factory=dict)


@dataclass
class EstimatorConfig:
    """``[estimator]``: a registered gradient estimator and its options."""

    name: str = "st"
    options: dict = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    """``[optim.latent]`` / ``[optim.real]``: one torch optimizer."""

    name: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    options: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    """``[optim]``: separate optimizers for the Bernoulli latents and the real parameters."""

    latent: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=0.01))
    real: OptimizerConfig = field(default_factory=OptimizerConfig)


@dataclass
class TrainConfig:
    """``[train]``: the loop."""

    epochs: int = 10
    batch_size: int = 100
    lr_schedule: str = "cosine"
    lr_step_epochs: int = 10
    lr_gamma: float = 0.1
    seed: int = 1
    grad_clip: float = 0.0
    threads: int = 2
    checkpoint_every: int = 1
    device: str = "auto"
    batch_norm: str = "local"
    tensorboard: bool | str = "auto"


@dataclass
class DataConfig:
    """``[data]``: the data set, validation split and augmentation."""

    name: str = "fashion_mnist"
    val_fraction: float = 0.0
    augment: str = "none"
    crop_padding: int = 4
    standardize: bool = True
    root: str = ""


@dataclass
class EvalConfig:
    """``[eval]``: the final evaluation."""

    samples: int = 16
    batch_size: int = 2000
    sample: str = "auto"
    curve_max: int = 64


@dataclass
class Config:
    """A whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as nested dicts of primitives."""
        return asdict(self)

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        """The config as TOML text that :func:`parse_config` reads back to an equal config."""
        return dump_toml(self.to_dict())


_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a table",
}


def _describe(value: Any) -> str:
    kind = next((n for t, n in _TYPE_NAMES.items() if type(value) is t), None)
    if isinstance(value, list):
        kind = "an array"
    return f"{value!r}" + (f" ({kind})" if kind else "")


def _convert(tp: Any, value: Any, key: str) -> Any:
    if get_origin(tp) in (Union, UnionType):
        for option in get_args(tp):
            with contextlib.suppress(UserError):
                return _convert(option, value, key)
        kinds = " or ".join(_TYPE_NAMES[option] for option in get_args(tp))
        raise UserError(f"{key} must be {kinds}, got {_describe(value)}")
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{key} must be a table [{key}], got {_describe(value)}")
        return _build(tp, value, key + ".")
    if get_origin(tp) is list:
        (item,) = get_args(tp)
        if not isinstance(value, list) or not all(
            isinstance(v, item) and not isinstance(v, bool) for v in value
        ):
            raise UserError(f"{key} must be an array of integers, got {_describe(value)}")
        return list(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
    }[tp]
    if not ok:
        raise UserError(f"{key} must be {_TYPE_NAMES[tp]}, got {_describe(value)}")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise UserError(f"{key} must be finite, got {value!r}")
    if tp is dict:
        for k, v in value.items():
            if isinstance(v, dict):
                raise UserError(f"{key}.{k} must be a plain value, got a table")
    return value


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    if cls in (OptimizerConfig, ModelConfig):  # other plain keys are options, checked by check()
        extra = {k: v for k, v in raw.items() if k not in known and not isinstance(v, dict)}
        raw = {k: v for k, v in raw.items() if k not in extra}
        raw["options"] = {**raw.get("options", {}), **extra} if extra else raw.get("options", {})
        if not raw["options"]:
            del raw["options"]
    for k in raw:
        if k not in known:
            what = f"section [{prefix}{k}]" if isinstance(raw[k], dict) else f"key {prefix}{k}"
            close = difflib.get_close_matches(k, known, n=1, cutoff=0.5)
            hint = (
                f"did you mean {prefix}{close[0]}?"
                if close
                else (f"valid keys: {', '.join(prefix + n for n in known)}")
            )
            raise UserError(f"unknown {what}; {hint}")
    return cls(**{k: _convert(hints[k], v, prefix + k) for k, v in raw.items()})


def _choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise UserError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(
            f"{key} must be {'non-negative' if allow_zero else 'positive'}, got {value!r}"
        )


def model_options(m: ModelConfig, weight: models.WeightFactory | None = None) -> dict[str, Any]:
    """The keyword options of ``m.name``'s builder from the ``[model]`` table: the keys it takes
    (``name`` and ``init`` excepted), the table's other ``options``, and ``weight`` if given and
    taken. Raises :class:`UserError` for an unknown model."""
    taken = models.builder_options(m.name)
    schema = {f.name: getattr(m, f.name) for f in fields(m)}
    options = {k: v for k, v in schema.items() if k in taken and k not in ("name", "init")}
    options.update(m.options)
    if weight is not None and "weight" in taken:
        options["weight"] = weight
    return options


def check_model(cfg: Config) -> nn.Module:
    """The model of ``cfg`` built on the ``meta`` device (no memory, no random numbers), so that
    its builder checks the ``[model]`` options and the data's shape. Raises :class:`UserError`
    for an unknown model, an option it does not take, or a value its builder refuses (an
    option's error prefixed ``model.``)."""
    m = cfg.model
    _choice("model.name", m.name, models.names())
    known = [f.name for f in fields(m) if f.name != "options"]
    taken = models.builder_options(m.name)
    for key in m.options:
        if key in known or key not in taken:
            valid = [*known, *(k for k in taken if k not in known and k != "weight")]
            _unknown_key("model.", key, valid)
    ds = data_lib.get(cfg.data.name)
    try:
        with torch.device("meta"):
            return models.get(m.name)(ds.input_shape, ds.num_classes, **model_options(m))
    except OptionError as exc:
        raise UserError(f"model.{exc}") from None


def check(cfg: Config) -> Config:
    """Raise :class:`UserError` for values out of range or unknown names; return ``cfg``."""
    m, t, d, e = cfg.model, cfg.train, cfg.data, cfg.eval
    _choice("model.weight_noise", m.weight_noise, NOISE_NAMES)
    _choice("model.weight_mode", m.weight_mode, WEIGHT_MODES)
    _choice("model.init", m.init, INITS)
    _positive("model.weight_noise_scale", m.weight_noise_scale)
    _positive("model.latent_clip", m.latent_clip, allow_zero=True)
    _choice("data.name", d.name, data_lib.names())
    model = check_model(cfg)
    estimators.get(cfg.estimator.name, **cfg.estimator.options)
    if m.init == "data" and not isinstance(model, SBN):
        raise UserError(
            f"model.init = 'data' needs an SBN model (sbnkit.network.SBN), but {m.name!r} "
            f"builds a {type(model).__name__}; use model.init = 'default'"
        )
    for which in ("latent", "real"):
        o: OptimizerConfig = getattr(cfg.optim, which)
        _choice(f"optim.{which}.name", o.name, LATENT_METHODS if which == "latent" else OPTIMIZERS)
        _positive(f"optim.{which}.lr", o.lr)
        _positive(f"optim.{which}.weight_decay", o.weight_decay, allow_zero=True)
        if not 0.0 <= o.momentum < 1.0:
            raise UserError(f"optim.{which}.momentum must lie in [0, 1), got {o.momentum!r}")
        if o.nesterov and (o.name != "sgd" or o.momentum == 0):
            raise UserError(f'optim.{which}.nesterov needs name = "sgd" and momentum > 0')
        if which == "real" and o.options:
            known = [f.name for f in fields(o) if f.name != "options"]
            _unknown_key("optim.real.", next(iter(o.options)), known)
    check_latent(cfg.optim.latent)
    for key, value in (
        ("train.epochs", t.epochs),
        ("train.batch_size", t.batch_size),
        ("train.lr_step_epochs", t.lr_step_epochs),
        ("train.threads", t.threads),
        ("eval.samples", e.samples),
        ("eval.batch_size", e.batch_size),
        ("eval.curve_max", e.curve_max),
    ):
        _positive(key, value)
    if t.batch_size == 1 and any(isinstance(x, nn.BatchNorm1d) for x in model.modules()):
        raise UserError(
            f"train.batch_size = 1 cannot train the BatchNorm layers of model {m.name!r}; use a "
            "larger batch" + (' or model.norm = "affine"' if "norm" in model_options(m) else "")
        )
    _choice("train.lr_schedule", t.lr_schedule, SCHEDULES)
    _choice("eval.sample", e.sample, SAMPLE_CHOICES)
    _positive("train.lr_gamma", t.lr_gamma)
    _positive("train.grad_clip", t.grad_clip, allow_zero=True)
    _positive("train.checkpoint_every", t.checkpoint_every, allow_zero=True)
    _choice("train.batch_norm", t.batch_norm, BATCH_NORMS)
    if t.tensorboard not in (True, False, "auto"):
        raise UserError(f'train.tensorboard must be true, false or "auto", got {t.tensorboard!r}')
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", t.device):
        raise UserError(f"train.device must be one of {', '.join(DEVICE_NAMES)}, got {t.device!r}")
    _choice("data.augment", d.augment, data_lib.AUGMENTS)
    _positive("data.crop_padding", d.crop_padding, allow_zero=True)
    if not 0.0 <= d.val_fraction < 1.0:
        raise UserError(f"data.val_fraction must lie in [0, 1), got {d.val_fraction!r}")
    if d.augment != "none" and len(data_lib.get(d.name).input_shape) != 3:
        raise UserError(f"data.augment = {d.augment!r} needs image data; {d.name} is not")
    return cfg


def _unknown_key(prefix: str, key: str, known: list[str]) -> None:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {prefix}{known[0]}, ..."
    raise UserError(f"unknown key {prefix}{key}; {hint}")


def latent_method(o: OptimizerConfig) -> tuple[str, dict[str, Any]]:
    """``(method name, its options)`` for ``[optim.latent]``: ``adam`` / ``sgd`` are ``md`` with
    that base optimizer; ``lr`` always, ``momentum`` / ``nesterov`` / ``weight_decay`` where the
    method takes them, plus the table's other keys."""
    name = "md" if o.name in OPTIMIZERS else o.name
    method = optim_lib.get(name)
    options: dict[str, Any] = {"lr": o.lr}
    if name == "md":
        options["base"] = o.name if o.name in OPTIMIZERS else "adam"
    for key in ("momentum", "nesterov", "weight_decay"):
        if key in method.optim_options:
            options[key] = getattr(o, key)
    return name, {**options, **o.options}


def check_latent(o: OptimizerConfig) -> None:
    """Raise :class:`UserError` for a bad option of the ``[optim.latent]`` method, prefixed
    ``optim.latent.``."""
    name, options = latent_method(o)
    method = optim_lib.get(name)
    fixed = [f.name for f in fields(o) if f.name != "options"]
    allowed = [*method.weight_options, *method.optim_options, *method.required]
    if o.name in OPTIMIZERS or name == "md":  # md's weights are set by [model] weight_* keys
        allowed = ["base"] if o.name == "md" else []
    for key in o.options:
        if name == "md" and key in method.weight_options:
            raise UserError(
                f"unknown key optim.latent.{key}; md takes its Bernoulli weights from "
                "model.weight_noise, model.weight_noise_scale, model.weight_mode, model.latent_clip"
            )
        if key not in allowed or key in fixed:
            _unknown_key("optim.latent.", key, fixed + [k for k in allowed if k not in fixed])
    try:
        method.check(options)
    except UserError as exc:
        raise UserError(f"optim.latent.{exc}") from None


def config_from_dict(raw: dict[str, Any]) -> Config:
    """A validated :class:`Config` from nested dicts (e.g. parsed TOML)."""
    return check(_build(Config, raw, ""))


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` → ``(["a", "b"], value)``; the value is TOML, or a bare word as a string.
    Raises :class:`UserError` for a malformed override."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(_KEY.fullmatch(p) for p in parts):
        raise UserError(f"bad override {text!r}; write section.key=value, e.g. train.epochs=5")
    value = value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")
    except tomllib.TOMLDecodeError:
        if not _BARE.fullmatch(value):
            raise UserError(
                f"bad override value in {text!r}; use a TOML value (quote strings: key='text')"
            ) from None
        return parts, value
    if list(parsed) != ["v"]:
        raise UserError(f"bad override value in {text!r}; give exactly one TOML value")
    return parts, parsed["v"]


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``raw`` with each ``key=value`` of ``overrides`` set (tables created as needed). Raises
    :class:`UserError` for a malformed override or one that descends into a plain value."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"bad override {text!r}: {'.'.join(parts[: i + 1])} is not a table")
        node[parts[-1]] = value
    return raw


def parse_config(text: str, overrides: list[str] | None = None, source: str = "config") -> Config:
    """A validated :class:`Config` from TOML ``text`` and command-line ``overrides``.

    Raises :class:`~sbnkit.errors.UserError` for malformed or empty TOML, unknown keys, wrong
    types and bad values.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = " ".join(str(exc).split())
        raise UserError(f"malformed TOML in {source}: {msg}") from None
    if not raw:
        raise UserError(
            f"{source} sets nothing, so every setting would be a built-in default; "
            "start from configs/fmnist_default.toml"
        )
    return config_from_dict(apply_overrides(raw, list(overrides or [])))


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """:func:`parse_config` of the TOML file ``path``. Raises :class:`UserError` as it does, and
    for a file that cannot be read or is not UTF-8."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"config {path} is not UTF-8 text; save it as UTF-8 TOML") from None
    return parse_config(text, overrides, str(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def dump_toml(tree: dict[str, Any], prefix: str = "") -> str:
    """Nested dicts of primitives as TOML text (plain keys first, then one section per table)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in tree.items() if not isinstance(v, dict)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tree.items():
        if isinstance(v, dict):
            name = prefix + k
            body = dump_toml(v, name + ".")
            if any(not isinstance(x, dict) for x in v.values()) or not v:
                out += f"\n[{name}]\n"
            out += body
    return out
