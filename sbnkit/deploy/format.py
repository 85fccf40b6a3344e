"""The deploy file: an uncompressed ``.npz`` (read with ``allow_pickle=False``) holding

* ``magic``: the bytes ``sbnkit-deploy``;
* ``header``: UTF-8 JSON with ``format``, ``version``, ``input_shape``, ``num_outputs``, the
  ``semantics`` (plain-language rules the engine follows) and one entry per layer;
* ``layer{i}.{name}``: the arrays of layer ``i`` (``weight``, ``threshold``, ``flip``, ``scale``,
  ``shift``).

:func:`write` is atomic (temporary file in the same folder, then ``os.replace``); :func:`read`
validates everything and raises :class:`~sbnkit.errors.UserError` with one line otherwise.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from .fold import Layer
from .packing import words_for

__all__ = ["FORMAT", "MAGIC", "SEMANTICS", "VERSION", "read", "write"]

FORMAT = "sbnkit-deploy"
MAGIC = b"sbnkit-deploy"
VERSION = 1

SEMANTICS = {
    "network": "the mode network: every binary unit at z = 0, Bernoulli weights at sign(eta)",
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
}

LAYER_KEYS = {
    "dense": ("in_features", "out_features"),
    "conv2d": (
        "in_channels",
        "out_channels",
        "kernel",
        "stride",
        "padding",
        "in_hw",
        "out_hw",
    ),
}


def write(path: str | os.PathLike, layers: list[Layer], input_shape: tuple[int, ...]) -> None:
    """Write ``layers`` atomically to ``path``; an existing file is replaced."""
    path = Path(path)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "input_shape": list(input_shape),
        "num_outputs": _out_size(layers[-1].meta),
        "semantics": SEMANTICS,
        "layers": [layer.meta for layer in layers],
    }
    arrays = {
        "magic": np.frombuffer(MAGIC, dtype=np.uint8),
        "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
    }
    for i, layer in enumerate(layers):
        for name, value in layer.arrays.items():
            arrays[f"layer{i}.{name}"] = value
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _out_size(meta: dict) -> int:
    return meta["out_channels"] if meta["kind"] == "conv2d" else meta["out_features"]


def read(path: str | os.PathLike) -> tuple[dict, list[Layer]]:
    """``(header, layers)`` of the deploy file ``path``, fully validated.

    Raises :class:`UserError` (one line) for a missing file, a file that is not an npz archive,
    a wrong magic or version, a truncated archive, or arrays whose shapes do not fit the header.
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
    if header.get("version") != VERSION:
        raise UserError(
            f"{path} has format version {header.get('version')!r}; this sbnkit reads version "
            f"{VERSION}; export the model again with this sbnkit"
        )
    try:
        layers = _check_layers(header, data)
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


def _check_layers(header: dict, data: dict[str, np.ndarray]) -> list[Layer]:
    """Check that each layer's arrays fit its geometry and that the layers chain."""
    shape = tuple(int(s) for s in header["input_shape"])
    if len(shape) == 3:
        shape = (shape[1], shape[2], shape[0])
    kind = "float"
    layers = []
    metas = header["layers"]
    if not isinstance(metas, list) or not metas:
        raise UserError("the deploy file has no layers; export the model again")
    for i, meta in enumerate(metas):
        where = f"layer {i}"
        if meta.get("kind") not in LAYER_KEYS:
            raise UserError(f"{where} has unknown kind {meta.get('kind')!r}; the file is damaged")
        for key in LAYER_KEYS[meta["kind"]]:
            if key not in meta:
                raise UserError(f"{where} misses {key!r} in the header; the file is damaged")
        if meta.get("output") not in ("sign", "relu", "identity"):
            raise UserError(f"{where} has unknown output {meta.get('output')!r}")
        if meta.get("weight") not in ("bits", "float32"):
            raise UserError(f"{where} has unknown weight kind {meta.get('weight')!r}")
        pool = meta.get("pool", "none")
        if meta["kind"] == "conv2d":
            (kh, kw), (sh, sw), (ph, pw) = meta["kernel"], meta["stride"], meta["padding"]
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
        if meta.get("input") != reads:
            raise UserError(f"{where}: reads {meta.get('input')!r} but receives {reads!r}")
        arrays: dict[str, np.ndarray] = {}

        def take(name: str, shp: tuple[int, ...], dtype: str, i=i, arrays=arrays) -> None:
            key = f"layer{i}.{name}"
            if key not in data:
                raise UserError(f"array {key} is missing; the file is damaged")
            _expect(key, data[key], shp, dtype)
            arrays[name] = data[key]

        if meta["weight"] == "bits":
            take("weight", (n, words_for(k)), "<u8")
        else:
            take("weight", (n, k), "<f4")
        if meta["output"] == "sign":
            integer = reads == "bits" and meta["weight"] == "bits"
            take("threshold", (n,), "<i8" if integer else "<f8")
            take("flip", (n,), "u1")
        else:
            take("scale", (n,), "<f4")
            take("shift", (n,), "<f4")
        layers.append(Layer(dict(meta), arrays))
        shape, kind = out_shape, ("bits" if meta["output"] == "sign" else "float")
    if int(header["num_outputs"]) != shape[-1] or len(shape) != 1:
        raise UserError("the last layer does not give num_outputs logits; the file is damaged")
    return layers
