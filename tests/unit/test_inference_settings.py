"""InferenceSettings: defaults, env prefix, version selectors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.inference.settings import InferenceSettings


def test_defaults() -> None:
    s = InferenceSettings()
    assert (s.group_id, s.model_server_target, s.model_name) == (
        "harstream-inference",
        "localhost:8500",
        "har",
    )
    assert (s.batch_max_size, s.batch_max_wait_ms, s.metrics_port) == (64, 50.0, 9103)
    assert s.model_version is None and s.model_version_label is None


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARSTREAM_INFERENCE_MODEL_VERSION_LABEL", "canary")
    monkeypatch.setenv("HARSTREAM_INFERENCE_BATCH_MAX_SIZE", "16")
    monkeypatch.setenv("HARSTREAM_INFERENCE_TOPIC_PREFIX", "fleet")
    s = InferenceSettings()
    assert (s.model_version_label, s.batch_max_size) == ("canary", 16)
    assert s.topics.windows == "fleet.windows.v1"


def test_version_and_label_are_exclusive() -> None:
    assert InferenceSettings(model_version=2).model_version == 2
    with pytest.raises(ValidationError, match="at most one"):
        InferenceSettings(model_version=2, model_version_label="stable")


def test_backoff_bounds_are_consistent() -> None:
    with pytest.raises(ValidationError):
        InferenceSettings(retry_initial_backoff_s=5, retry_max_backoff_s=1)
