"""Data readers, data set lookup, augmentation and batching."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from sbnkit import UserError
from sbnkit import data as data_lib
from sbnkit.data.cifar import read_cifar_bin, write_cifar_bin
from sbnkit.data.idx import read_idx, write_idx


def write_fake_mnist(
    folder: Path, n_train: int = 40, n_test: int = 20, seed: int = 0, compress: bool = True
) -> None:
    """Write a tiny IDX data set with the (Fashion-)MNIST file names into ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte{suffix}",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        write_idx(
            folder / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n, dtype=np.uint8)
        )


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, name, dtype):
    array = (np.arange(24) - 5).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name, ndim=3)
    assert back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)
    assert (tmp_path / name).read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\0\0")


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape
    )
    return header + array.tobytes()


GOOD = _idx_bytes(np.zeros((3, 2, 2), np.uint8))


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"", "bad magic"),
        (b"\x01\x00\x08\x03" + GOOD[4:], "bad magic"),
        (GOOD[:2] + b"\x07" + GOOD[3:], "data type code"),
        (GOOD[:3] + b"\x01" + GOOD[4:], "dimensions"),
        (GOOD[:10], "truncated header"),
        (GOOD[:-1], "data bytes"),
        (GOOD + b"\x00", "data bytes"),
        (gzip.compress(GOOD)[:-6], "gzip"),
        (b"\x1f\x8b" + b"garbage" * 3, "gzip"),
    ],
)
def test_idx_corrupt(tmp_path, payload, why):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(payload)
    with pytest.raises(UserError, match=why) as info:
        read_idx(path, ndim=3)
    assert "corrupt" in str(info.value) and "re-" in str(info.value)
    assert "\n" not in str(info.value)


def test_cifar_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 9, 3, 4, 1])
    write_cifar_bin(tmp_path / "c10.bin", images, labels)
    assert (tmp_path / "c10.bin").stat().st_size == 5 * 3073
    x, y = read_cifar_bin(tmp_path / "c10.bin")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    write_cifar_bin(tmp_path / "c100.bin", images, labels * 11, label_bytes=2)
    x, y = read_cifar_bin(tmp_path / "c100.bin", label_bytes=2, num_classes=100)
    np.testing.assert_array_equal(y, labels * 11)
    (tmp_path / "short.bin").write_bytes((tmp_path / "c10.bin").read_bytes()[:-1])
    with pytest.raises(UserError, match="3073-byte"):
        read_cifar_bin(tmp_path / "short.bin")
    write_cifar_bin(tmp_path / "label.bin", images[:1], np.array([10]))
    with pytest.raises(UserError, match="out of range"):
        read_cifar_bin(tmp_path / "label.bin")


def test_load_cifar10_from_sbnkit_data(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        write_cifar_bin(folder / name, rng.integers(0, 256, (2, 3, 32, 32)), np.array([1, 2]))
    monkeypatch.setenv("SBNKIT_DATA", str(tmp_path))
    x, y = data_lib.load("cifar10", "train")
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert data_lib.load("cifar10", "test")[0].shape == (2, 3, 32, 32)


def test_load_standardises_with_fixed_constants(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path, compress=False)
    monkeypatch.setenv("SBNKIT_DATA", str(tmp_path))
    raw = read_idx(tmp_path / "train-images-idx3-ubyte")
    x, y = data_lib.load("fashion_mnist", "train")
    assert x.shape == (40, 1, 28, 28) and y.shape == (40,)
    expected = (raw[3] / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(x[3, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    x01, _ = data_lib.load("fashion_mnist", "train", standardize=False)
    assert float(x01.min()) >= 0.0 and float(x01.max()) <= 1.0


@pytest.fixture
def no_defaults(monkeypatch, tmp_path):
    """Point the default roots into an empty folder and clear SBNKIT_DATA."""
    monkeypatch.delenv("SBNKIT_DATA", raising=False)
    roots = (tmp_path / "system", tmp_path / "cache")
    monkeypatch.setattr(data_lib, "DEFAULT_ROOTS", roots)
    return roots


def test_lookup_order(tmp_path, monkeypatch, no_defaults):
    system, cache = no_defaults
    write_fake_mnist(cache / "fashion-mnist", seed=3)
    assert data_lib.find_files("fashion_mnist")[0].parent == cache / "fashion-mnist"
    write_fake_mnist(system / "fashion-mnist", seed=2)
    assert data_lib.find_files("fashion_mnist")[0].parent == system / "fashion-mnist"
    env = tmp_path / "env"
    write_fake_mnist(env, seed=1)
    monkeypatch.setenv("SBNKIT_DATA", str(env))
    assert data_lib.find_files("fashion_mnist", "test")[0].parent == env
    write_fake_mnist(env / "fashion-mnist", seed=4)
    assert data_lib.find_files("fashion_mnist")[0].parent == env / "fashion-mnist"
    # MNIST shares the file names, so it is never read from the flat $SBNKIT_DATA folder.
    with pytest.raises(UserError, match="MNIST train files not found"):
        data_lib.find_files("mnist")
    explicit = tmp_path / "explicit"
    write_fake_mnist(explicit, seed=5)
    assert data_lib.find_files("mnist", root=explicit)[0].parent == explicit
    assert data_lib.find_files("fashion_mnist", root=explicit)[0].parent == explicit


def test_lookup_prefers_gz_and_accepts_raw(no_defaults):
    system, _ = no_defaults
    write_fake_mnist(system / "fashion-mnist", compress=False)
    paths = data_lib.find_files("fashion_mnist")
    assert [p.name for p in paths] == ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    assert data_lib.load("fashion_mnist", "test")[0].shape == (20, 1, 28, 28)


def test_missing_data_message(no_defaults):
    with pytest.raises(UserError) as info:
        data_lib.load("fashion_mnist")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "SBNKIT_DATA" in message
    assert "\n" not in message


def test_bad_labels_and_mismatched_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("SBNKIT_DATA", str(tmp_path))
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(40, 10, np.uint8))
    with pytest.raises(UserError, match=r"labels must lie in \[0, 10\)"):
        data_lib.load("fashion_mnist")
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8))
    with pytest.raises(UserError, match="40 images .* 39 labels"):
        data_lib.load("fashion_mnist")
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((40, 27, 28), np.uint8))
    with pytest.raises(UserError, match="expected uint8"):
        data_lib.load("fashion_mnist")


def test_unknown_names():
    with pytest.raises(UserError, match="unknown data set"):
        data_lib.load("imagenet")
    with pytest.raises(UserError, match="unknown split"):
        data_lib.load("toy2d", "valid")


def test_toy2d_is_the_psa_toy_set_with_class_indices():
    x, signs = data_lib.make_toy(100, seed=1, dtype=torch.float32)
    xt, yt = data_lib.load("toy2d", "train")
    assert xt.dtype == torch.float32 and torch.equal(xt, x)
    assert torch.equal(yt, (signs > 0).long())


def test_augmentations():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5) + 1
    flipped = data_lib.augment.random_flip(x.repeat(50, 1, 1, 1), gen)
    same = (flipped == x.repeat(50, 1, 1, 1)).flatten(1).all(1)
    mirrored = (flipped == x.flip(3).repeat(50, 1, 1, 1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 90
    crops = data_lib.augment.random_crop(x.repeat(200, 1, 1, 1), 1, gen)
    assert crops.shape == (400, 1, 4, 5)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    windows = {(dy, dx) for dy in range(3) for dx in range(3)}
    seen = set()
    for i in range(400):
        src = padded[i % 2, 0]
        hits = [
            (dy, dx)
            for dy, dx in windows
            if torch.equal(src[dy : dy + 4, dx : dx + 5], crops[i, 0])
        ]
        assert hits
        seen.update(hits)
    assert seen == windows
    aug = data_lib.augmenter("flipcrop", 2, gen)
    assert aug(torch.randn(3, 3, 8, 8)).shape == (3, 3, 8, 8)
    assert data_lib.augmenter("none") is None
    with pytest.raises(UserError, match="unknown augmentation"):
        data_lib.augmenter("rotate")


def test_batches_cover_the_data_and_reshuffle():
    x = torch.arange(10, dtype=torch.float32)[:, None]
    y = torch.arange(10)
    plain = list(data_lib.Batches(x, y, 4))
    assert [len(b[1]) for b in plain] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in plain]), y)
    gen = torch.Generator().manual_seed(0)
    batches = data_lib.Batches(x, y, 4, shuffle=True, generator=gen, drop_last=True)
    assert len(batches) == 2
    first, second = [torch.cat([b[1] for b in batches]) for _ in range(2)]
    assert len(first) == 8 and len(set(first.tolist())) == 8 and not torch.equal(first, second)
    for xb, yb in batches:
        assert torch.equal(xb[:, 0].long(), yb)
    assert len(list(data_lib.Batches(x[:3], y[:3], 4, drop_last=True))) == 1


def test_split_validation_is_seeded():
    x, y = torch.randn(100, 2), torch.arange(100)
    (xt, yt), (xv, yv) = data_lib.split_validation(x, y, 0.2, seed=3)
    assert len(yv) == 20 and len(yt) == 80
    assert sorted(torch.cat([yt, yv]).tolist()) == list(range(100))
    assert torch.equal(yv, data_lib.split_validation(x, y, 0.2, seed=3)[1][1])
    with pytest.raises(UserError, match="validation fraction"):
        data_lib.split_validation(x, y, 1.0)


def test_an_explicit_data_folder_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    """$SBNKIT_DATA naming a missing folder never falls back to another location."""
    write_fake_mnist(tmp_path / "cache" / "fashion-mnist")
    monkeypatch.setattr(data_lib, "DEFAULT_ROOTS", (tmp_path / "cache",))
    monkeypatch.setenv("SBNKIT_DATA", str(tmp_path / "missing"))
    with pytest.raises(UserError, match=r"SBNKIT_DATA=.*missing is not a folder"):
        data_lib.load("fashion_mnist")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SBNKIT_DATA", str(tmp_path / "file"))
    with pytest.raises(UserError, match="is not a folder"):
        data_lib.find_files("fashion_mnist")
    monkeypatch.delenv("SBNKIT_DATA")
    assert data_lib.find_files("fashion_mnist")[0].parent == tmp_path / "cache" / "fashion-mnist"
