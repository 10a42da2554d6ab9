"""The development model server against TF Serving's gRPC and REST API, as a subprocess."""

from __future__ import annotations

import http.client
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from services.modelserver.process import ModelServerProcess
from services.modelserver.tensors import to_ndarray, to_tensor_proto
from shared.dsp import PreprocessingConfig, StreamingPreprocessor

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_V1 = REPO_ROOT / "models" / "har" / "1"
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


@pytest.fixture(scope="module")
def windows(hapt_cache) -> np.ndarray:  # type: ignore[no-untyped-def]
    recording = hapt_cache.load(subjects=[2])[0]
    preprocessor = StreamingPreprocessor(PreprocessingConfig())
    _, found = preprocessor.process(preprocessor.new_state(), recording.samples)
    return np.ascontiguousarray(found.data[:200], dtype=np.float32)


@pytest.fixture(scope="module")
def channel(model_server: ModelServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(model_server.grpc_target) as ch:
        yield ch


def predict_request(
    x: np.ndarray, name: str = "har", input_name: str = "window", version: int | None = None
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[input_name].CopyFrom(to_tensor_proto(x))
    return request


def rpc_error(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value  # type: ignore[return-value]


def test_predict_matches_the_saved_model_in_process(
    channel: grpc.Channel, windows: np.ndarray
) -> None:
    from services.training.evaluate import SavedModelPredictor

    assert len(windows) == 200
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(predict_request(windows), timeout=30)

    expected = SavedModelPredictor(MODEL_V1).predict_proba(windows)
    probabilities = to_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (200, 6)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    fingerprints = to_ndarray(response.outputs["preprocessing_fingerprint"])
    assert set(fingerprints.tolist()) == {PreprocessingConfig().fingerprint.encode()}
    assert response.model_spec.name == "har"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_tensorflow_thread_settings_serve_the_same_predictions(
    tmp_path: Path, windows: np.ndarray
) -> None:
    # The local pipeline runs the server with one thread per op (LOCAL_MODELSERVER_ENV); as
    # TF Serving's --tensorflow_intra_op_parallelism, it changes the threads, not the answers.
    from services.training.evaluate import SavedModelPredictor

    base = tmp_path / "har"
    shutil.copytree(MODEL_V1, base / "1")
    env = {
        "HARSTREAM_MODELSERVER_TENSORFLOW_INTRA_OP_PARALLELISM": "1",
        "HARSTREAM_MODELSERVER_TENSORFLOW_INTER_OP_PARALLELISM": "2",
    }
    with (
        ModelServerProcess(base, log_path=tmp_path / "log", extra_env=env) as server,
        grpc.insecure_channel(server.grpc_target) as ch,
    ):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        response = stub.Predict(predict_request(windows[:64]), timeout=30)
    expected = SavedModelPredictor(MODEL_V1).predict_proba(windows[:64])
    np.testing.assert_allclose(to_ndarray(response.outputs["probabilities"]), expected, atol=1e-5)
    assert "TensorFlow threads: intra-op 1, inter-op 2" in (tmp_path / "log").read_text()


def test_output_filter_returns_only_the_named_output(
    channel: grpc.Channel, windows: np.ndarray
) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_request(windows[:3])
    request.output_filter.append("probabilities")
    assert list(stub.Predict(request, timeout=30).outputs) == ["probabilities"]
    request.output_filter.append("logits")
    error = rpc_error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "logits" in error.details()


def test_bad_requests_get_tf_serving_status_codes(
    channel: grpc.Channel, windows: np.ndarray
) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    wrong_name = rpc_error(stub.Predict, predict_request(windows[:2], input_name="x"))
    assert wrong_name.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Missing but required: {window}" in wrong_name.details()

    wrong_shape = rpc_error(stub.Predict, predict_request(windows[:2, :, :8].copy()))
    assert wrong_shape.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "[-1, 128, 9]" in wrong_shape.details()

    wrong_dtype = rpc_error(stub.Predict, predict_request(windows[:2].astype(np.float64)))
    assert wrong_dtype.code() == grpc.StatusCode.INVALID_ARGUMENT

    unknown_model = rpc_error(stub.Predict, predict_request(windows[:2], name="nope"))
    assert unknown_model.code() == grpc.StatusCode.NOT_FOUND
    assert unknown_model.details() == "Servable not found for request: Latest(nope)"

    unknown_version = rpc_error(stub.Predict, predict_request(windows[:2], version=99))
    assert unknown_version.code() == grpc.StatusCode.NOT_FOUND
    assert "Specific(har, 99)" in unknown_version.details()

    signature = predict_request(windows[:2])
    signature.model_spec.signature_name = "nope"
    assert rpc_error(stub.Predict, signature).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_status_and_metadata(channel: grpc.Channel) -> None:
    status_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "har"
    statuses = status_stub.GetModelStatus(request, timeout=10).model_version_status
    assert [(s.version, s.state, s.status.error_code) for s in statuses] == [(1, AVAILABLE, 0)]
    request.model_spec.name = "nope"
    assert rpc_error(status_stub.GetModelStatus, request).code() == grpc.StatusCode.NOT_FOUND

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    meta = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta.model_spec.name = "har"
    response = stub.GetModelMetadata(meta, timeout=10)
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(defs)
    serving = defs.signature_def["serving_default"]
    assert list(serving.inputs) == ["window"]
    assert [d.size for d in serving.inputs["window"].tensor_shape.dim] == [-1, 128, 9]
    assert set(serving.outputs) == {"probabilities", "preprocessing_fingerprint"}
    assert response.model_spec.version.value == 1


def test_rest_status_metrics_and_predict(
    model_server: ModelServerProcess, windows: np.ndarray
) -> None:
    with urllib.request.urlopen(f"{model_server.rest_url}/v1/models/har", timeout=10) as r:
        assert json.load(r) == {
            "model_version_status": [
                {
                    "version": "1",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }
    with urllib.request.urlopen(f"{model_server.rest_url}/v1/models/har/versions/1") as r:
        assert json.load(r)["model_version_status"][0]["state"] == "AVAILABLE"
    with urllib.request.urlopen(f"{model_server.rest_url}/v1/models/har/metadata") as r:
        metadata = json.load(r)
    assert metadata["model_spec"]["version"] == "1"
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["window"]["dtype"] == "DT_FLOAT"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{model_server.rest_url}/v1/models/nope", timeout=10)
    assert missing.value.code == 404
    assert "error" in json.load(missing.value)

    body = json.dumps({"instances": windows[:2].tolist()}).encode()
    post = urllib.request.Request(f"{model_server.rest_url}/v1/models/har:predict", data=body)
    with urllib.request.urlopen(post, timeout=30) as r:
        predictions = json.load(r)["predictions"]
    assert len(predictions) == 2
    assert set(predictions[0]) == {"probabilities", "preprocessing_fingerprint"}
    assert sum(predictions[0]["probabilities"]) == pytest.approx(1.0, abs=1e-4)

    metrics_url = f"{model_server.rest_url}/monitoring/prometheus/metrics"
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    assert 'harstream_modelserver_model_version{label="latest",model="har"} 1.0' in text
    assert 'harstream_modelserver_requests_total{code="OK",method="Predict"}' in text
    assert "harstream_modelserver_batch_size_bucket" in text


def test_new_version_is_served_without_restart_and_a_broken_one_is_reported(
    tmp_path: Path, windows: np.ndarray
) -> None:
    # Its own server: the session fixture stays on version 1 for everyone else.
    base = tmp_path / "har"
    shutil.copytree(MODEL_V1, base / "1")
    with (
        ModelServerProcess(base, poll_interval_s=0.3, log_path=tmp_path / "log") as server,
        grpc.insecure_channel(server.grpc_target) as ch,
    ):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        status_stub = model_service_pb2_grpc.ModelServiceStub(ch)
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "har"

        def states() -> dict[int, tuple[int, int]]:
            response = status_stub.GetModelStatus(status_request, timeout=10)
            return {
                s.version: (s.state, s.status.error_code) for s in response.model_version_status
            }

        # as the exporter does: write a hidden staging dir, then rename it into place
        shutil.copytree(MODEL_V1, base / ".2.partial")
        time.sleep(1.0)
        assert 2 not in states()
        (base / ".2.partial").rename(base / "2")
        deadline = time.monotonic() + 20
        while states().get(1, (0, 0))[0] != END and time.monotonic() < deadline:
            time.sleep(0.2)
        assert states() == {2: (AVAILABLE, 0), 1: (END, 0)}
        response = stub.Predict(predict_request(windows[:4]), timeout=30)
        assert response.model_spec.version.value == 2
        assert rpc_error(stub.Predict, predict_request(windows[:4], version=1)).code() == (
            grpc.StatusCode.NOT_FOUND
        )

        # a broken version 3 is reported with its error and version 2 keeps serving
        broken = base / ".3.partial"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a protobuf")
        broken.rename(base / "3")
        deadline = time.monotonic() + 20
        while 3 not in states() or states()[3][0] != END:
            assert time.monotonic() < deadline, states()
            time.sleep(0.2)
        assert states()[3][1] != 0
        assert states()[2] == (AVAILABLE, 0)
        assert stub.Predict(predict_request(windows[:4]), timeout=30).model_spec.version.value == 2
        assert server.stop() == 0


def _raw_post(url: str, path: str, body: bytes, content_length: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    """POST with a Content-Length header exactly as given (urllib would compute it)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", content_length)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("content_length", ["abc", "-1", "+5", "1_0"])
def test_rest_bad_content_length_is_a_400_not_a_dropped_connection(
    model_server: ModelServerProcess, content_length: str
) -> None:
    status, body = _raw_post(model_server.rest_url, "/v1/models/har:predict", b"", content_length)
    assert status == 400
    assert "Content-Length" in body["error"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # RecursionError in json
        b'{"instances": [' + b"9" * 400 + b"]}",  # OverflowError converting to float32
        b"{not json",
    ],
)
def test_rest_hostile_bodies_are_400_json_errors(
    model_server: ModelServerProcess, body: bytes
) -> None:
    status, answer = _raw_post(
        model_server.rest_url, "/v1/models/har:predict", body, str(len(body))
    )
    assert status == 400
    assert isinstance(answer["error"], str)
