"""The gRPC client of TF Serving's PredictionService and ModelService (``grpc.aio``).

Thin on purpose: requests and responses are built and parsed by
:mod:`services.inference.tfserving`; gRPC failures become
:class:`~services.inference.errors.ModelServerError` with the status code's name.
"""

from __future__ import annotations

import logging

import grpc  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc  # type: ignore[import-untyped]

from services.inference import tfserving
from services.inference.errors import ModelServerError
from services.inference.model import ModelOutput, Signature, VersionStatus
from services.inference.retry import is_retriable

logger = logging.getLogger(__name__)

#: A batch of 4,096 windows is ~19 MB on the wire; gRPC's default 4 MB limit would refuse it.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _server_error(exc: grpc.aio.AioRpcError) -> ModelServerError:
    code = exc.code().name
    return ModelServerError(code, exc.details() or "", retriable=is_retriable(code))


class GrpcModelClient:
    """One channel to one TF Serving; implements :class:`services.inference.model.ModelIO`.

    Create it inside the running event loop (grpc.aio binds the channel to it).
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        signature_name: str = "serving_default",
        version: int | None = None,
        version_label: str | None = None,
        deadline_s: float = 5.0,
    ) -> None:
        self._target = target
        self._model_name = model_name
        self._signature_name = signature_name
        self._version = version
        self._spec = tfserving.model_spec(model_name, signature_name, version, version_label)
        self._deadline_s = deadline_s
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    @property
    def target(self) -> str:
        return self._target

    async def model_status(self) -> list[VersionStatus]:
        request = tfserving.status_request(self._model_name, self._version)
        try:
            response = await self._models.GetModelStatus(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as exc:
            raise _server_error(exc) from exc
        return tfserving.parse_status_response(response)

    async def signature(self) -> Signature:
        request = tfserving.metadata_request(self._spec)
        try:
            response = await self._predictions.GetModelMetadata(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as exc:
            raise _server_error(exc) from exc
        return tfserving.parse_metadata_response(response, self._signature_name)

    async def predict(self, windows: npt.NDArray[np.float32]) -> ModelOutput:
        request = tfserving.predict_request(windows, self._spec)
        try:
            response = await self._predictions.Predict(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as exc:
            raise _server_error(exc) from exc
        return tfserving.parse_predict_response(response)

    async def close(self) -> None:
        await self._channel.close()
