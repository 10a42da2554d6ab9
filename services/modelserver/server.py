"""The gRPC shell: TF Serving's PredictionService and ModelService over a :class:`ModelManager`.

:class:`ServingCore` holds the request handling shared by gRPC and REST (protos in, protos
out, :class:`ServingError` for refusals); the servicers only translate errors to gRPC status.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import grpc
import numpy as np
import tensorflow as tf
from prometheus_client import CollectorRegistry
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from services.modelserver import metrics as metrics_module
from services.modelserver.config import ModelConfig, from_proto
from services.modelserver.errors import (
    Code,
    InvalidArgumentError,
    ServingError,
    UnimplementedError,
)
from services.modelserver.limits import RestLimits
from services.modelserver.manager import ModelManager
from services.modelserver.reload import ConfigFileWatcher, ConfigReloader, read_config_file
from services.modelserver.servable import Servable
from services.modelserver.settings import ModelServerSettings
from services.modelserver.tensors import to_ndarrays, to_tensor_proto
from services.modelserver.validation import resolve_signature

logger = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"


def configure_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """Set TensorFlow's thread pools (0 leaves TensorFlow's choice), as TF Serving's
    ``--tensorflow_intra_op_parallelism`` and ``--tensorflow_inter_op_parallelism`` do.

    TensorFlow fixes its pools when it runs its first op: call this before any model loads.
    Asking again for the values in force is harmless; asking for others afterwards raises
    :class:`ValueError` (TensorFlow would ignore them silently otherwise: it raises only
    RuntimeError, which says nothing of the setting)."""
    threading_config = tf.config.threading
    wanted = {"intra-op": intra_op, "inter-op": inter_op}
    setters = {
        "intra-op": threading_config.set_intra_op_parallelism_threads,
        "inter-op": threading_config.set_inter_op_parallelism_threads,
    }
    for pool, threads in wanted.items():
        if not threads:
            continue
        try:
            setters[pool](threads)
        except RuntimeError as exc:
            raise ValueError(
                f"TensorFlow's {pool} threads are fixed once it has run an op; {threads} "
                "asked for too late"
            ) from exc
    logger.info(
        "TensorFlow threads: intra-op %s, inter-op %s",
        threading_config.get_intra_op_parallelism_threads() or "TensorFlow's choice",
        threading_config.get_inter_op_parallelism_threads() or "TensorFlow's choice",
    )


def load_servable(version: int, path: Any) -> Servable:
    servable = Servable(version, path)
    servable.warm_up()
    return servable


def spec_version(spec: model_pb2.ModelSpec) -> tuple[int | None, str | None]:
    """(version, label) a ModelSpec asks for; both None means the newest."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return int(spec.version.value), None
    if choice == "version_label":
        return None, spec.version_label or None
    return None, None


class ServingCore:
    """Request handling shared by the gRPC servicers and the REST handler."""

    def __init__(
        self,
        manager: ModelManager[Servable],
        metrics: metrics_module.ModelServerMetrics,
        reloader: ConfigReloader | None = None,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.reloader = reloader

    @contextmanager
    def observe(self, method: str) -> Iterator[None]:
        """Count and time one call; the code label is the TF Serving status code name."""
        started = time.perf_counter()
        code = "OK"
        try:
            yield
        except ServingError as exc:
            code = exc.code.value
            raise
        except Exception:
            code = Code.INTERNAL.value
            raise
        finally:
            self.metrics.requests.labels(method, code).inc()
            self.metrics.request_seconds.labels(method).observe(time.perf_counter() - started)

    def predict_arrays(
        self,
        model_name: str,
        version: int | None,
        label: str | None,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
    ) -> tuple[Servable, str, dict[str, np.ndarray]]:
        """(servable used, resolved signature name, outputs)."""
        servable = self.manager.get(model_name, version, label)
        signature = resolve_signature(servable.signatures, signature_name)
        batch = next((a.shape[0] for a in inputs.values() if a.ndim), 1)
        try:
            outputs = servable.predict(signature.name, inputs, output_filter)
        except tf.errors.InvalidArgumentError as exc:
            raise InvalidArgumentError(exc.message) from exc
        except tf.errors.OpError as exc:
            raise ServingError(exc.message, Code.INTERNAL) from exc
        self.metrics.batch_size.observe(batch)
        return servable, signature.name, outputs

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        version, label = spec_version(request.model_spec)
        inputs = to_ndarrays(request.inputs)
        servable, signature_name, outputs = self.predict_arrays(
            request.model_spec.name,
            version,
            label,
            request.model_spec.signature_name,
            inputs,
            list(request.output_filter),
        )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for name, array in outputs.items():
            response.outputs[name].CopyFrom(to_tensor_proto(array))
        return response

    def metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if not fields:
            raise InvalidArgumentError(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in fields:
            if field != SIGNATURE_DEF_FIELD:
                raise InvalidArgumentError(f"Metadata field {field} is not supported")
        version, label = spec_version(request.model_spec)
        servable = self.manager.get(request.model_spec.name, version, label)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_defs)
        return response

    def status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        # TF Serving's GetModelStatus looks at model_spec.version only: a version label is
        # ignored (every version is listed), on gRPC as on REST.
        version, _ = spec_version(request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        for entry in self.manager.statuses(request.model_spec.name, version):
            response.model_version_status.append(
                get_model_status_pb2.ModelVersionStatus(
                    version=entry.version,
                    state=int(entry.state),
                    status=status_pb2.StatusProto(
                        error_code=error_codes_pb2.Code.Value(entry.error_code),
                        error_message=entry.error_message,
                    ),
                )
            )
        return response

    def reload(self, request: model_management_pb2.ReloadConfigRequest) -> None:
        """``HandleReloadConfigRequest``: apply the request's config (see
        :mod:`services.modelserver.reload`); raises :class:`ServingError` if refused."""
        if self.reloader is None:
            raise UnimplementedError("this server was started without config reloading")
        # No config at all: TF Serving takes no action.
        configs = from_proto(request.config) if request.config.WhichOneof("config") else None
        self.reloader.reload(configs)

    def update_version_gauge(self, serving: Mapping[int, Servable]) -> None:
        gauge, name = self.metrics.model_version, self.manager.model_name
        gauge.clear()
        if serving:
            gauge.labels(name, "latest").set(max(serving))
        for label, version in self.manager.labels.items():
            if version in serving:
                gauge.labels(name, label).set(version)


def _abort(context: grpc.ServicerContext, exc: ServingError) -> NoReturn:
    context.abort(grpc.StatusCode[exc.code.value], exc.message)
    raise AssertionError("context.abort returned")  # abort always raises


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore) -> None:
        self._core = core

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        try:
            with self._core.observe("Predict"):
                return self._core.predict(request)
        except ServingError as exc:
            _abort(context, exc)

    def GetModelMetadata(
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        try:
            with self._core.observe("GetModelMetadata"):
                return self._core.metadata(request)
        except ServingError as exc:
            _abort(context, exc)

    def _unimplemented(self, method: str, context: grpc.ServicerContext) -> NoReturn:
        with self._core.observe(method):
            pass
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not supported by harstream")
        raise AssertionError("context.abort returned")

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._unimplemented("Classify", context)

    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._unimplemented("Regress", context)

    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._unimplemented("MultiInference", context)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore) -> None:
        self._core = core

    def GetModelStatus(
        self,
        request: get_model_status_pb2.GetModelStatusRequest,
        context: grpc.ServicerContext,
    ) -> get_model_status_pb2.GetModelStatusResponse:
        try:
            with self._core.observe("GetModelStatus"):
                return self._core.status(request)
        except ServingError as exc:
            _abort(context, exc)

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        try:
            with self._core.observe("HandleReloadConfigRequest"):
                self._core.reload(request)
        except ServingError as exc:
            _abort(context, exc)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = error_codes_pb2.OK
        return response


def grpc_options(settings: ModelServerSettings) -> list[tuple[str, int]]:
    """Channel arguments of the gRPC server: message sizes set explicitly (gRPC's default
    receive limit is 4 MiB, TF Serving raises it), streams per connection bounded, idle
    connections closed."""
    megabytes = settings.max_message_mb * 1024 * 1024
    return [
        ("grpc.max_receive_message_length", megabytes),
        ("grpc.max_send_message_length", megabytes),
        ("grpc.max_concurrent_streams", settings.grpc_max_streams_per_connection),
        ("grpc.max_connection_idle_ms", int(settings.grpc_max_connection_idle_s * 1000)),
    ]


def rest_limits(settings: ModelServerSettings) -> RestLimits:
    return RestLimits(
        max_body_bytes=int(settings.rest_max_body_mb * 1024 * 1024),
        header_timeout_s=settings.rest_header_timeout_s,
        body_timeout_s=settings.rest_body_timeout_s,
        max_connections=settings.rest_max_connections,
    )


class ModelServer:
    """The whole server: version poller, gRPC server and REST/metrics server.

    Ports given as 0 are chosen by the kernel; :attr:`grpc_port`/:attr:`rest_port` hold
    the bound ones after :meth:`start`.
    """

    def __init__(
        self, settings: ModelServerSettings, registry: CollectorRegistry | None = None
    ) -> None:
        from services.modelserver.rest import RestServer  # noqa: PLC0415 - avoid a cycle

        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        configure_tensorflow_threads(
            settings.tensorflow_intra_op_parallelism, settings.tensorflow_inter_op_parallelism
        )
        configs = (
            read_config_file(settings.model_config_file)
            if settings.model_config_file is not None
            else None
        )
        if configs is not None:
            if len(configs) != 1:
                raise UnimplementedError(
                    f"{settings.model_config_file} lists {len(configs)} models; this "
                    "development server serves one"
                )
            first = configs[0]
            name, base_path, labels = first.name, Path(first.base_path), {}
        else:
            name, base_path, labels = (
                settings.model_name,
                settings.model_base_path,
                settings.labels,
            )
        self.manager: ModelManager[Servable] = ModelManager(
            name, base_path, self._load, labels=labels, on_change=self._on_change
        )
        self.reloader = ConfigReloader(
            self.manager,
            settings.allow_version_labels_for_unavailable_models,
            on_reload=self._on_reload,
        )
        self.core = ServingCore(self.manager, metrics_module.create(self.registry), self.reloader)
        if configs is not None:
            # Like TF Serving's first ReloadConfig: labels are checked before any version is
            # loaded, so a config with labels needs allow_version_labels_for_unavailable_models.
            self.reloader.reload(configs)
        self._config_watcher = (
            ConfigFileWatcher(
                settings.model_config_file, self.reloader, settings.model_config_file_poll_wait_s
            )
            if settings.model_config_file is not None and settings.model_config_file_poll_wait_s
            else None
        )
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._config_poller: threading.Thread | None = None
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=settings.grpc_workers, thread_name_prefix="modelserver-grpc"
            ),
            options=grpc_options(settings),
            # Beyond this many calls in progress or waiting for a worker, refuse at once
            # (RESOURCE_EXHAUSTED) rather than queue without bound.
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.core), self._grpc
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.core), self._grpc
        )
        self.grpc_port = self._grpc.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
        self._rest = RestServer(
            self.core, self.registry, settings.host, settings.rest_port, rest_limits(settings)
        )
        self.rest_port = self._rest.port

    def _load(self, version: int, path: Any) -> Servable:
        try:
            servable = load_servable(version, path)
        except Exception:
            self.core.metrics.version_loads.labels("failed").inc()
            raise
        self.core.metrics.version_loads.labels("ok").inc()
        return servable

    def _on_change(self, serving: Mapping[int, Servable]) -> None:
        self.core.update_version_gauge(serving)

    def _on_reload(self, _config: ModelConfig) -> None:
        self.core.update_version_gauge(self.manager.serving)

    def start(self) -> ModelServer:
        self._grpc.start()
        self._rest.start()
        self._poller = self.manager.start(self._stop, self.settings.poll_interval_s)
        if self._config_watcher is not None:
            self._config_poller = self._config_watcher.start(self._stop)
        logger.info(
            "model server: model %r from %s, gRPC on %s:%d, REST and metrics on %s:%d, "
            "polling every %.1f s, labels %s, config %s",
            self.manager.model_name,
            self.manager.base_path,
            self.settings.host,
            self.grpc_port,
            self.settings.host,
            self.rest_port,
            self.settings.poll_interval_s,
            dict(self.manager.labels) or "none",
            self.settings.model_config_file or "from settings",
        )
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking requests, let in-flight ones finish (up to ``grace_s``), stop polling."""
        self._stop.set()
        self.manager.request_poll()  # wakes the poller, which then sees the stop
        done = self._grpc.stop(grace_s)
        self._rest.stop()
        done.wait(grace_s)
        for thread in (self._poller, self._config_poller):
            if thread is not None:
                thread.join(timeout=grace_s)
        logger.info("model server stopped")
