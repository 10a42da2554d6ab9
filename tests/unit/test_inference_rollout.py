"""Canary share and shadow mode of the inference worker with fake models: the hash split,
routing, fallback, shadow predictions, agreement and the breaker (no broker, no server)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from services.common.kafka.backoff import BackoffPolicy
from services.inference.batching import Queued
from services.inference.metrics import create
from services.inference.model import ModelOutput
from services.inference.processing import BatchProcessor, Consumed, decode
from services.inference.rollout import (
    CandidateBreaker,
    RolloutPlan,
    RolloutProcessor,
    canary_bucket,
    in_canary,
)
from services.inference.settings import InferenceSettings
from tests.unit.inference_helpers import FakeModel, make_window, probabilities_of, unavailable

FAST = BackoffPolicy(initial_s=0.001, max_s=0.002)


# --- the hash split ------------------------------------------------------------------------


def test_bucket_is_the_first_eight_bytes_of_sha256() -> None:
    digest = hashlib.sha256(b"wearable-0042").digest()
    assert canary_bucket("wearable-0042") == int.from_bytes(digest[:8], "big") / 2**64
    assert 0.0 <= canary_bucket("") < 1.0
    assert canary_bucket("é-device") == canary_bucket("é-device")  # UTF-8, no hash() seed


@pytest.mark.parametrize("share", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_measured_share_matches_the_configured_one(share: float) -> None:
    devices = [f"dev-{i:05d}" for i in range(20_000)]
    measured = sum(in_canary(d, share) for d in devices) / len(devices)
    # Binomial: 4 standard deviations of the share over 20,000 devices.
    assert abs(measured - share) < 4 * (share * (1 - share) / len(devices)) ** 0.5


def test_split_is_stable_and_growing_the_share_only_adds_devices() -> None:
    devices = [f"site-{i}/wrist" for i in range(5_000)]
    ten = {d for d in devices if in_canary(d, 0.10)}
    assert ten == {d for d in devices if in_canary(d, 0.10)}  # same answer every time
    twenty = {d for d in devices if in_canary(d, 0.20)}
    assert ten < twenty
    assert not any(in_canary(d, 0.0) for d in devices)
    assert all(in_canary(d, 1.0) for d in devices)


def test_plan_validates_and_describes() -> None:
    assert not RolloutPlan().enabled
    assert RolloutPlan(canary_share=0.1).describe() == "canary 10% of devices on label 'canary'"
    both = RolloutPlan("next", 0.5, True)
    assert both.describe() == "canary 50% of devices + shadow of every batch on label 'next'"
    with pytest.raises(ValueError, match="canary_share"):
        RolloutPlan(canary_share=1.5)


def test_settings_refuse_one_label_for_both_sides() -> None:
    ok = InferenceSettings(model_version_label="stable", canary_share=0.2, shadow=True)
    assert (ok.candidate_version_label, ok.canary_share) == ("canary", 0.2)
    with pytest.raises(ValidationError, match="both label 'canary'"):
        InferenceSettings(model_version_label="canary", shadow=True)
    with pytest.raises(ValidationError):
        InferenceSettings(canary_share=1.01)


# --- the breaker ---------------------------------------------------------------------------


def test_breaker_pauses_after_consecutive_failures_then_tries_again() -> None:
    now = [0.0]
    breaker = CandidateBreaker(failures_to_pause=3, pause_s=30.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.record(False)
    assert breaker.allow()
    breaker.record(True)  # a success starts the count again
    for _ in range(3):
        breaker.record(False)
    assert not breaker.allow()
    now[0] = 29.9
    assert not breaker.allow()
    now[0] = 30.0
    assert breaker.allow()  # one more try...
    breaker.record(False)
    assert not breaker.allow()  # ...which failed: paused again at once
    now[0] = 61.0
    breaker.record(True)
    assert breaker.allow()


# --- routing through fake models -------------------------------------------------------------


class Reversed(FakeModel):
    """A candidate that disagrees: the stand-in model's probabilities, classes reversed."""

    async def predict(self, windows: npt.NDArray[np.float32]) -> ModelOutput:
        output = await super().predict(windows)
        return ModelOutput(output.probabilities[:, ::-1].copy(), output.fingerprints, self.version)


class Hanging(FakeModel):
    async def predict(self, windows: npt.NDArray[np.float32]) -> ModelOutput:
        self.predict_batches.append(len(windows))
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


DEVICES = [f"dev-{i:03d}" for i in range(40)]


def _batch(devices: list[str] = DEVICES) -> list[Queued[Consumed]]:
    batch = []
    for i, device in enumerate(devices):
        window = make_window(device, start_index=64 * i, seed=i)
        batch.append(Queued(decode("windows", 0, i, device.encode(), window.to_bytes()), 0.0))
    return batch


def _rollout(
    candidate: FakeModel | None,
    plan: RolloutPlan,
    stable: FakeModel | None = None,
    breaker: CandidateBreaker | None = None,
    deadline_s: float = 1.0,
) -> tuple[RolloutProcessor, CollectorRegistry, FakeModel]:
    registry = CollectorRegistry()
    metrics = create(registry, "har")
    stable = stable or FakeModel(version=1)
    processor = BatchProcessor(
        stable, "har", FAST, metrics, rng=random.Random(0), model_label="stable"
    )
    rollout = RolloutProcessor(
        processor,
        candidate,
        plan,
        "har",
        metrics,
        breaker or CandidateBreaker(3, 30.0),
        deadline_s,
    )
    return rollout, registry, stable


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_canary_devices_get_the_candidate_and_the_rest_stable() -> None:
    plan = RolloutPlan("canary", canary_share=0.3)
    rollout, metrics, stable = _rollout(FakeModel(version=2), plan)
    result = asyncio.run(rollout.process(_batch()))

    canary = {d for d in DEVICES if in_canary(d, 0.3)}
    assert 0 < len(canary) < len(DEVICES)
    by_device = {p.device_id: p for _, p in result.predictions}
    assert set(by_device) == set(DEVICES)
    for device, prediction in by_device.items():
        expected = (2, "canary") if device in canary else (1, "stable")
        assert (prediction.model_version, prediction.model_label) == expected, device
    assert not result.shadow and not result.dead_letters
    assert stable.predict_batches == [len(DEVICES)]  # stable sees every window
    assert _value(
        metrics, "harstream_inference_version_predictions_total", version="2", route="canary"
    ) == len(canary)
    assert _value(
        metrics, "harstream_inference_version_predictions_total", version="1", route="stable"
    ) == len(DEVICES) - len(canary)
    # The same model behind both labels: every canary window agrees.
    assert _value(
        metrics, "harstream_inference_comparisons_total",
        mode="canary", stable_version="1", candidate_version="2", outcome="agree",
    ) == len(canary)  # fmt: skip


def test_shadow_predictions_never_replace_live_ones_and_agreement_is_counted() -> None:
    rollout, metrics, _ = _rollout(Reversed(version=3), RolloutPlan("canary", shadow=True))
    batch = _batch()
    result = asyncio.run(rollout.process(batch))

    live = [p for _, p in result.predictions]
    assert {(p.model_version, p.model_label) for p in live} == {(1, "stable")}
    assert [p.window_id for p in result.shadow] == [p.window_id for p in live]
    assert {(p.model_version, p.model_label) for p in result.shadow} == {(3, "canary")}
    windows = np.stack([q.item.window.data for q in batch if q.item.window is not None])
    agree = int(
        np.sum(
            np.argmax(probabilities_of(windows), axis=1)
            == np.argmax(probabilities_of(windows)[:, ::-1], axis=1)
        )
    )
    labels = {"mode": "shadow", "stable_version": "1", "candidate_version": "3"}
    assert (
        _value(metrics, "harstream_inference_comparisons_total", **labels, outcome="agree") == agree
    )
    assert (
        _value(metrics, "harstream_inference_comparisons_total", **labels, outcome="disagree")
        == len(live) - agree
    )
    assert _value(
        metrics, "harstream_inference_version_predictions_total", version="3", route="shadow"
    ) == len(live)


def test_a_failing_candidate_falls_back_to_stable_and_is_paused() -> None:
    now = [0.0]
    breaker = CandidateBreaker(3, 30.0, clock=lambda: now[0])
    candidate = FakeModel(version=2, predict_failures=[unavailable() for _ in range(10)])
    rollout, metrics, _ = _rollout(
        candidate, RolloutPlan("canary", canary_share=0.5, shadow=True), breaker=breaker
    )
    canary = sum(in_canary(d, 0.5) for d in DEVICES)
    for _ in range(5):
        result = asyncio.run(rollout.process(_batch()))
        # Every window still gets its stable prediction; nothing is shadowed.
        assert {(p.model_version, p.model_label) for _, p in result.predictions} == {(1, "stable")}
        assert not result.shadow
    assert len(candidate.predict_batches) == 3  # then paused: not called at all
    fallbacks = "harstream_inference_version_predictions_total"
    assert _value(metrics, fallbacks, version="1", route="fallback") == 5 * canary
    failures = "harstream_inference_candidate_failures_total"
    assert _value(metrics, failures, mode="canary", reason="UNAVAILABLE") == 3 * canary
    assert _value(metrics, failures, mode="canary", reason="paused") == 2 * canary
    assert _value(metrics, failures, mode="shadow", reason="paused") == 2 * (len(DEVICES) - canary)
    now[0] = 31.0  # the pause is over; the candidate has recovered meanwhile
    candidate.predict_failures.clear()
    result = asyncio.run(rollout.process(_batch()))
    assert {p.model_version for _, p in result.predictions} == {1, 2}
    assert len(result.shadow) == len(DEVICES) - canary


def test_a_hanging_candidate_costs_one_deadline_not_a_stall() -> None:
    candidate = Hanging(version=2)
    rollout, _, _ = _rollout(candidate, RolloutPlan("canary", canary_share=1.0), deadline_s=0.2)
    started = time.monotonic()
    result = asyncio.run(rollout.process(_batch()))
    assert time.monotonic() - started < 2.0
    assert {(p.model_version, p.model_label) for _, p in result.predictions} == {(1, "stable")}


def test_a_candidate_of_other_preprocessing_is_not_used_and_is_paused() -> None:
    candidate = FakeModel(version=2, fingerprint="feedfacefeedface")
    rollout, metrics, _ = _rollout(candidate, RolloutPlan("canary", shadow=True))
    for _ in range(4):
        result = asyncio.run(rollout.process(_batch()))
        assert not result.shadow and not result.dead_letters  # the windows are fine: stable's
        assert len(result.predictions) == len(DEVICES)
    assert len(candidate.predict_batches) == 3  # three failures in a row: paused
    failures = "harstream_inference_candidate_failures_total"
    assert _value(metrics, failures, mode="shadow", reason="fingerprint") == 3 * len(DEVICES)
    assert _value(metrics, failures, mode="shadow", reason="paused") == len(DEVICES)


def test_without_a_plan_the_candidate_is_never_asked() -> None:
    rollout, metrics, stable = _rollout(None, RolloutPlan())
    result = asyncio.run(rollout.process(_batch()))
    assert len(result.predictions) == len(DEVICES) and stable.predict_batches == [len(DEVICES)]
    assert _value(
        metrics, "harstream_inference_version_predictions_total", version="1", route="stable"
    ) == len(DEVICES)
    with pytest.raises(ValueError, match="candidate"):
        _rollout(None, RolloutPlan(shadow=True))
