"""The IDX reader and writer byte for byte against hand-built files (the format of
sbnkit/data/idx.py's docstring), beside the round trips and corrupt files of test_data.py."""

import gzip
import struct

import numpy as np
import pytest

from sbnkit.data.idx import read_idx, write_idx
from sbnkit.errors import UserError

# (IDX type code, struct format of one big-endian value, numpy dtype read back)
TYPES = [
    (0x08, "B", np.uint8),
    (0x09, "b", np.int8),
    (0x0B, ">h", np.int16),
    (0x0C, ">i", np.int32),
    (0x0D, ">f", np.float32),
    (0x0E, ">d", np.float64),
]
VALUES = [1, 7, 100, 3, 0, 42]


def hand_idx(code, fmt, shape, values):
    header = bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape)
    return header + b"".join(struct.pack(fmt, v) for v in values)


@pytest.mark.parametrize("code, fmt, dtype", TYPES)
def test_read_hand_built_files_of_every_type(tmp_path, code, fmt, dtype):
    path = tmp_path / "a-idx"
    path.write_bytes(hand_idx(code, fmt, (2, 3), VALUES))
    got = read_idx(path, ndim=2)
    assert got.dtype.kind == np.dtype(dtype).kind and got.dtype.itemsize == np.dtype(dtype).itemsize
    np.testing.assert_array_equal(got, np.array(VALUES, dtype).reshape(2, 3))
    assert read_idx(path).shape == (2, 3)  # ndim=None accepts any number of dimensions


@pytest.mark.parametrize("code, fmt, dtype", TYPES)
def test_write_produces_the_hand_built_bytes(tmp_path, code, fmt, dtype):
    array = np.array(VALUES, dtype).reshape(3, 1, 2)
    write_idx(tmp_path / "a.idx", array)
    assert (tmp_path / "a.idx").read_bytes() == hand_idx(code, fmt, (3, 1, 2), VALUES)
    write_idx(tmp_path / "b.idx.gz", array)
    raw = gzip.decompress((tmp_path / "b.idx.gz").read_bytes())
    assert raw == hand_idx(code, fmt, (3, 1, 2), VALUES)


def test_compress_overrides_the_file_name(tmp_path):
    array = np.arange(6, dtype=np.uint8)
    write_idx(tmp_path / "raw.gz", array, compress=False)
    write_idx(tmp_path / "packed", array, compress=True)
    assert (tmp_path / "raw.gz").read_bytes() == hand_idx(0x08, "B", (6,), range(6))
    assert (tmp_path / "packed").read_bytes()[:2] == b"\x1f\x8b"
    for name in ("raw.gz", "packed"):
        np.testing.assert_array_equal(read_idx(tmp_path / name, ndim=1), array)


def test_an_empty_array_is_just_its_header(tmp_path):
    write_idx(tmp_path / "empty", np.zeros((0, 4), np.uint8))
    assert (tmp_path / "empty").read_bytes() == hand_idx(0x08, "B", (0, 4), [])
    assert read_idx(tmp_path / "empty", ndim=2).shape == (0, 4)


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"\x00\x00\x08\x00", "0 dimensions, expected 3"),
        (b"\x00\x01\x08\x01" + bytes(5), "bad magic"),
        (hand_idx(0x08, "B", (2, 3), VALUES), "2 dimensions, expected 3"),
        (
            hand_idx(0x0B, ">h", (2, 2, 1), [1, 2, 3]),
            "6 data bytes for shape .2, 2, 1., expected 8",
        ),
        (b"\x00\x00\x0a\x01" + bytes(5), "type code 0x0a"),
    ],
)
def test_corrupt_headers_name_the_problem(tmp_path, payload, why):
    path = tmp_path / "bad"
    path.write_bytes(payload)
    with pytest.raises(UserError, match=why):
        read_idx(path, ndim=3)
    if payload[3] == 0:
        with pytest.raises(UserError, match="0 dimensions, expected at least 1"):
            read_idx(path)


@pytest.mark.parametrize("dtype", [np.int64, np.float16, np.bool_])
def test_write_refuses_dtypes_idx_cannot_store(tmp_path, dtype):
    with pytest.raises(UserError, match="IDX cannot store"):
        write_idx(tmp_path / "x", np.zeros(3, dtype))
    assert not (tmp_path / "x").exists()
