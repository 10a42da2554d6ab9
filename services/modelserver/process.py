"""Run ``harstream modelserver`` as a subprocess (integration tests, demo), like
:class:`services.common.broker.EmbeddedBroker` does for Kafka."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from services.common.broker import free_port, terminate
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
        log_path: Path | None = None,
    ) -> None:
        self.base_path = base_path
        self.model_name = model_name
        self.grpc_port = grpc_port or free_port()
        self.rest_port = rest_port or free_port()
        self.poll_interval_s = poll_interval_s
        self.version_labels = version_labels
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ModelServerStartError("the model server is not running")
        return self._process.pid

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "HARSTREAM_MODELSERVER_MODEL_NAME": self.model_name,
            "HARSTREAM_MODELSERVER_MODEL_BASE_PATH": str(self.base_path),
            "HARSTREAM_MODELSERVER_HOST": "127.0.0.1",
            "HARSTREAM_MODELSERVER_GRPC_PORT": str(self.grpc_port),
            "HARSTREAM_MODELSERVER_REST_PORT": str(self.rest_port),
            "HARSTREAM_MODELSERVER_POLL_INTERVAL_S": str(self.poll_interval_s),
            "HARSTREAM_MODELSERVER_VERSION_LABELS": self.version_labels,
        }

    def start(self, timeout_s: float = 120.0) -> ModelServerProcess:
        """Start and wait until GetModelStatus reports a version AVAILABLE."""
        command = [sys.executable, "-m", "services.cli", "modelserver"]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=_repo_root()
        )
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
                if self._process is not None and self._process.poll() is not None:
                    raise ModelServerStartError(
                        f"model server exited with code {self._process.returncode}"
                        f" (log: {self.log_path})"
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
        process, self._process = self._process, None
        return terminate(process, timeout_s)

    def __enter__(self) -> ModelServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
