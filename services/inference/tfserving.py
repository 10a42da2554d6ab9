"""Pure builders and parsers of TF Serving's protos (``tensorflow-serving-api``), apart from
the gRPC client so they are tested without a server. Only TF Serving's public API is used:
what works here works against the ``tensorflow/serving`` image.

Importing the ``*_pb2`` modules imports TensorFlow (~2 s): keep this module out of the pure
core.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # type: ignore[import-untyped]
from tensorflow.core.protobuf import meta_graph_pb2  # type: ignore[import-untyped]
from tensorflow_serving.apis import (  # type: ignore[import-untyped]
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from services.inference.errors import ModelResponseError
from services.inference.model import (
    FINGERPRINT_KEY,
    INPUT_KEY,
    PROBABILITIES_KEY,
    ModelOutput,
    Signature,
    TensorSpec,
    VersionStatus,
)

#: ``GetModelMetadataRequest.metadata_field`` that returns the SignatureDefMap.
SIGNATURE_DEF_FIELD = "signature_def"


def model_spec(
    name: str,
    signature_name: str | None = None,
    version: int | None = None,
    version_label: str | None = None,
) -> model_pb2.ModelSpec:
    """A ModelSpec naming one version, a labelled version, or (neither) the newest."""
    if version is not None and version_label is not None:
        raise ValueError("give a version or a version label, not both")
    spec = model_pb2.ModelSpec(name=name)
    if signature_name is not None:
        spec.signature_name = signature_name
    if version is not None:
        spec.version.value = version
    elif version_label is not None:
        spec.version_label = version_label
    return spec


def float_tensor(array: npt.ArrayLike) -> tensor_pb2.TensorProto:
    """A DT_FLOAT TensorProto carrying the array's little-endian bytes in ``tensor_content``
    (no per-element ``float_val`` encoding: faster to build and to parse)."""
    data = np.ascontiguousarray(array, dtype="<f4")
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(n)) for n in data.shape]
        ),
        tensor_content=data.tobytes(),
    )


def predict_request(
    windows: npt.NDArray[np.float32],
    spec: model_pb2.ModelSpec,
) -> predict_pb2.PredictRequest:
    """``Predict`` of a (B, 128, 9) float32 batch as input ``window``; all outputs returned."""
    if windows.ndim != 3:
        raise ValueError(f"windows must be (batch, 128, 9), got shape {windows.shape}")
    request = predict_pb2.PredictRequest()
    request.model_spec.CopyFrom(spec)
    request.inputs[INPUT_KEY].CopyFrom(float_tensor(windows))
    return request


def tensor_shape(tensor: tensor_pb2.TensorProto) -> tuple[int, ...]:
    return tuple(int(d.size) for d in tensor.tensor_shape.dim)


def float_array(tensor: tensor_pb2.TensorProto) -> npt.NDArray[np.float32]:
    """A DT_FLOAT TensorProto as numpy, whether the server filled ``tensor_content`` or
    ``float_val`` (TF Serving uses either, depending on version and tensor)."""
    if tensor.dtype != types_pb2.DT_FLOAT:
        raise ModelResponseError(f"expected DT_FLOAT, got {types_pb2.DataType.Name(tensor.dtype)}")
    shape = tensor_shape(tensor)
    if tensor.tensor_content:
        flat = np.frombuffer(tensor.tensor_content, dtype="<f4")
    else:
        flat = np.asarray(tensor.float_val, dtype=np.float32)
    size = int(np.prod(shape)) if shape else 1
    if flat.size == 1 and size > 1:
        flat = np.full(size, flat[0], dtype=np.float32)  # a splat: one value repeated
    if flat.size != size:
        raise ModelResponseError(f"tensor of shape {shape} carries {flat.size} values")
    return flat.reshape(shape).astype(np.float32)


def string_list(tensor: tensor_pb2.TensorProto) -> tuple[str, ...]:
    if tensor.dtype != types_pb2.DT_STRING:
        raise ModelResponseError(f"expected DT_STRING, got {types_pb2.DataType.Name(tensor.dtype)}")
    values = tuple(v.decode("utf-8", errors="replace") for v in tensor.string_val)
    shape = tensor_shape(tensor)
    size = int(np.prod(shape)) if shape else 1
    if len(values) == 1 and size > 1:
        values = values * size
    return values


def parse_predict_response(response: predict_pb2.PredictResponse) -> ModelOutput:
    """Probabilities (B, 6), fingerprints (B,) and the version that answered."""
    missing = [k for k in (PROBABILITIES_KEY, FINGERPRINT_KEY) if k not in response.outputs]
    if missing:
        raise ModelResponseError(
            f"response lacks outputs {missing} (has {sorted(response.outputs)})"
        )
    return ModelOutput(
        probabilities=float_array(response.outputs[PROBABILITIES_KEY]),
        fingerprints=string_list(response.outputs[FINGERPRINT_KEY]),
        version=int(response.model_spec.version.value),
    )


def status_request(
    name: str, version: int | None = None
) -> get_model_status_pb2.GetModelStatusRequest:
    """Status of one version, or (version None) of every version of the model.

    A version label is not resolved here on purpose: TF Serving's GetModelStatus ignores
    labels, so a labelled worker asks for all versions and lets Predict resolve the label.
    """
    return get_model_status_pb2.GetModelStatusRequest(model_spec=model_spec(name, version=version))


def parse_status_response(
    response: get_model_status_pb2.GetModelStatusResponse,
) -> list[VersionStatus]:
    state_name = get_model_status_pb2.ModelVersionStatus.State.Name
    return [
        VersionStatus(
            version=int(s.version),
            state=state_name(s.state),
            message=s.status.error_message,
        )
        for s in response.model_version_status
    ]


def metadata_request(
    spec: model_pb2.ModelSpec,
) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
    request.model_spec.CopyFrom(spec)
    # GetModelMetadata returns every signature; the signature name would only be ignored.
    request.model_spec.ClearField("signature_name")
    return request


def _tensor_spec(info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    shape: tuple[int, ...] | None
    if info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = tuple(int(d.size) for d in info.tensor_shape.dim)
    return TensorSpec(types_pb2.DataType.Name(info.dtype), shape)


def parse_metadata_response(
    response: get_model_metadata_pb2.GetModelMetadataResponse, signature_name: str
) -> Signature:
    """The named signature out of a ``signature_def`` metadata response."""
    if SIGNATURE_DEF_FIELD not in response.metadata:
        raise ModelResponseError(f"metadata lacks {SIGNATURE_DEF_FIELD!r}")
    signatures = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata[SIGNATURE_DEF_FIELD].Unpack(signatures):
        raise ModelResponseError("metadata 'signature_def' is not a SignatureDefMap")
    if signature_name not in signatures.signature_def:
        raise ModelResponseError(
            f"model has no signature {signature_name!r} (has {sorted(signatures.signature_def)})"
        )
    sig = signatures.signature_def[signature_name]
    return Signature(
        name=signature_name,
        inputs={k: _tensor_spec(v) for k, v in sig.inputs.items()},
        outputs={k: _tensor_spec(v) for k, v in sig.outputs.items()},
    )
