"""Configuration of the inference worker (env prefix ``HARSTREAM_INFERENCE_``)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import StreamSettings


class InferenceSettings(StreamSettings):
    """Windows topic → micro-batches → TF Serving ``Predict`` → predictions topic."""

    model_config = SettingsConfigDict(
        env_prefix="HARSTREAM_INFERENCE_", frozen=True, extra="ignore"
    )

    group_id: str = Field(
        "harstream-inference",
        description="Kafka consumer group; replicas with the same id share the partitions.",
    )
    model_server_target: str = Field(
        "localhost:8500", description="TF Serving gRPC endpoint (host:port)."
    )
    model_name: str = Field("har", description="Model name as TF Serving serves it.")
    signature_name: str = Field("serving_default", description="SignatureDef to call.")
    model_version: int | None = Field(
        None,
        ge=1,
        description=(
            "Pin one model version (TF Serving must have it loaded). Unset: the newest "
            "version, or the one model_version_label names. Exclusive with model_version_label."
        ),
    )
    model_version_label: str | None = Field(
        None,
        min_length=1,
        description=(
            "Serve the version TF Serving's model config labels so (e.g. 'stable', 'canary'). "
            "Exclusive with model_version."
        ),
    )
    candidate_version_label: str = Field(
        "canary",
        min_length=1,
        description=(
            "TF Serving version label of the candidate model that canary_share and shadow "
            "send windows to."
        ),
    )
    canary_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Fraction of devices (0-1) whose live predictions come from the candidate "
            "(candidate_version_label); a device is in it when the first 8 bytes of "
            "SHA-256(device id) / 2^64 are below the share, so it stays on one version. "
            "The stable model predicts their windows too, as the fallback when the candidate "
            "fails and for the agreement metric."
        ),
    )
    shadow: bool = Field(
        False,
        description=(
            "Send every batch to the candidate too; its predictions go to the shadow-"
            "predictions topic and metrics, never to the predictions topic (alerting). Best "
            "effort: failures are counted and skipped."
        ),
    )
    candidate_deadline_s: float = Field(
        1.0,
        gt=0,
        description=(
            "gRPC deadline of a candidate Predict (seconds); it runs beside the stable one "
            "and is not retried, so a slow candidate delays a batch by at most this."
        ),
    )
    candidate_failures_to_pause: int = Field(
        3,
        ge=1,
        description="Consecutive candidate failures after which it is not called for a while.",
    )
    candidate_pause_s: float = Field(
        30.0,
        gt=0,
        description=(
            "How long a failing candidate is left alone before it is tried again (seconds); "
            "meanwhile canary devices get stable predictions and shadow predictions are "
            "skipped."
        ),
    )
    batch_max_size: int = Field(
        64,
        ge=1,
        le=4096,
        description=(
            "Most windows in one Predict call (across devices); 64 is where TF Serving's "
            "throughput on 2 cores flattens out."
        ),
    )
    batch_max_wait_ms: float = Field(
        50.0,
        ge=0,
        description=(
            "Longest a window waits for its batch to fill before it is sent anyway "
            "(milliseconds); bounds the latency batching adds."
        ),
    )
    predict_deadline_s: float = Field(
        5.0, gt=0, description="gRPC deadline of one Predict call (seconds)."
    )
    retry_initial_backoff_s: float = Field(
        0.2,
        gt=0,
        description=(
            "First wait before retrying a batch after a model-server error that is not "
            "about its windows (every gRPC status but INVALID_ARGUMENT: UNAVAILABLE, "
            "NOT_FOUND during a rollout, INTERNAL, ...) (seconds); doubles per retry, with "
            "jitter."
        ),
    )
    retry_max_backoff_s: float = Field(
        10.0, gt=0, description="Longest wait between two retries of a batch (seconds)."
    )
    startup_timeout_s: float = Field(
        60.0,
        gt=0,
        description=(
            "How long start-up waits for the model to be AVAILABLE on the model server "
            "before the worker exits non-zero (seconds)."
        ),
    )
    shutdown_timeout_s: float = Field(
        20.0,
        gt=10.0,
        description=(
            "Longest a stop (SIGTERM/SIGINT) may take before the worker exits with status 1 "
            "anyway (seconds); more than the 10 s an in-flight batch is given to finish. A "
            "forced exit is a crash: uncommitted windows are read again (at-least-once)."
        ),
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description=(
            "Bind address of the /metrics endpoint: loopback unless configured (it asks for no "
            "credential); 0.0.0.0 where Prometheus scrapes from another host or pod."
        ),
    )
    metrics_port: int = Field(
        9103, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0: off)."
    )

    @model_validator(mode="after")
    def _one_version_selector(self) -> InferenceSettings:
        if self.model_version is not None and self.model_version_label is not None:
            raise ValueError(
                "set at most one of model_version and model_version_label "
                f"(got {self.model_version} and {self.model_version_label!r})"
            )
        if (
            self.canary_share > 0 or self.shadow
        ) and self.model_version_label == self.candidate_version_label:
            raise ValueError(
                f"the stable model and the candidate are both label "
                f"{self.candidate_version_label!r}: set model_version_label (e.g. 'stable') "
                "or candidate_version_label to another label"
            )
        if self.retry_max_backoff_s < self.retry_initial_backoff_s:
            raise ValueError("retry_max_backoff_s must be >= retry_initial_backoff_s")
        return self
