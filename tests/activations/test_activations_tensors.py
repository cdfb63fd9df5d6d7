"""Raw little-endian tensors: encoding, decoding as a client in another language would, errors."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from explainserve.activations.tensors import RawTensor, check_dtype, decode, encode
from explainserve.errors import InvalidArgument

VALUES = np.asarray(
    [[0.0, -0.0, 1.0, -2.5], [1e-8, 65504.0, 3.14159265, -1e30], [np.inf, -np.inf, 1.1, 7.0]],
    dtype=np.float32,
)


def test_float32_is_little_endian_ieee() -> None:
    t = encode(VALUES, "float32")
    assert (t.dtype, t.shape) == ("float32", (3, 4))
    assert t.data == struct.pack("<12f", *VALUES.ravel().tolist())
    np.testing.assert_array_equal(decode(t, "t"), VALUES)


def test_float16_is_numpy_half_little_endian() -> None:
    t = encode(VALUES, "float16")
    with np.errstate(over="ignore"):
        expected = VALUES.astype("<f2")
    assert t.data == expected.tobytes()
    np.testing.assert_array_equal(decode(t, "t"), expected.astype(np.float32))


def test_bfloat16_is_the_upper_half_rounded_to_nearest_even() -> None:
    one = 1.0
    halfway_down = 1.0 + 2.0**-8  # between 1.0 (even) and 1.0078125: goes to 1.0
    halfway_up = 1.0 + 3 * 2.0**-8  # between 1.0078125 (odd) and 1.015625: goes up
    x = np.asarray([one, halfway_down, halfway_up, -2.0, np.nan], dtype=np.float32)
    t = encode(x, "bfloat16")
    bits = struct.unpack("<5H", t.data)
    assert bits[:4] == (0x3F80, 0x3F80, 0x3F82, 0xC000)
    # A client's decoding: the 16 bits are the high half of a binary32 (Go: u << 16).
    as_f32 = [struct.unpack("<f", struct.pack("<I", b << 16))[0] for b in bits]
    assert as_f32[:4] == [1.0, 1.0, 1.015625, -2.0]
    assert np.isnan(as_f32[4])
    # The recipe documented in the proto for numpy.
    documented = (np.frombuffer(t.data, "<u2").astype("<u4") << 16).view("<f4")
    np.testing.assert_array_equal(documented[:4], decode(t, "t")[:4])
    rounded = torch.from_numpy(VALUES).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(decode(encode(VALUES, "bfloat16"), "t"), rounded)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_keeps_shape(dtype: str) -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    t = encode(x, dtype)
    assert t.shape == (2, 3, 4)
    assert len(t.data) == 24 * (4 if dtype == "float32" else 2)
    np.testing.assert_array_equal(decode(t, "t"), x)  # small integers are exact in every dtype


def test_empty_dtype_means_float32() -> None:
    assert check_dtype("", "dtype") == "float32"
    t = RawTensor("", (2,), struct.pack("<2f", 1.0, 2.0))
    np.testing.assert_array_equal(decode(t, "t"), [1.0, 2.0])


@pytest.mark.parametrize("dtype", ["int8", "float64", "FP32", "fp16"])
def test_unsupported_dtype(dtype: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_dtype(dtype, "dtype")
    assert err.value.message == (
        f"unsupported dtype '{dtype}': choose one of float32, float16, bfloat16"
    )
    assert err.value.field == "dtype"


def test_byte_count_must_match_the_shape() -> None:
    with pytest.raises(InvalidArgument) as err:
        decode(RawTensor("float16", (2, 3), b"\x00" * 10), "activations")
    assert err.value.message == "activations.data has 10 bytes; shape [2, 3] of float16 needs 12"
    assert err.value.field == "activations.data"
