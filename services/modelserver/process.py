"""Run ``harstream modelserver`` as a child process (integration tests, benchmarks, the demo
pipeline) and wait until it serves the model."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import TracebackType

from services.common.broker import free_port
from services.common.processes import ServiceProcess
from shared.errors import HarstreamError

logger = logging.getLogger(__name__)


class ModelServerStartError(HarstreamError):
    """The model server exited or did not report the model AVAILABLE in time."""


class ModelServerProcess:
    """``harstream modelserver`` on free loopback ports, configured by env vars."""

    def __init__(
        self,
        base_path: Path,
        model_name: str = "har",
        grpc_port: int | None = None,
        rest_port: int | None = None,
        poll_interval_s: float = 0.5,
        version_labels: str = "",
        *,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        host: str | None = "127.0.0.1",
        model_config_file: Path | None = None,
        config_poll_s: float = 0.5,
    ) -> None:
        """``host`` None: the server's default bind address (tests of that default);
        ``extra_env``: more HARSTREAM_MODELSERVER_* settings; ``model_config_file``: serve
        that TF Serving config (its model name and base path win over ``base_path`` and
        ``model_name``, which must agree with it), read every ``config_poll_s`` seconds, with
        labels of versions still loading allowed at start-up as in docker-compose and k8s."""
        self.base_path = base_path
        self.model_name = model_name
        self.grpc_port = grpc_port or free_port()
        self.rest_port = rest_port or free_port()
        self.poll_interval_s = poll_interval_s
        self.version_labels = version_labels
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})
        self.host = host
        self.model_config_file = model_config_file
        self.config_poll_s = config_poll_s
        self.service = ServiceProcess(
            "modelserver", ServiceProcess.argv_of(["modelserver"]), self.env(), log_path
        )

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def pid(self) -> int:
        return self.service.pid

    def env(self) -> dict[str, str]:
        host = {} if self.host is None else {"HARSTREAM_MODELSERVER_HOST": self.host}
        config = (
            {}
            if self.model_config_file is None
            else {
                "HARSTREAM_MODELSERVER_MODEL_CONFIG_FILE": str(self.model_config_file),
                "HARSTREAM_MODELSERVER_MODEL_CONFIG_FILE_POLL_WAIT_S": str(self.config_poll_s),
                "HARSTREAM_MODELSERVER_ALLOW_VERSION_LABELS_FOR_UNAVAILABLE_MODELS": "true",
            }
        )
        return {
            **host,
            **config,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "HARSTREAM_MODELSERVER_MODEL_NAME": self.model_name,
            "HARSTREAM_MODELSERVER_MODEL_BASE_PATH": str(self.base_path),
            "HARSTREAM_MODELSERVER_GRPC_PORT": str(self.grpc_port),
            "HARSTREAM_MODELSERVER_REST_PORT": str(self.rest_port),
            "HARSTREAM_MODELSERVER_POLL_INTERVAL_S": str(self.poll_interval_s),
            "HARSTREAM_MODELSERVER_VERSION_LABELS": self.version_labels,
            **self.extra_env,
        }

    def launch(self) -> ModelServerProcess:
        """Start the process without waiting (see :meth:`wait_available`)."""
        self.service.start()
        return self

    def start(self, timeout_s: float = 120.0) -> ModelServerProcess:
        """Start and wait until GetModelStatus reports a version AVAILABLE."""
        self.launch()
        try:
            self.wait_available(timeout_s)
        except BaseException:
            self.stop()
            raise
        logger.info("model server %s on %s (pid %d)", self.model_name, self.grpc_target, self.pid)
        return self

    def wait_available(self, timeout_s: float) -> None:
        import grpc  # noqa: PLC0415 - only the process owner needs grpc/TF protos
        from tensorflow_serving.apis import (  # noqa: PLC0415
            get_model_status_pb2,
            model_service_pb2_grpc,
        )

        deadline = time.monotonic() + timeout_s
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            while time.monotonic() < deadline:
                if not self.service.running():
                    raise ModelServerStartError(
                        f"model server exited (log: {self.log_path}):\n{self.service.tail()}"
                    )
                try:
                    response = stub.GetModelStatus(request, timeout=2.0)
                except grpc.RpcError:
                    time.sleep(0.2)
                    continue
                if any(
                    s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
                    for s in response.model_version_status
                ):
                    return
                time.sleep(0.2)
        raise ModelServerStartError(
            f"model {self.model_name} not AVAILABLE within {timeout_s:.0f} s (log: {self.log_path})"
        )

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        return self.service.stop(timeout_s)

    def __enter__(self) -> ModelServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
