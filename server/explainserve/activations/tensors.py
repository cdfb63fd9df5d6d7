"""Tensors on the wire: raw little-endian bytes, a dtype name and a shape (like the Open Inference
Protocol's raw tensor contents), so any client decodes them with its byte-buffer API."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from explainserve.errors import InvalidArgument, quote

#: Bytes per element of every supported dtype, in the order error messages list them.
ITEMSIZE: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class RawTensor:
    """`shape` elements of `dtype`, row-major, little-endian, in `data`."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes


def check_dtype(name: str, field: str) -> str:
    """The dtype `name` ("" = float32); InvalidArgument names the supported ones."""
    if name == "":
        return "float32"
    if name not in ITEMSIZE:
        raise InvalidArgument(
            f"unsupported dtype '{quote(name)}': choose one of {', '.join(ITEMSIZE)}", field=field
        )
    return name


def encode(values: NDArray[np.float32], dtype: str) -> RawTensor:
    """`values` as raw bytes of `dtype`; float16 and bfloat16 round to nearest even (values
    beyond float16's range become infinities)."""
    x = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "float32":
        data = x.astype("<f4", copy=False).tobytes()
    elif dtype == "float16":
        with np.errstate(over="ignore"):
            data = x.astype("<f2").tobytes()
    elif dtype == "bfloat16":
        bits = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy()
        data = bits.astype("<i2", copy=False).tobytes()
    else:
        raise InvalidArgument(f"unsupported dtype '{quote(dtype)}'")
    return RawTensor(dtype=dtype, shape=tuple(int(d) for d in x.shape), data=data)


def decode(tensor: RawTensor, field: str) -> NDArray[np.float32]:
    """A float32 array of the tensor's values (an empty dtype means float32); InvalidArgument when
    dtype, shape and byte count do not fit together."""
    dtype = check_dtype(tensor.dtype, f"{field}.dtype")
    count = math.prod(tensor.shape)
    expected = count * ITEMSIZE[dtype]
    if len(tensor.data) != expected:
        raise InvalidArgument(
            f"{field}.data has {len(tensor.data)} bytes; shape {quote(list(tensor.shape))} of "
            f"{dtype} needs {expected}",
            field=f"{field}.data",
        )
    if dtype == "float32":
        flat = np.frombuffer(tensor.data, dtype="<f4").astype(np.float32)
    elif dtype == "float16":
        flat = np.frombuffer(tensor.data, dtype="<f2").astype(np.float32)
    else:
        flat = (np.frombuffer(tensor.data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return flat.reshape(tensor.shape)
