"""Prometheus metrics of the model server, served at TF Serving's path
``/monitoring/prometheus/metrics`` on the REST port."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ModelServerMetrics(NamedTuple):
    requests: Counter
    """harstream_modelserver_requests_total{method,code}: gRPC/REST calls by outcome."""
    request_seconds: Histogram
    """harstream_modelserver_request_seconds{method}: time to answer a call."""
    batch_size: Histogram
    """harstream_modelserver_batch_size: rows per Predict."""
    model_version: Gauge
    """harstream_modelserver_model_version{model,label}: version served as 'latest' and per
    configured label (absent while nothing serves)."""
    version_loads: Counter
    """harstream_modelserver_version_loads_total{outcome}: version loads, ok or failed."""


def create(registry: CollectorRegistry) -> ModelServerMetrics:
    return ModelServerMetrics(
        requests=Counter(
            "harstream_modelserver_requests",
            "Model server calls by method and status code.",
            ["method", "code"],
            registry=registry,
        ),
        request_seconds=Histogram(
            "harstream_modelserver_request_seconds",
            "Time to answer a call, by method.",
            ["method"],
            # a batch-64 Predict takes ~4-8 ms on 2 cores; status calls well under 1 ms, a
            # batch of 1024 a few hundred ms
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        ),
        batch_size=Histogram(
            "harstream_modelserver_batch_size",
            "Rows (windows) per Predict request.",
            # powers of two: the inference worker's micro-batches are capped at 64-256
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        ),
        model_version=Gauge(
            "harstream_modelserver_model_version",
            "Model version served, as 'latest' and per configured version label.",
            ["model", "label"],
            registry=registry,
        ),
        version_loads=Counter(
            "harstream_modelserver_version_loads",
            "Version loads by outcome (ok, failed).",
            ["outcome"],
            registry=registry,
        ),
    )
