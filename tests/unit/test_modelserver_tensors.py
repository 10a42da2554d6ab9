"""numpy ⇄ TensorProto conversion (protobuf classes only, no graph)."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2

from services.modelserver.errors import TensorConversionError
from services.modelserver.tensors import (
    dtype_name,
    shape_proto,
    shape_tuple,
    to_ndarray,
    to_tensor_proto,
)


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(0).normal(size=(4, 128, 9)).astype(np.float32),
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.arange(-5, 5, dtype=np.int32),
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.array([True, False, True]),
        np.array([1, 2], dtype=np.uint8),
        np.array([1.5, -2.0], dtype=np.float16),
        np.zeros((0, 128, 9), dtype=np.float32),
        np.float32(3.5),
    ],
    ids=lambda a: f"{a.dtype}{a.shape}",
)
def test_numeric_round_trip(array: np.ndarray) -> None:
    proto = to_tensor_proto(array)
    assert len(proto.tensor_content) == array.nbytes
    back = to_ndarray(proto)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_big_endian_and_non_contiguous_input_encode_as_little_endian() -> None:
    array = np.arange(6, dtype=">f4").reshape(2, 3)
    np.testing.assert_array_equal(to_ndarray(to_tensor_proto(array)), array)
    strided = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2]
    np.testing.assert_array_equal(to_ndarray(to_tensor_proto(strided)), strided)


def test_strings_travel_as_string_val() -> None:
    proto = to_tensor_proto(np.array(["ab", "ü"]))
    assert proto.dtype == types_pb2.DT_STRING
    assert list(proto.string_val) == [b"ab", "ü".encode()]
    back = to_ndarray(proto)
    assert back.dtype == object
    assert back.tolist() == [b"ab", "ü".encode()]
    objects = np.array([[b"x", b"y"]], dtype=object)
    assert to_ndarray(to_tensor_proto(objects)).tolist() == [[b"x", b"y"]]


def test_value_fields_and_scalar_broadcast_are_read() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto((2, 2)))
    proto.float_val.extend([1, 2, 3, 4])
    np.testing.assert_array_equal(to_ndarray(proto), [[1, 2], [3, 4]])
    filled = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, tensor_shape=shape_proto((3,)))
    filled.int64_val.append(7)
    np.testing.assert_array_equal(to_ndarray(filled), [7, 7, 7])


def test_inconsistent_tensors_are_rejected() -> None:
    short = to_tensor_proto(np.zeros((2, 3), np.float32))
    short.tensor_shape.dim[0].size = 3
    with pytest.raises(TensorConversionError, match="bytes"):
        to_ndarray(short)
    values = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto((3,)))
    values.float_val.extend([1, 2])
    with pytest.raises(TensorConversionError, match="2 values"):
        to_ndarray(values)
    unknown = tensor_pb2.TensorProto(dtype=types_pb2.DT_RESOURCE, tensor_shape=shape_proto(()))
    with pytest.raises(TensorConversionError, match="DT_RESOURCE"):
        to_ndarray(unknown)
    with pytest.raises(TensorConversionError, match="fully known"):
        to_ndarray(
            tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto((-1,)))
        )
    with pytest.raises(TensorConversionError, match="complex"):
        to_tensor_proto(np.zeros(2, np.complex64))


def test_shapes_and_dtype_names() -> None:
    assert shape_tuple(shape_proto((-1, 128, 9))) == (-1, 128, 9)
    assert shape_tuple(shape_proto(None)) is None
    assert dtype_name(types_pb2.DT_FLOAT) == "float32"
    assert dtype_name(types_pb2.DT_STRING) == "string"
