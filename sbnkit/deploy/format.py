"""The deploy file: an uncompressed ``.npz`` (read with ``allow_pickle=False``) holding

* ``magic``: the bytes ``sbnkit-deploy``;
* ``header``: UTF-8 JSON with ``format``, ``version``, ``input_shape``, ``num_outputs``, the
  ``semantics`` (plain-language rules the engine follows) and one entry per layer;
* ``layer{i}.{name}``: the arrays of layer ``i`` (``weight``, ``threshold``, ``flip``, ``scale``,
  ``shift``); the layers of a ``residual`` layer's branches are ``layer{i}.body{j}`` and
  ``layer{i}.shortcut{j}``.

Version 2 added the layer kinds ``affine``, ``maxpool2d``, ``avgpool2d`` and ``residual`` (for
binary-weight networks with real activations); version 1 files (``dense`` and ``conv2d`` only,
same meaning) are still read. :func:`write` is atomic (temporary file in the same folder, then
``os.replace``); :func:`read` validates everything, rejects arrays the header does not name, and
raises :class:`~sbnkit.errors.UserError` with one line otherwise.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ..errors import UserError
from .fold import DENSE_POOLS, OUTPUTS, Layer, Reads
from .packing import words_for

__all__ = [
    "FORMAT",
    "KINDS",
    "LAYER_KEYS",
    "MAGIC",
    "SEMANTICS",
    "VERSION",
    "LayerKind",
    "WeightKind",
    "read",
    "write",
]

FORMAT = "sbnkit-deploy"
MAGIC = b"sbnkit-deploy"
VERSION = 2

LayerKind = Literal["dense", "conv2d", "affine", "maxpool2d", "avgpool2d", "residual"]
WeightKind = Literal["bits", "float32"]
WEIGHT_KINDS: tuple[WeightKind, ...] = get_args(WeightKind)
KINDS: dict[int, tuple[LayerKind, ...]] = {1: ("dense", "conv2d"), 2: get_args(LayerKind)}

SEMANTICS = {
    "network": (
        "the mode network in eval mode: every binary unit at z = 0, binary weights at their "
        "mode sign (Bernoulli weights: sign(eta)), BatchNorm with its running statistics, "
        "dropout off"
    ),
    "sign": "sign(0) = +1; states are +1/-1",
    "packing": (
        "binary weights and states are packed 64 per little-endian uint64 along the input "
        "dimension; bit j of word i is element 64*i+j; a set bit is -1, a clear bit +1; "
        "words are padded with clear bits"
    ),
    "dot": "for packed x, w of length K: x.w = K - 2*popcount(x XOR w)",
    "order": (
        "spatial maps are channels last; conv weights and im2col patches are ordered "
        "(kh, kw, c_in); a dense layer reading a spatial map reads it flattened (h, w, c); "
        "the input is given as PyTorch lays it out ([B, C, H, W] or [B, F])"
    ),
    "padding": (
        "conv zero padding as in PyTorch: a padded tap contributes 0 to the pre-activation, "
        "also for +1/-1 states (padded taps are packed as clear bits, +1, and the weight sum "
        "over the padded taps of each output position is subtracted)"
    ),
    "sign_output": (
        "output +1 iff (flip = 0 and t >= threshold) or (flip = 1 and t <= threshold), where "
        "t = W.x is the op output without bias; threshold is int64 when the layer reads +1/-1 "
        "states with +1/-1 weights (t is then an integer), float64 otherwise (+-inf: constant)"
    ),
    "float_output": "y = act(t * scale + shift), act = relu or identity, in float32",
    "pool": "pool = avg: mean over spatial positions of the input before the dense op",
    "float_ops": "layers that read floats, or have float32 weights, compute t in float32",
    "layers": "layers run in order, each on the previous one's output; the first reads the input",
    "affine": (
        "kind affine: y = act(x * scale + shift) per channel (the last axis), act = relu or "
        "identity, in float32 (a BatchNorm folded where no layer before it could take it)"
    ),
    "pools": (
        "kinds maxpool2d / avgpool2d: max / mean over kernel windows at the given stride, no "
        "padding, output size floor((in - kernel) / stride) + 1, on float maps"
    ),
    "residual": (
        "kind residual: y = act(body(x) + shortcut(x)); body and shortcut are layer lists run "
        "on the same float input x, in order; an empty shortcut is the identity"
    ),
}

LAYER_KEYS: dict[str, tuple[str, ...]] = {
    "dense": ("in_features", "out_features", "input", "weight", "output"),
    "conv2d": (
        "in_channels",
        "out_channels",
        "kernel",
        "stride",
        "padding",
        "in_hw",
        "out_hw",
        "input",
        "weight",
        "output",
    ),
    "affine": ("channels", "output"),
    "maxpool2d": ("channels", "kernel", "stride", "in_hw", "out_hw"),
    "avgpool2d": ("channels", "kernel", "stride", "in_hw", "out_hw"),
    "residual": ("body", "shortcut", "output"),
}


def write(path: str | os.PathLike, layers: list[Layer], input_shape: tuple[int, ...]) -> None:
    """Write ``layers`` atomically to ``path``; an existing file is replaced.

    Raises ``OSError`` if the folder cannot be written (the temporary file is removed).
    """
    path = Path(path)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "input_shape": list(input_shape),
        "num_outputs": _out_size(layers[-1]),
        "semantics": SEMANTICS,
        "layers": [_header_meta(layer) for layer in layers],
    }
    arrays = {
        "magic": np.frombuffer(MAGIC, dtype=np.uint8),
        "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
    }
    _collect_arrays(layers, "layer", arrays)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _header_meta(layer: Layer) -> dict:
    """The layer's header entry: its meta with its branches' entries nested."""
    meta = dict(layer.meta)
    for name, branch in layer.branches.items():
        meta[name] = [_header_meta(sub) for sub in branch]
    return meta


def _collect_arrays(layers: list[Layer], prefix: str, out: dict[str, np.ndarray]) -> None:
    for i, layer in enumerate(layers):
        for name, value in layer.arrays.items():
            out[f"{prefix}{i}.{name}"] = value
        for name, branch in layer.branches.items():
            _collect_arrays(branch, f"{prefix}{i}.{name}", out)


def _out_size(layer: Layer) -> int:
    meta = layer.meta
    if meta["kind"] == "residual":
        return _out_size(layer.branches["body"][-1])
    if meta["kind"] == "conv2d":
        return meta["out_channels"]
    return meta["out_features"] if meta["kind"] == "dense" else meta["channels"]


def read(path: str | os.PathLike) -> tuple[dict, list[Layer]]:
    """``(header, layers)`` of the deploy file ``path``, fully validated.

    Raises :class:`UserError` (one line) for a missing file, a file that is not an npz archive,
    a wrong magic or version, a truncated archive, arrays whose shapes do not fit the header,
    or arrays the header does not name.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"deploy file {path} does not exist; write one with `sbnkit export`")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not an sbnkit deploy file (truncated or not an npz archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise UserError(f"{path} holds pickled objects, which are never loaded") from None
        raise UserError(f"{path} is damaged ({str(exc).splitlines()[0]})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is truncated or damaged ({first})") from None
    magic = data.get("magic")
    if magic is None or magic.dtype != np.uint8 or magic.tobytes() != MAGIC:
        raise UserError(f"{path} is not an sbnkit deploy file (wrong magic)")
    try:
        header = json.loads(data["header"].tobytes().decode())
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} has a damaged header; export the model again") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UserError(f"{path} is not an sbnkit deploy file (wrong format in header)")
    version = header.get("version")
    if isinstance(version, bool) or version not in KINDS:
        raise UserError(
            f"{path} has format version {version!r}; this sbnkit reads versions "
            f"{', '.join(map(str, KINDS))}; export the model again with this sbnkit"
        )
    try:
        layers = _check_file(header, data, KINDS[version])
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path} has a malformed header ({type(exc).__name__}: {exc})") from None
    return header, layers


def _expect(name: str, array: np.ndarray, shape: tuple[int, ...], dtype: str) -> None:
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise UserError(
            f"array {name} has shape {list(array.shape)} and dtype {array.dtype}, "
            f"expected {list(shape)} and {np.dtype(dtype)}; the file is damaged"
        )


def _ints(where: str, meta: dict, key: str, minimum: int) -> list[int]:
    """``meta[key]``: a pair of integers ``≥ minimum``."""
    value = meta[key]
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
    ):
        raise UserError(f"{where}: {key} must be two integers >= {minimum}, got {value!r}")
    return value


class _Checker:
    """Validates a header's layer lists against the arrays; records which arrays it used."""

    def __init__(self, data: dict[str, np.ndarray], kinds: tuple[LayerKind, ...]) -> None:
        self.data, self.kinds = data, kinds
        self.used = {"magic", "header"}

    def take(self, arrays: dict, name: str, key: str, shape: tuple[int, ...], dtype: str) -> None:
        full = f"{name}.{key}"
        if full not in self.data:
            raise UserError(f"array {full} is missing; the file is damaged")
        _expect(full, self.data[full], shape, dtype)
        arrays[key] = self.data[full]
        self.used.add(full)

    def chain(
        self, metas: list, prefix: str, shape: tuple[int, ...], kind: Reads
    ) -> tuple[list[Layer], tuple[int, ...], Reads]:
        """The layers of ``metas`` (array names ``{prefix}{i}.*``) reading ``shape``/``kind``;
        returns them with their output shape and kind."""
        if not isinstance(metas, list):
            raise UserError(f"{prefix}: the layer list is not a list; the file is damaged")
        layers = []
        for i, meta in enumerate(metas):
            name = f"{prefix}{i}"
            if not isinstance(meta, dict) or meta.get("kind") not in self.kinds:
                got = meta.get("kind") if isinstance(meta, dict) else meta
                raise UserError(f"{name} has unknown kind {got!r}; the file is damaged")
            for key in LAYER_KEYS[meta["kind"]]:
                if key not in meta:
                    raise UserError(f"{name} misses {key!r} in the header; the file is damaged")
            if meta["kind"] in ("dense", "conv2d"):
                layer, shape, kind = self._op(meta, name, shape, kind)
            elif kind != "float":
                raise UserError(f"{name}: a {meta['kind']} layer cannot read +1/-1 states")
            elif meta["kind"] == "affine":
                layer, shape = self._affine(meta, name, shape)
            elif meta["kind"] == "residual":
                layer, shape = self._residual(meta, name, shape)
            else:
                layer, shape = self._pool(meta, name, shape)
            layers.append(layer)
        return layers, shape, kind

    def _op(
        self, meta: dict, where: str, shape: tuple[int, ...], kind: Reads
    ) -> tuple[Layer, tuple[int, ...], Reads]:
        if meta["output"] not in OUTPUTS:
            raise UserError(f"{where} has unknown output {meta['output']!r}")
        if meta["weight"] not in WEIGHT_KINDS:
            raise UserError(f"{where} has unknown weight kind {meta['weight']!r}")
        pool = meta.get("pool", "none")
        if pool not in DENSE_POOLS or (pool == "avg" and meta["kind"] != "dense"):
            raise UserError(f"{where} has unknown pool {pool!r}; the file is damaged")
        if meta["kind"] == "conv2d":
            kh, kw = _ints(where, meta, "kernel", 1)
            sh, sw = _ints(where, meta, "stride", 1)
            ph, pw = _ints(where, meta, "padding", 0)
            h, w = meta["in_hw"]
            out_hw = [(h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1]
            if shape != (h, w, meta["in_channels"]) or list(meta["out_hw"]) != out_hw:
                raise UserError(
                    f"{where}: conv geometry does not fit its input of shape {list(shape)}"
                )
            k, n = kh * kw * meta["in_channels"], meta["out_channels"]
            out_shape = (*out_hw, n)
            reads = kind
        else:
            k, n = meta["in_features"], meta["out_features"]
            size = shape[-1] if pool == "avg" else int(np.prod(shape))
            if size != k:
                raise UserError(
                    f"{where}: expects {k} inputs but its input has shape {list(shape)}"
                )
            out_shape = (n,)
            reads = "float" if pool == "avg" else kind
        if meta["input"] != reads:
            raise UserError(f"{where}: reads {meta['input']!r} but receives {reads!r}")
        arrays: dict[str, np.ndarray] = {}
        if meta["weight"] == "bits":
            self.take(arrays, where, "weight", (n, words_for(k)), "<u8")
        else:
            self.take(arrays, where, "weight", (n, k), "<f4")
        if meta["output"] == "sign":
            integer = reads == "bits" and meta["weight"] == "bits"
            self.take(arrays, where, "threshold", (n,), "<i8" if integer else "<f8")
            self.take(arrays, where, "flip", (n,), "u1")
        else:
            self.take(arrays, where, "scale", (n,), "<f4")
            self.take(arrays, where, "shift", (n,), "<f4")
        out_kind = "bits" if meta["output"] == "sign" else "float"
        return Layer(dict(meta), arrays), out_shape, out_kind

    def _affine(self, meta: dict, where: str, shape: tuple[int, ...]) -> tuple[Layer, tuple]:
        if meta["output"] not in ("relu", "identity"):
            raise UserError(f"{where} has output {meta['output']!r}; affine layers: relu, identity")
        n = meta["channels"]
        if shape[-1] != n:
            raise UserError(f"{where}: scales {n} channels but its input has shape {list(shape)}")
        arrays: dict[str, np.ndarray] = {}
        self.take(arrays, where, "scale", (n,), "<f4")
        self.take(arrays, where, "shift", (n,), "<f4")
        return Layer(dict(meta), arrays), shape

    def _pool(self, meta: dict, where: str, shape: tuple[int, ...]) -> tuple[Layer, tuple]:
        kh, kw = _ints(where, meta, "kernel", 1)
        sh, sw = _ints(where, meta, "stride", 1)
        h, w = meta["in_hw"]
        out_hw = [(h - kh) // sh + 1, (w - kw) // sw + 1]
        if shape != (h, w, meta["channels"]) or list(meta["out_hw"]) != out_hw or min(out_hw) < 1:
            raise UserError(f"{where}: pool geometry does not fit its input of shape {list(shape)}")
        return Layer(dict(meta)), (*out_hw, meta["channels"])

    def _residual(self, meta: dict, where: str, shape: tuple[int, ...]) -> tuple[Layer, tuple]:
        if meta["output"] not in ("relu", "identity"):
            raise UserError(f"{where} has output {meta['output']!r}; residual: relu, identity")
        body, body_shape, body_kind = self.chain(meta["body"], f"{where}.body", shape, "float")
        short, short_shape, short_kind = self.chain(
            meta["shortcut"], f"{where}.shortcut", shape, "float"
        )
        if not body or body_shape != short_shape or "bits" in (body_kind, short_kind):
            raise UserError(
                f"{where}: the body (shape {list(body_shape)}) and the shortcut (shape "
                f"{list(short_shape)}) must both give float maps of one shape"
            )
        own = {k: v for k, v in meta.items() if k not in ("body", "shortcut")}
        return Layer(own, {}, {"body": body, "shortcut": short}), body_shape


def _check_file(
    header: dict, data: dict[str, np.ndarray], kinds: tuple[LayerKind, ...]
) -> list[Layer]:
    """Check that each layer's arrays fit its geometry, that the layers chain, and that every
    array belongs to a layer."""
    shape = tuple(int(s) for s in header["input_shape"])
    if len(shape) == 3:
        shape = (shape[1], shape[2], shape[0])
    metas = header["layers"]
    if not isinstance(metas, list) or not metas:
        raise UserError("the deploy file has no layers; export the model again")
    checker = _Checker(data, kinds)
    layers, shape, _ = checker.chain(metas, "layer", shape, "float")
    if int(header["num_outputs"]) != shape[-1] or len(shape) != 1:
        raise UserError("the last layer does not give num_outputs logits; the file is damaged")
    extra = sorted(set(data) - checker.used)
    if extra:
        raise UserError(f"array {extra[0]} belongs to no layer; the file is damaged")
    return layers
