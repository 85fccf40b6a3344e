"""The CIFAR-10/100 python distributions: tiny files in the real format, a restricted unpickler
that refuses everything else without running it, and their place in the data lookup."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sbnkit import UserError
from sbnkit import data as data_lib
from sbnkit.data.cifar import write_cifar_bin
from sbnkit.data.cifar_python import read_cifar_python, write_cifar_python


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


class _Python2Pickler(pickle._Pickler):
    """Writes strings as Python 2's cPickle did (``SHORT_BINSTRING``/``BINSTRING``), so that
    with ``encoding="bytes"`` they load as bytes, as the original CIFAR files do."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_binstring(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_binstring
    dispatch[str] = save_binstring


def write_python2_batch(path, images, labels) -> None:
    """A CIFAR-10 batch byte-for-byte in the layout of the 2009 files: protocol 2, strings as
    BINSTRING, the array reconstructor under its numpy 1 name ``numpy.core.multiarray``."""
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(v) for v in labels],
        b"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(labels), -1),
        b"filenames": [b"a.png"] * len(labels),
    }
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(batch)
    blob = buffer.getvalue()
    assert b"_codecs" not in blob and b"numpy._core.multiarray\n" in blob
    # GLOBAL names its module as a line of text, so the rename keeps the pickle valid
    path.write_bytes(blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


def test_round_trip_cifar10_and_cifar100(tmp_path):
    images, labels = _images(3), np.array([0, 9, 4])
    write_cifar_python(tmp_path / "data_batch_1", images, labels)
    x, y = read_cifar_python(tmp_path / "data_batch_1")
    assert x.dtype == np.uint8 and x.shape == (3, 3, 32, 32) and np.array_equal(x, images)
    assert y.dtype == np.int64 and y.tolist() == [0, 9, 4]
    # row layout of the real files: pixel (c, h, w) of image i is data[i, 1024 c + 32 h + w]
    flat = pickle.loads((tmp_path / "data_batch_1").read_bytes(), encoding="bytes")[b"data"]
    assert x[2, 1, 5, 7] == flat[2, 1024 + 32 * 5 + 7]
    write_cifar_python(tmp_path / "train", images, [99, 0, 57], num_classes=100)
    x, y = read_cifar_python(tmp_path / "train", num_classes=100)
    assert np.array_equal(x, images) and y.tolist() == [99, 0, 57]


def test_reads_the_python2_files_of_the_original_distribution(tmp_path):
    images, labels = _images(2, seed=1), np.array([3, 7])
    write_python2_batch(tmp_path / "data_batch_1", images, labels)
    x, y = read_cifar_python(tmp_path / "data_batch_1")
    assert np.array_equal(x, images) and y.tolist() == [3, 7]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("nested", [False, True])
def test_a_malicious_pickle_is_refused_without_running_it(tmp_path, nested):
    marker = tmp_path / "ran"
    payload = _Evil(marker)
    if nested:  # hidden inside an otherwise valid batch
        payload = {b"data": _images(1).reshape(1, -1), b"labels": [0], b"x": payload}
    (tmp_path / "evil").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError, match=r"not a CIFAR python batch \(it refers to posix.system\)"):
        read_cifar_python(tmp_path / "evil")
    assert not marker.exists()


def test_codecs_encode_is_admitted_for_latin1_only(tmp_path):
    # _codecs.encode("x", "rot13") → "k": harmless, but not what a CIFAR file holds
    rot13 = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R."
    (tmp_path / "rot13").write_bytes(rot13)
    with pytest.raises(UserError, match="encoding 'rot13' is not latin-1"):
        read_cifar_python(tmp_path / "rot13")


def _batch(**fields) -> bytes:
    base = {b"data": _images(2).reshape(2, -1), b"labels": [1, 2]}
    base.update({k.encode(): v for k, v in fields.items()})
    return pickle.dumps({k: v for k, v in base.items() if v is not None}, protocol=2)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "not a CIFAR python batch"),
        (_batch()[:-40], "not a CIFAR python batch"),  # truncated
        (os.urandom(64), "not a CIFAR python batch"),
        (pickle.dumps([1, 2], protocol=2), "holds a list, not a dict"),
        (pickle.dumps({b"data": b"x"}, protocol=2), "no uint8 image array"),
        (_batch(data=np.zeros((2, 3072), np.float32)), "no uint8 image array"),
        (_batch(data=np.zeros((2, 1024), np.uint8)), "images of 1024 bytes, expected 3072"),
        (_batch(labels=None), "no label list under b'labels'"),
        (_batch(labels=[b"a", b"b"]), "are not integers"),
        (_batch(labels=[1]), "2 images but 1 labels"),
        (_batch(labels=[1, 10]), r"labels must lie in \[0, 10\)"),
    ],
    ids=[
        "empty",
        "truncated",
        "garbage",
        "list",
        "bytes",
        "float",
        "width",
        "nolabels",
        "labeltype",
        "count",
        "range",
    ],
)
def test_anything_else_is_a_clear_error(tmp_path, blob, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob)
    with pytest.raises(UserError, match=message) as info:
        read_cifar_python(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- lookup


def _python_cifar10(folder, seed=0, n=2) -> None:
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_python(folder / name, _images(n, seed), np.arange(n) % 10)


def _binary_cifar10(folder) -> None:
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        write_cifar_bin(folder / name, _images(1), np.array([5]))


@pytest.fixture
def no_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("SBNKIT_DATA", raising=False)
    roots = (tmp_path / "system", tmp_path / "cache")
    monkeypatch.setattr(data_lib, "DEFAULT_ROOTS", roots)
    return roots


def test_cifar10_loads_from_the_python_distribution(tmp_path, monkeypatch, no_defaults):
    _python_cifar10(tmp_path / "env" / "cifar-10-batches-py", n=2)
    monkeypatch.setenv("SBNKIT_DATA", str(tmp_path / "env"))
    x, y = data_lib.load("cifar10", "train", standardize=False)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[0], torch.from_numpy(_images(2)[0]).float() / 255)
    assert data_lib.load("cifar10", "test")[0].shape == (2, 3, 32, 32)
    assert data_lib.find_files("cifar10", "test")[0].name == "test_batch"


def test_lookup_order_place_first_then_binary_before_python(tmp_path, monkeypatch, no_defaults):
    system, _ = no_defaults
    _binary_cifar10(system / "cifar-10-batches-bin")
    _python_cifar10(tmp_path / "env" / "cifar-10-batches-py")
    monkeypatch.setenv("SBNKIT_DATA", str(tmp_path / "env"))
    # $SBNKIT_DATA is searched before /usr/share/datasets, whichever distribution it holds
    assert data_lib.find_files("cifar10")[0].parent.name == "cifar-10-batches-py"
    _binary_cifar10(tmp_path / "env" / "cifar-10-batches-bin")
    # in one place the binary distribution comes first
    assert data_lib.find_files("cifar10")[0].parent == tmp_path / "env" / "cifar-10-batches-bin"
    assert data_lib.load("cifar10", "test")[1].tolist() == [5]


def test_cifar100_python_and_the_missing_data_message(tmp_path, no_defaults):
    system, _ = no_defaults
    with pytest.raises(UserError) as info:
        data_lib.load("cifar100", "test")
    message = str(info.value)
    assert "cifar-100-binary" in message and "cifar-100-python" in message
    assert "cifar-100-python.tar.gz" in message and "\n" not in message
    folder = system / "cifar-100-python"
    folder.mkdir(parents=True)
    write_cifar_python(folder / "train", _images(3), [10, 20, 99], num_classes=100)
    write_cifar_python(folder / "test", _images(1), [42], num_classes=100)
    x, y = data_lib.load("cifar100", "train")
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [10, 20, 99]
    (folder / "test").write_bytes(pickle.dumps(_Evil(tmp_path / "ran"), protocol=2))
    with pytest.raises(UserError, match="not a CIFAR python batch"):
        data_lib.load("cifar100", "test")
    assert not (tmp_path / "ran").exists()


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _batch_bytes(folder: Path, n: int, seed: int) -> bytes:
    write_cifar_python(folder / "batch", _images(n, seed), np.arange(n) % 10)
    return (folder / "batch").read_bytes()


def test_the_downloaded_archive_is_read_without_unpacking(tmp_path, monkeypatch, no_defaults):
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {
        f"cifar-10-batches-py/{n}": _batch_bytes(tmp_path, 2, seed=i) for i, n in enumerate(names)
    }
    env = tmp_path / "env"
    env.mkdir()
    archive = _archive(
        env / "cifar-10-python.tar.gz", {"cifar-10-batches-py/readme.html": b"", **batches}
    )
    monkeypatch.setenv("SBNKIT_DATA", str(env))
    assert data_lib.find_files("cifar10") == [archive]
    x, y = data_lib.load("cifar10", "train", standardize=False)
    assert x.shape == (10, 3, 32, 32) and y.tolist() == [0, 1] * 5
    assert torch.equal(x[2], torch.from_numpy(_images(2, seed=1)[0]).float() / 255)  # in order
    assert data_lib.load("cifar10", "test")[0].shape == (2, 3, 32, 32)
    assert sorted(p.name for p in env.iterdir()) == ["cifar-10-python.tar.gz"]  # not unpacked
    _python_cifar10(env / "cifar-10-batches-py", n=1)  # unpacked beats the archive
    assert data_lib.load("cifar10", "test")[0].shape == (1, 3, 32, 32)


def test_damaged_archives(tmp_path, monkeypatch, no_defaults):
    monkeypatch.setenv("SBNKIT_DATA", str(tmp_path))
    archive = tmp_path / "cifar-100-python.tar.gz"
    archive.write_bytes(os.urandom(100))
    with pytest.raises(UserError, match="cannot read the archive .* it is damaged") as info:
        data_lib.load("cifar100", "test")
    assert "\n" not in str(info.value)
    _archive(archive, {"cifar-100-python/train": b""})
    with pytest.raises(UserError, match="lacks cifar-100-python/test"):
        data_lib.load("cifar100", "test")
    evil = pickle.dumps(_Evil(tmp_path / "ran"), protocol=2)
    _archive(archive, {"cifar-100-python/test": evil})
    with pytest.raises(UserError, match=r"cifar-100-python.tar.gz:cifar-100-python/test is not a"):
        data_lib.load("cifar100", "test")
    assert not (tmp_path / "ran").exists()
