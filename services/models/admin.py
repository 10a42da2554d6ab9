"""The I/O of ``harstream models``: TF Serving config files and a model server's
ModelService/PredictionService (TF Serving or ``harstream modelserver``; only their public
gRPC API is used, so what works against one works against the other).

Config files are replaced atomically (written beside, then renamed): a server polling the
file never reads half of one. A directory mount sees the rename (docker-compose mounts
deploy/tfserving as a directory for that reason).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from services.modelserver.config import (
    ModelConfig,
    leading_comments,
    only_model,
    parse_config,
    render_config,
    to_proto,
)
from shared.errors import HarstreamError

logger = logging.getLogger(__name__)

#: A version reported END for this long after a reload failed to load. Not at once: END is
#: also what a version unloaded earlier shows until the server's next poll of its base path
#: (TF Serving: every --file_system_poll_wait_seconds, 1 s by default) starts loading it.
END_FOR_S = 5.0


class AdminError(HarstreamError):
    """The model server refused or did not answer; ``code`` is the gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class ConfigFile:
    """A config file as read: its model's config and the comment block to keep."""

    path: Path
    config: ModelConfig
    header: str


def read_config_files(paths: Sequence[Path], model_name: str | None = None) -> list[ConfigFile]:
    """Read every file; they must hold the same config of the model (copies of one config,
    e.g. docker-compose's and the k8s ConfigMap's), else :class:`AdminError`."""
    files = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        config = only_model(parse_config(text), model_name)
        files.append(ConfigFile(path, config, leading_comments(text)))
    if len({repr(f.config) for f in files}) > 1:
        raise AdminError(
            "FAILED_PRECONDITION",
            "the config files differ: " + "; ".join(f"{f.path}: {f.config}" for f in files),
        )
    return files


def write_config_files(files: Sequence[ConfigFile], config: ModelConfig) -> None:
    """Replace each file with ``config`` (its header comments kept), atomically."""
    for file in files:
        text = render_config([config], file.header)
        fd, tmp = tempfile.mkstemp(prefix=f".{file.path.name}.", dir=file.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from a server of another uid
            os.replace(tmp, file.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class ModelServerAdmin:
    """Blocking gRPC calls to one model server (TF Serving's API)."""

    def __init__(self, target: str, timeout_s: float = 30.0) -> None:
        # Imported here: the protos of PredictionService import TensorFlow (seconds).
        import grpc  # type: ignore[import-untyped]  # noqa: PLC0415
        from tensorflow_serving.apis import (  # type: ignore[import-untyped]  # noqa: PLC0415
            model_service_pb2_grpc,
            prediction_service_pb2_grpc,
        )

        self.target = target
        self._timeout_s = timeout_s
        self._grpc = grpc
        self._channel = grpc.insecure_channel(target)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self._timeout_s)
        except self._grpc.RpcError as exc:
            raise AdminError(exc.code().name, exc.details() or "") from exc

    def reload(self, config: ModelConfig) -> None:
        """HandleReloadConfigRequest with ``config`` (the model server's whole config)."""
        from tensorflow_serving.apis import model_management_pb2  # noqa: PLC0415

        request = model_management_pb2.ReloadConfigRequest(config=to_proto([config]))
        self._call(self._models.HandleReloadConfigRequest, request)

    def statuses(self, model_name: str) -> dict[int, str]:
        """Version → state name (AVAILABLE, LOADING, END, ...) from GetModelStatus."""
        from tensorflow_serving.apis import get_model_status_pb2  # noqa: PLC0415

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model_name
        response = self._call(self._models.GetModelStatus, request)
        name = get_model_status_pb2.ModelVersionStatus.State.Name
        return {int(s.version): name(s.state) for s in response.model_version_status}

    def resolve_label(self, model_name: str, label: str) -> int:
        """The version ``label`` names on the server now (GetModelMetadata answers with the
        version it resolved: TF Serving has no call that lists labels)."""
        from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: PLC0415

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model_name
        request.model_spec.version_label = label
        response = self._call(self._predictions.GetModelMetadata, request)
        return int(response.model_spec.version.value)

    def wait_available(self, model_name: str, version: int, timeout_s: float) -> None:
        """Until ``version`` is AVAILABLE; :class:`AdminError` if it stays END (failed to
        load) for :data:`END_FOR_S` or the time runs out."""
        deadline = time.monotonic() + timeout_s
        state = "not listed"
        ended_since: float | None = None
        while time.monotonic() < deadline:
            try:
                state = self.statuses(model_name).get(version, "not listed")
            except AdminError as exc:
                state = str(exc)
            if state == "AVAILABLE":
                return
            ended_since = (ended_since or time.monotonic()) if state == "END" else None
            if ended_since is not None and time.monotonic() - ended_since > END_FOR_S:
                raise AdminError(
                    "FAILED_PRECONDITION",
                    f"version {version} of {model_name} ended instead of loading "
                    "(see the model server's log; GetModelStatus carries the error)",
                )
            time.sleep(0.25)
        raise AdminError(
            "DEADLINE_EXCEEDED",
            f"version {version} of {model_name} not AVAILABLE within {timeout_s:.0f} s "
            f"(last: {state})",
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ModelServerAdmin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = [
    "AdminError",
    "ConfigFile",
    "ModelServerAdmin",
    "read_config_files",
    "write_config_files",
]
