"""Settings of the development model server (env prefix ``HARSTREAM_MODELSERVER_``).

It talks to no Kafka, so it derives from ``BaseSettings`` rather than ``StreamSettings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.modelserver.versions import parse_version_labels

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_BASE_PATH = REPO_ROOT / "models" / "har"


class ModelServerSettings(BaseSettings):
    """What to serve and where; mirrors TF Serving's ``--model_name``/``--model_base_path``,
    ``--port``, ``--rest_api_port`` and ``--file_system_poll_wait_seconds``."""

    model_config = SettingsConfigDict(
        env_prefix="HARSTREAM_MODELSERVER_", frozen=True, extra="ignore"
    )

    model_name: str = Field("har", min_length=1, description="Name clients put in model_spec.")
    model_base_path: Path = Field(
        DEFAULT_MODEL_BASE_PATH,
        description="Directory holding numbered SavedModel versions (<base>/<version>/).",
    )
    host: str = Field(
        "127.0.0.1",
        description=(
            "Address the gRPC and REST servers bind to: loopback unless configured, as neither "
            "asks for a credential (0.0.0.0 in a container whose pod network restricts it)."
        ),
    )
    grpc_port: int = Field(8500, ge=0, le=65535, description="gRPC port (TF Serving: --port).")
    rest_port: int = Field(
        8501, ge=0, le=65535, description="REST and metrics port (TF Serving: --rest_api_port)."
    )
    poll_interval_s: float = Field(
        2.0,
        gt=0,
        description=(
            "Seconds between scans of the base path for new or removed versions "
            "(TF Serving: --file_system_poll_wait_seconds)."
        ),
    )
    version_labels: str = Field(
        "",
        description=(
            "Optional labels, e.g. 'stable=1,canary=2': labelled versions are served besides "
            "the newest one and can be requested by model_spec.version_label (a shortcut of "
            "this server; TF Serving takes labels only from a model config file). Exclusive "
            "with model_config_file."
        ),
    )
    model_config_file: Path | None = Field(
        None,
        description=(
            "TF Serving model config (protobuf text of ModelServerConfig: model_config_list "
            "with name, absolute base_path, model_version_policy, version_labels), as "
            "--model_config_file; model_name and model_base_path are then taken from it. "
            "One model only."
        ),
    )
    model_config_file_poll_wait_s: float = Field(
        0.0,
        ge=0,
        description=(
            "Seconds between reads of model_config_file; a changed config is applied without "
            "restart (TF Serving: --model_config_file_poll_wait_seconds). 0: read once at "
            "start; the ModelService/HandleReloadConfigRequest RPC reloads either way."
        ),
    )
    allow_version_labels_for_unavailable_models: bool = Field(
        False,
        description=(
            "As TF Serving's flag: a new label (or one keeping its version) may name a "
            "version that is not AVAILABLE yet; needed for a config file with labels at "
            "start-up. Moving an existing label to such a version is refused regardless."
        ),
    )
    tensorflow_intra_op_parallelism: int = Field(
        0,
        ge=0,
        le=256,
        description=(
            "Threads one TensorFlow op may use (TF Serving: --tensorflow_intra_op_parallelism; "
            "0: TensorFlow's choice, one per core). The hybrid's recurrent layers run many small "
            "ops in sequence, which a second thread mostly waits for: on 2 shared cores 1 "
            "costs less CPU per window at every batch size (reports/performance.md)."
        ),
    )
    tensorflow_inter_op_parallelism: int = Field(
        0,
        ge=0,
        le=256,
        description=(
            "Ops of one call TensorFlow runs at once (TF Serving: "
            "--tensorflow_inter_op_parallelism; 0: TensorFlow's choice)."
        ),
    )
    grpc_workers: int = Field(
        4, ge=1, le=64, description="Threads handling gRPC requests concurrently."
    )
    max_message_mb: int = Field(
        64, ge=4, description="Largest gRPC request/response accepted, in MiB."
    )
    grpc_max_concurrent_rpcs: int = Field(
        64,
        ge=1,
        description=(
            "gRPC calls in progress or queued at once; one more is refused RESOURCE_EXHAUSTED "
            "at once instead of queueing without bound."
        ),
    )
    grpc_max_streams_per_connection: int = Field(
        32, ge=1, description="Concurrent gRPC calls one HTTP/2 connection may open."
    )
    grpc_max_connection_idle_s: float = Field(
        300.0, gt=0, description="A gRPC connection with no call for this long is closed (s)."
    )
    rest_max_body_mb: float = Field(
        16.0,
        gt=0,
        description=(
            "Largest REST request body, in MiB; a larger Content-Length is answered 413 "
            "without reading the body."
        ),
    )
    rest_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "Longest a REST connection may take to send a request's headers, idle keep-alive "
            "time included (seconds); the connection is then closed."
        ),
    )
    rest_body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest a REST request body may take to arrive (seconds): then 408.",
    )
    rest_max_connections: int = Field(
        64,
        ge=1,
        description=(
            "REST connections served at once (a thread each); one more is answered 503 "
            "without being read and closed."
        ),
    )

    @field_validator("version_labels")
    @classmethod
    def _labels_parse(cls, value: str) -> str:
        parse_version_labels(value)  # raises ValueError, reported by pydantic
        return value

    @model_validator(mode="after")
    def _labels_in_one_place(self) -> Self:
        if self.version_labels and self.model_config_file is not None:
            raise ValueError(
                "version_labels and model_config_file exclude each other: put the labels in "
                "the config file's version_labels"
            )
        return self

    @property
    def labels(self) -> dict[str, int]:
        return parse_version_labels(self.version_labels)
