"""numpy ⇄ ``tensorflow.TensorProto`` conversion for Predict requests and responses.

Used by the model server (and its tests and benchmark). The inference worker has its own
small float-only builders (services/inference/tfserving.py), so the production client does
not depend on development-server code. Numeric tensors travel as raw
little-endian bytes in ``tensor_content`` (much faster than ``float_val`` lists or
``tf.make_tensor_proto``); strings travel in ``string_val``. Reading accepts both forms, as
TF Serving does, including a single ``*_val`` value broadcast over the whole shape.

Only the protobuf classes are imported from TensorFlow's package (no graph code runs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from services.modelserver.errors import TensorConversionError

TensorProto = tensor_pb2.TensorProto

# DataType enum value → numpy dtype of the array we build (strings are object arrays of bytes).
NUMPY_DTYPES: dict[int, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
    types_pb2.DT_STRING: np.dtype(object),
}
TF_DTYPES: dict[np.dtype, int] = {
    dtype: enum for enum, dtype in NUMPY_DTYPES.items() if enum != types_pb2.DT_STRING
}

# Which repeated ``*_val`` field carries each dtype when ``tensor_content`` is empty.
_VALUE_FIELDS: dict[int, str] = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def dtype_name(enum: int) -> str:
    """``types_pb2.DT_FLOAT`` → ``"float32"``, ``DT_STRING`` → ``"string"`` (the names
    :mod:`services.modelserver.validation` uses)."""
    if enum == types_pb2.DT_STRING:
        return "string"
    if enum not in NUMPY_DTYPES:
        raise TensorConversionError(f"unsupported tensor dtype {types_pb2.DataType.Name(enum)}")
    return NUMPY_DTYPES[enum].name


def shape_proto(shape: Iterable[int] | None) -> tensor_shape_pb2.TensorShapeProto:
    """A TensorShapeProto; ``None`` means unknown rank, -1 an unknown dimension."""
    if shape is None:
        return tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in shape]
    return tensor_shape_pb2.TensorShapeProto(dim=dims)


def shape_tuple(proto: tensor_shape_pb2.TensorShapeProto) -> tuple[int, ...] | None:
    """Dimensions of a TensorShapeProto (-1 unknown), ``None`` for unknown rank."""
    if proto.unknown_rank:
        return None
    return tuple(int(d.size) for d in proto.dim)


def to_tensor_proto(array: np.ndarray | Iterable[bytes | str]) -> tensor_pb2.TensorProto:
    """Encode an array: numeric dtypes as ``tensor_content`` bytes, str/bytes/object arrays
    as ``string_val`` (str is UTF-8 encoded)."""
    array = np.asarray(array)
    shape = shape_proto(array.shape)
    if array.dtype.kind in "OSU":
        values = [v.encode() if isinstance(v, str) else bytes(v) for v in array.reshape(-1)]
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape)
        proto.string_val.extend(values)
        return proto
    native = array.dtype.newbyteorder("=")
    if native not in TF_DTYPES:
        raise TensorConversionError(f"cannot encode numpy dtype {array.dtype} as a tensor")
    content = np.ascontiguousarray(array, dtype=native.newbyteorder("<")).tobytes()
    return tensor_pb2.TensorProto(
        dtype=TF_DTYPES[native], tensor_shape=shape, tensor_content=content
    )


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a TensorProto; string tensors become object arrays of ``bytes``.

    Raises :class:`TensorConversionError` for unknown dtypes, unknown or negative dimensions,
    and content whose size does not match the shape.
    """
    if proto.dtype not in NUMPY_DTYPES:
        raise TensorConversionError(
            f"unsupported tensor dtype {types_pb2.DataType.Name(proto.dtype)}"
        )
    shape = shape_tuple(proto.tensor_shape)
    if shape is None or any(d < 0 for d in shape):
        raise TensorConversionError(
            f"tensor shape must be fully known, got {shape_tuple(proto.tensor_shape)}"
        )
    dtype = NUMPY_DTYPES[proto.dtype]
    count = int(np.prod(shape, dtype=np.int64))
    if proto.tensor_content and proto.dtype != types_pb2.DT_STRING:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise TensorConversionError(
                f"tensor_content has {len(proto.tensor_content)} bytes but shape {list(shape)} "
                f"of {dtype.name} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).reshape(shape)
    values = getattr(proto, _VALUE_FIELDS[proto.dtype])
    if proto.dtype == types_pb2.DT_STRING:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    elif proto.dtype == types_pb2.DT_HALF:  # half_val holds the raw 16-bit patterns
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        flat = np.asarray(values, dtype=dtype)
    if len(flat) == count:
        return flat.reshape(shape)
    if len(flat) == 1 and count > 1:  # TF fills the tensor with a lone value
        return np.full(shape, flat[0], dtype=dtype)
    if count == 0 and len(flat) == 0:
        return flat.reshape(shape)
    raise TensorConversionError(
        f"tensor has {len(flat)} values but shape {list(shape)} needs {count}"
    )


def to_ndarrays(protos: Mapping[str, tensor_pb2.TensorProto]) -> dict[str, np.ndarray]:
    """Decode a request's ``inputs`` (or a response's ``outputs``) map."""
    return {name: to_ndarray(proto) for name, proto in protos.items()}
