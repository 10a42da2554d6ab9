"""Every committed version of models/har served side by side by the dev model server, the way
TF Serving serves them under the rollout labels: same signature (``window`` →
``probabilities``, ``preprocessing_fingerprint``), same probabilities as in process."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from services.modelserver.process import ModelServerProcess
from services.modelserver.tensors import to_ndarray, to_tensor_proto
from shared.dsp import PreprocessingConfig
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

MODELS = REPO_ROOT / "models" / "har"
VERSIONS = sorted(int(p.name) for p in MODELS.iterdir() if p.name.isdigit())
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


def _config(base_path: Path, stable: int, canary: int) -> str:
    versions = "\n".join(f"        versions: {v}" for v in VERSIONS)
    return f"""model_config_list {{
  config {{
    name: "har"
    base_path: "{base_path}"
    model_platform: "tensorflow"
    model_version_policy {{
      specific {{
{versions}
      }}
    }}
    version_labels {{ key: "stable" value: {stable} }}
    version_labels {{ key: "canary" value: {canary} }}
  }}
}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServerProcess]:
    root = tmp_path_factory.mktemp("versions")
    base_path = root / "har"
    shutil.copytree(MODELS, base_path)
    config = root / "models.config"
    # the newest as stable, the one before it as canary: what the rollout will label
    config.write_text(_config(base_path, VERSIONS[-1], VERSIONS[-2]))
    with ModelServerProcess(
        base_path, "har", log_path=root / "modelserver.log", model_config_file=config
    ) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: ModelServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "har"
        stub = model_service_pb2_grpc.ModelServiceStub(ch)
        deadline = time.monotonic() + 120
        available: set[int] = set()
        while time.monotonic() < deadline and available != set(VERSIONS):
            status = stub.GetModelStatus(request, timeout=10)
            available = {s.version for s in status.model_version_status if s.state == AVAILABLE}
            if available != set(VERSIONS):
                time.sleep(0.2)
        assert available == set(VERSIONS), available
        yield ch


def _predict(
    channel: grpc.Channel, x: np.ndarray, version: int | None = None, label: str = ""
) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "har"
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    request.inputs["window"].CopyFrom(to_tensor_proto(x))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return stub.Predict(request, timeout=60)  # type: ignore[no-any-return]


def test_several_versions_are_committed() -> None:
    assert len(VERSIONS) >= 2 and VERSIONS[0] == 1


def test_every_version_is_served_with_the_same_signature(
    channel: grpc.Channel, window_sets
) -> None:  # type: ignore[no-untyped-def]
    from services.training.evaluate import SavedModelPredictor

    x = np.ascontiguousarray(window_sets["test"].x[:100], dtype=np.float32)
    fingerprint = PreprocessingConfig().fingerprint.encode()
    for version in VERSIONS:
        response = _predict(channel, x, version=version)
        probabilities = to_ndarray(response.outputs["probabilities"])
        assert probabilities.shape == (100, 6), version
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
        expected = SavedModelPredictor(MODELS / str(version)).predict_proba(x)
        np.testing.assert_allclose(probabilities, expected, atol=1e-5, err_msg=str(version))
        fingerprints = to_ndarray(response.outputs["preprocessing_fingerprint"])
        assert set(fingerprints.tolist()) == {fingerprint}, version
        assert response.model_spec.version.value == version


def test_labels_reach_their_versions(channel: grpc.Channel, window_sets) -> None:  # type: ignore[no-untyped-def]
    x = np.ascontiguousarray(window_sets["test"].x[:10], dtype=np.float32)
    assert _predict(channel, x, label="stable").model_spec.version.value == VERSIONS[-1]
    assert _predict(channel, x, label="canary").model_spec.version.value == VERSIONS[-2]
