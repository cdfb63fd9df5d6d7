"""`explainserve.v1.Tensor` <-> numpy: the byte layout the proto documents (row-major,
little-endian; float32, float16 or bfloat16)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from explainserve_client.v1 import explain_pb2 as pb

#: The element types a Tensor carries, and their little-endian numpy storage type.
_STORAGE: dict[str, np.dtype[np.generic]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
}


def decode_tensor(tensor: pb.Tensor) -> npt.NDArray[np.floating]:
    """The tensor as a numpy array of its shape: float32 for "float32" and "bfloat16" (a bfloat16
    value is exactly a float32 whose low 16 bits are zero, so nothing is lost), float16 for
    "float16". Raises ValueError on an unknown dtype or a byte count that does not fit the shape.
    """
    storage = _STORAGE.get(tensor.dtype)
    if storage is None:
        raise ValueError(f"unknown tensor dtype {tensor.dtype!r}; expected one of {list(_STORAGE)}")
    shape = tuple(int(d) for d in tensor.shape)
    count = int(np.prod(shape, dtype=np.int64))
    if len(tensor.data) != count * storage.itemsize:
        raise ValueError(
            f"tensor of shape {list(shape)} and dtype {tensor.dtype} needs "
            f"{count * storage.itemsize} bytes, got {len(tensor.data)}"
        )
    raw = np.frombuffer(tensor.data, dtype=storage)
    if tensor.dtype == "bfloat16":
        # The bfloat16 bits are the upper half of the float32 value's bits.
        values: npt.NDArray[np.floating] = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        values = raw.astype(np.float32 if tensor.dtype == "float32" else np.float16)
    # astype above copies into native byte order, so the array owns writable memory.
    return values.reshape(shape)


def encode_tensor(array: npt.ArrayLike, dtype: str = "float32") -> pb.Tensor:
    """`array` as a Tensor of `dtype` ("float32" or "float16"; bfloat16 is the server's output
    type only, since numpy has no bfloat16 to round with)."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"can encode float32 or float16, not {dtype!r}")
    values = np.ascontiguousarray(np.asarray(array), dtype=_STORAGE[dtype])
    return pb.Tensor(dtype=dtype, shape=list(values.shape), data=values.tobytes())
