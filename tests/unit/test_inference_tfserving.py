"""TF Serving request builders and response parsers, without a server."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import any_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from services.inference import tfserving
from services.inference.errors import ModelResponseError
from services.inference.model import Signature, TensorSpec, VersionStatus


def _windows(batch: int) -> np.ndarray:
    return np.arange(batch * 128 * 9, dtype=np.float32).reshape(batch, 128, 9) / 1000


def test_predict_request_carries_the_batch_as_float32_tensor_content() -> None:
    windows = _windows(3)
    request = tfserving.predict_request(windows, tfserving.model_spec("har", "serving_default"))
    assert request.model_spec.name == "har"
    assert request.model_spec.signature_name == "serving_default"
    assert not request.model_spec.HasField("version")
    assert request.model_spec.version_label == ""
    assert list(request.inputs) == ["window"]
    tensor = request.inputs["window"]
    assert tensor.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in tensor.tensor_shape.dim] == [3, 128, 9]
    assert not tensor.float_val  # bytes, not per-element values
    assert tensor.tensor_content == windows.astype("<f4").tobytes()
    assert len(tensor.tensor_content) == 3 * 128 * 9 * 4


def test_predict_request_converts_float64_input_to_float32() -> None:
    request = tfserving.predict_request(_windows(1).astype(np.float64), tfserving.model_spec("har"))
    decoded = np.frombuffer(request.inputs["window"].tensor_content, dtype="<f4")
    np.testing.assert_array_equal(decoded, _windows(1).ravel())


def test_version_or_label_in_the_model_spec() -> None:
    pinned = tfserving.model_spec("har", "serving_default", version=3)
    assert pinned.HasField("version") and pinned.version.value == 3
    assert pinned.version_label == ""
    labelled = tfserving.model_spec("har", "serving_default", version_label="stable")
    assert labelled.version_label == "stable"
    assert not labelled.HasField("version")
    with pytest.raises(ValueError):
        tfserving.model_spec("har", version=1, version_label="stable")


def test_predict_request_rejects_unbatched_windows() -> None:
    with pytest.raises(ValueError):
        tfserving.predict_request(_windows(1)[0], tfserving.model_spec("har"))


def _response(
    probs: np.ndarray, fingerprints: list[bytes], version: int
) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "har"
    response.model_spec.version.value = version
    response.outputs["probabilities"].CopyFrom(tfserving.float_tensor(probs))
    fp = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(fingerprints))]
        ),
        string_val=fingerprints,
    )
    response.outputs["preprocessing_fingerprint"].CopyFrom(fp)
    return response


def test_parse_predict_response() -> None:
    probs = np.array([[0.1, 0.2, 0.3, 0.1, 0.2, 0.1], [0.9, 0.02, 0.02, 0.02, 0.02, 0.02]], "f4")
    output = tfserving.parse_predict_response(_response(probs, [b"abc", b"abc"], 4))
    np.testing.assert_array_equal(output.probabilities, probs)
    assert output.probabilities.dtype == np.float32
    assert output.fingerprints == ("abc", "abc")
    assert output.version == 4


def test_parse_predict_response_with_float_val() -> None:
    # TF Serving may answer with per-element values instead of tensor_content.
    probs = np.full((2, 6), 1 / 6, dtype=np.float32)
    response = _response(probs, [b"x", b"x"], 1)
    tensor = response.outputs["probabilities"]
    tensor.ClearField("tensor_content")
    tensor.float_val.extend(probs.ravel().tolist())
    np.testing.assert_allclose(tfserving.parse_predict_response(response).probabilities, probs)


def test_parse_predict_response_lacking_an_output() -> None:
    response = _response(np.zeros((1, 6), "f4"), [b"x"], 1)
    del response.outputs["preprocessing_fingerprint"]
    with pytest.raises(ModelResponseError, match="preprocessing_fingerprint"):
        tfserving.parse_predict_response(response)


def test_parse_predict_response_with_wrong_size() -> None:
    response = _response(np.zeros((2, 6), "f4"), [b"x", b"x"], 1)
    response.outputs["probabilities"].tensor_shape.dim[0].size = 3
    with pytest.raises(ModelResponseError):
        tfserving.parse_predict_response(response)


def test_status_request_and_response() -> None:
    request = tfserving.status_request("har", 2)
    assert request.model_spec.name == "har" and request.model_spec.version.value == 2
    assert not tfserving.status_request("har").model_spec.HasField("version")
    response = get_model_status_pb2.GetModelStatusResponse()
    v1 = response.model_version_status.add(
        version=1, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
    )
    v1.status.error_message = ""
    v2 = response.model_version_status.add(
        version=2, state=get_model_status_pb2.ModelVersionStatus.LOADING
    )
    assert tfserving.parse_status_response(response) == [
        VersionStatus(1, "AVAILABLE"),
        VersionStatus(2, "LOADING"),
    ]
    assert v2.state == 20


def _tensor_info(dtype: int, shape: list[int]) -> meta_graph_pb2.TensorInfo:
    return meta_graph_pb2.TensorInfo(
        name="x:0",
        dtype=dtype,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in shape]
        ),
    )


def test_metadata_request_and_signature_parsing() -> None:
    request = tfserving.metadata_request(tfserving.model_spec("har", "serving_default", 1))
    assert list(request.metadata_field) == ["signature_def"]
    assert request.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    sig = signatures.signature_def["serving_default"]
    sig.inputs["window"].CopyFrom(_tensor_info(types_pb2.DT_FLOAT, [-1, 128, 9]))
    sig.outputs["probabilities"].CopyFrom(_tensor_info(types_pb2.DT_FLOAT, [-1, 6]))
    sig.outputs["preprocessing_fingerprint"].CopyFrom(_tensor_info(types_pb2.DT_STRING, [-1]))
    packed = any_pb2.Any()
    packed.Pack(signatures)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.metadata["signature_def"].CopyFrom(packed)
    assert tfserving.parse_metadata_response(response, "serving_default") == Signature(
        name="serving_default",
        inputs={"window": TensorSpec("DT_FLOAT", (-1, 128, 9))},
        outputs={
            "probabilities": TensorSpec("DT_FLOAT", (-1, 6)),
            "preprocessing_fingerprint": TensorSpec("DT_STRING", (-1,)),
        },
    )
    with pytest.raises(ModelResponseError, match="no signature 'other'"):
        tfserving.parse_metadata_response(response, "other")
