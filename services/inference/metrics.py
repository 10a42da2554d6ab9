"""Prometheus metrics of the inference worker, built on an injected registry."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.messages import Prediction

# Powers of two around the default batch_max_size (64): shows whether batches fill (load)
# or leave on the wait bound (quiet stream).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 128, 256, 512, 1024)
# Predict on 2 cores: ~2 ms at batch 1, ~6 ms at 64; the top buckets catch an overloaded
# server up to the 5 s default deadline.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Bounded by batch_max_wait_ms (default 50 ms) plus a loop turn: fine steps up to ~100 ms,
# coarse beyond to show a worker that falls behind.
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
# Softmax over 6 classes: never below 1/6. Fine steps near 1, where a healthy model lives.
CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# Ingest → prediction: the floor is tens of ms (three Kafka hops, the 50 ms batch wait, a
# few ms of Predict), a healthy pipeline stays under ~1 s; broker or model-server outages
# and the catch-up after them push it to seconds or tens of seconds, which should show as
# such rather than vanish into +Inf.
END_TO_END_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class InferenceMetrics(NamedTuple):
    batch_size: Histogram
    request_seconds: Histogram
    queue_wait_seconds: Histogram
    predictions: Counter
    confidence: Histogram
    end_to_end_seconds: Histogram
    retries: Counter
    model_version: Gauge
    dead_letters: Counter
    windows: Counter
    #: Windows-topic partitions this worker owns: 0 = not (yet) in the group, or a replica
    #: beyond the partition count, idle.
    partitions_assigned: Gauge
    #: Rollout (services.inference.rollout): labelled by model version and route, a handful
    #: of values each (versions in service at once, four routes), never by device.
    version_predictions: Counter
    version_confidence: Histogram
    comparisons: Counter
    candidate_failures: Counter
    shadow_dropped: Counter
    canary_share: Gauge
    shadow_enabled: Gauge
    model_name: str

    # BatchObserver (services.inference.processing).
    def predicted(self, batch_size: int, seconds: float, version: int) -> None:
        self.batch_size.observe(batch_size)
        self.request_seconds.observe(seconds)
        self.model_version.labels(model=self.model_name).set(version)

    def retried(self, code: str) -> None:
        self.retries.labels(code=code).inc()

    # RolloutObserver (services.inference.rollout).
    def routed(self, prediction: Prediction, route: str) -> None:
        version = str(prediction.model_version)
        self.version_predictions.labels(version=version, route=route).inc()
        self.version_confidence.labels(version=version, route=route).observe(prediction.confidence)

    def compared(self, mode: str, stable_version: int, candidate_version: int, agree: bool) -> None:
        self.comparisons.labels(
            mode=mode,
            stable_version=str(stable_version),
            candidate_version=str(candidate_version),
            outcome="agree" if agree else "disagree",
        ).inc()

    def candidate_failed(self, mode: str, reason: str, windows: int) -> None:
        self.candidate_failures.labels(mode=mode, reason=reason).inc(windows)


def create(registry: CollectorRegistry, model_name: str) -> InferenceMetrics:
    return InferenceMetrics(
        batch_size=Histogram(
            "harstream_inference_batch_size",
            "Windows per Predict call.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        ),
        request_seconds=Histogram(
            "harstream_inference_request_seconds",
            "Latency of successful Predict calls.",
            buckets=REQUEST_BUCKETS,
            registry=registry,
        ),
        queue_wait_seconds=Histogram(
            "harstream_inference_queue_wait_seconds",
            "Time a window waited in the micro-batcher.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        ),
        predictions=Counter(
            "harstream_predictions_total",
            "Predictions produced, by predicted activity.",
            ["activity"],
            registry=registry,
        ),
        confidence=Histogram(
            "harstream_prediction_confidence",
            "Probability of the predicted activity.",
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        ),
        end_to_end_seconds=Histogram(
            "harstream_end_to_end_latency_seconds",
            "Ingest acceptance of a window's last packet → its prediction acknowledged by "
            "Kafka on the predictions topic.",
            buckets=END_TO_END_BUCKETS,
            registry=registry,
        ),
        retries=Counter(
            "harstream_inference_retries_total",
            "Predict retries after a retriable gRPC status, by status code.",
            ["code"],
            registry=registry,
        ),
        model_version=Gauge(
            "harstream_inference_model_version",
            "Model version that answered the last Predict.",
            ["model"],
            registry=registry,
        ),
        dead_letters=Counter(
            "harstream_dead_letters_total",
            "Records sent to the dead-letter topic, by error type.",
            ["error_type"],
            registry=registry,
        ),
        windows=Counter(
            "harstream_inference_windows_total",
            "Records consumed from the windows topic.",
            registry=registry,
        ),
        partitions_assigned=Gauge(
            "harstream_inference_partitions_assigned",
            "Windows-topic partitions assigned to this worker.",
            registry=registry,
        ),
        version_predictions=Counter(
            "harstream_inference_version_predictions_total",
            "Predictions made, by the model version that made them and route: stable, canary "
            "(a canary device served by the candidate), fallback (a canary device served by "
            "stable because the candidate failed) or shadow (the candidate's, for the shadow "
            "topic only).",
            ["version", "route"],
            registry=registry,
        ),
        version_confidence=Histogram(
            "harstream_inference_version_confidence",
            "Probability of the predicted activity, by model version and route.",
            ["version", "route"],
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        ),
        comparisons=Counter(
            "harstream_inference_comparisons_total",
            "Windows classified by both the stable model and the candidate, by mode (canary, "
            "shadow), versions and outcome (agree: same activity, disagree); agreement rate = "
            "agree / all.",
            ["mode", "stable_version", "candidate_version", "outcome"],
            registry=registry,
        ),
        candidate_failures=Counter(
            "harstream_inference_candidate_failures_total",
            "Windows the candidate did not classify, by mode (canary: served by stable "
            "instead; shadow: skipped) and reason (gRPC status, fingerprint, response, paused).",
            ["mode", "reason"],
            registry=registry,
        ),
        shadow_dropped=Counter(
            "harstream_inference_shadow_dropped_total",
            "Shadow predictions made but not written to the shadow topic, by reason (backlog: "
            "the shadow producer fell behind; else the Kafka error).",
            ["reason"],
            registry=registry,
        ),
        canary_share=Gauge(
            "harstream_inference_canary_share",
            "Configured fraction of devices served by the candidate version label.",
            registry=registry,
        ),
        shadow_enabled=Gauge(
            "harstream_inference_shadow_enabled",
            "1 when every batch is also sent to the candidate (shadow mode).",
            registry=registry,
        ),
        model_name=model_name,
    )
