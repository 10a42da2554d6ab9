"""The inference worker against the real broker and the development TF Serving
(``model_server`` fixture): predictions equal offline ones, an outage loses nothing, bad
records go to the dead-letter topic, a server without the model is refused."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from services.inference.main import run
from services.inference.settings import InferenceSettings
from shared.dsp import StreamingPreprocessor
from shared.features import motion_features
from shared.messages import DeadLetter, Prediction, WindowMessage
from tests.integration.kafka_reading import read_topic

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "models" / "har" / "1"


class WorkerThread:
    """``services.inference.main.run`` on its own event loop in a thread, stopped like SIGTERM
    would (the stop event)."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await run(self.settings, self.registry, self._stop, on_ready=self.ready.set)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc

    def start(self, timeout_s: float = 30.0) -> WorkerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.1):
            if self.error is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start: {self.error!r}")
        return self

    def stop(self, timeout_s: float = 20.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def worker_for(
    stream_settings: Callable[..., Any], model_server: Any, unique_id: str
) -> Iterator[Callable[..., WorkerThread]]:
    started: list[WorkerThread] = []

    def start(**overrides: Any) -> WorkerThread:
        values: dict[str, Any] = {
            "group_id": f"inference-{unique_id}-{len(started)}",
            "model_server_target": model_server.grpc_target,
            "model_name": model_server.model_name,
            "metrics_port": 0,
            "startup_timeout_s": 30,
        }
        values.update(overrides)
        worker = WorkerThread(stream_settings(InferenceSettings, **values))
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


def produce(
    settings: InferenceSettings, records: list[tuple[bytes, bytes]], pace_s: float = 0.0
) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    try:
        for key, value in records:
            producer.send(settings.topics.windows, value=value, key=key)
            if pace_s:
                time.sleep(pace_s)
        producer.flush(30)
    finally:
        producer.close()


def recording_windows(hapt_cache: Any, device: str) -> list[WindowMessage]:
    recording = hapt_cache.load(subjects=[2])[0]
    pre = StreamingPreprocessor()
    _, windows = pre.process(pre.new_state(), recording.samples)
    fingerprint = pre.config.fingerprint
    now = time.time()
    return [
        WindowMessage(
            device_id=device,
            start_index=int(start),
            start_time=1_700_000_000 + start / 50,
            end_time=1_700_000_000 + (start + 128) / 50,
            fingerprint=fingerprint,
            ingested_at=now,
            emitted_at=now,
            features=motion_features(data),
            data=data,
        )
        for start, data in zip(windows.start_indices, windows.data, strict=True)
    ]


def read_predictions(
    settings: InferenceSettings, count: int, timeout_s: float = 60
) -> list[Prediction]:
    return [
        Prediction.from_bytes(v)
        for _, v in read_topic(settings, settings.topics.predictions, count, timeout_s=timeout_s)
    ]


def test_recording_predictions_equal_offline_model(worker_for, hapt_cache) -> None:  # type: ignore[no-untyped-def]
    from services.training.evaluate import SavedModelPredictor

    windows = recording_windows(hapt_cache, "s02e1")
    worker = worker_for()
    produce(worker.settings, [(w.device_id.encode(), w.to_bytes()) for w in windows])
    predictions = read_predictions(worker.settings, len(windows))

    by_id = {p.window_id: p for p in predictions}
    assert set(by_id) == {w.window_id for w in windows}
    duplicates = len(predictions) - len(by_id)
    assert duplicates == 0
    expected = SavedModelPredictor(MODEL_DIR).predict_proba(np.stack([w.data for w in windows]))
    got = np.array([by_id[w.window_id].probabilities for w in windows])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    first = by_id[windows[0].window_id]
    assert first.model_name == "har" and first.model_version == 1
    assert first.features == windows[0].features
    assert (first.start_time, first.end_time) == (windows[0].start_time, windows[0].end_time)
    assert all(0 <= p.queue_wait_s < 5 and 0 < p.inference_s < 5 for p in predictions)
    assert all(p.produced_at >= p.ingested_at for p in predictions)
    assert worker.metric("harstream_inference_windows_total") == len(windows)
    assert worker.metric("harstream_inference_batch_size_count") >= len(windows) / 64
    assert worker.metric("harstream_inference_model_version", model="har") == 1
    labels = Counter(p.label for p in predictions)
    assert sum(
        worker.metric("harstream_predictions_total", activity=label) for label in labels
    ) == len(windows)


def test_model_server_outage_loses_nothing(worker_for, hapt_cache, model_server, capsys) -> None:  # type: ignore[no-untyped-def]
    windows = recording_windows(hapt_cache, "s02e1-outage")[:150]
    worker = worker_for(
        predict_deadline_s=0.5, retry_initial_backoff_s=0.1, retry_max_backoff_s=0.5
    )
    records = [(w.device_id.encode(), w.to_bytes()) for w in windows]
    producer = threading.Thread(target=produce, args=(worker.settings, records, 0.03))
    producer.start()  # ~4.5 s of windows
    deadline = time.monotonic() + 15
    while worker.metric("harstream_inference_batch_size_count") == 0:  # flowing
        assert time.monotonic() < deadline, "no prediction before the outage"
        time.sleep(0.05)
    os.kill(model_server.pid, signal.SIGSTOP)
    try:
        time.sleep(3.0)
    finally:
        os.kill(model_server.pid, signal.SIGCONT)
    producer.join(30)
    predictions = read_predictions(worker.settings, len(windows))

    ids = Counter(p.window_id for p in predictions)
    assert set(ids) == {w.window_id for w in windows}  # every window, at least once
    duplicates = sum(n - 1 for n in ids.values())
    retries = {
        code: worker.metric("harstream_inference_retries_total", code=code)
        for code in ("DEADLINE_EXCEEDED", "UNAVAILABLE")
    }
    with capsys.disabled():
        print(
            f"\noutage: {len(predictions)} predictions for {len(windows)} windows, "
            f"{duplicates} duplicates, retries {retries}"
        )
    # 3 s of outage / (0.5 s deadline + at most 0.5 s backoff): at least 3 retries.
    assert retries["DEADLINE_EXCEEDED"] + retries["UNAVAILABLE"] >= 3
    assert worker.metric("harstream_dead_letters_total", error_type="ModelServerError") == 0
    # The windows that waited out the outage show it in their end-to-end latency.
    assert max(p.end_to_end_s for p in predictions) > 2.0


def _dead_letters(settings: InferenceSettings, count: int) -> list[DeadLetter]:
    return [
        DeadLetter.from_bytes(v)
        for _, v in read_topic(settings, settings.topics.dlq, count, timeout_s=30)
    ]


def test_poison_message_goes_to_the_dlq_and_processing_continues(worker_for, hapt_cache) -> None:  # type: ignore[no-untyped-def]
    windows = recording_windows(hapt_cache, "poison")[:4]
    worker = worker_for()
    key = b"poison"
    produce(
        worker.settings,
        [(key, windows[0].to_bytes()), (key, windows[1].to_bytes()), (key, b"HW\x09garbage"),
         (key, windows[2].to_bytes()), (key, windows[3].to_bytes())],
    )  # fmt: skip
    predictions = read_predictions(worker.settings, 4)
    assert sorted(p.window_id for p in predictions) == sorted(w.window_id for w in windows)
    [letter] = _dead_letters(worker.settings, 1)
    assert letter.service == "inference"
    assert letter.error_type == "SchemaError"
    assert letter.value == b"HW\x09garbage" and letter.key == key
    assert letter.source_topic == worker.settings.topics.windows
    assert letter.source_offset == 2  # one key → one partition, in order
    assert worker.metric("harstream_dead_letters_total", error_type="SchemaError") == 1


def test_window_with_other_fingerprint_goes_to_the_dlq(worker_for, hapt_cache) -> None:  # type: ignore[no-untyped-def]
    good, other = recording_windows(hapt_cache, "fp")[:2]
    stale = WindowMessage(**{**other.__dict__, "fingerprint": "0000deadbeef0000"})
    worker = worker_for()
    produce(worker.settings, [(b"fp", stale.to_bytes()), (b"fp", good.to_bytes())])
    [prediction] = read_predictions(worker.settings, 1)
    assert prediction.window_id == good.window_id
    [letter] = _dead_letters(worker.settings, 1)
    assert letter.error_type == "FingerprintMismatchError"
    assert "0000deadbeef0000" in letter.reason and good.fingerprint in letter.reason
    assert WindowMessage.from_bytes(letter.value or b"").window_id == stale.window_id


def test_startup_refuses_a_server_without_the_model(model_server, broker) -> None:  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "HARSTREAM_INFERENCE_MODEL_SERVER_TARGET": model_server.grpc_target,
        "HARSTREAM_INFERENCE_MODEL_NAME": "no-such-model",
        "HARSTREAM_INFERENCE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "HARSTREAM_INFERENCE_METRICS_PORT": "0",
        "HARSTREAM_INFERENCE_STARTUP_TIMEOUT_S": "20",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "inference"],
        check=False, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refused to start" in done.stderr
    assert "does not serve model 'no-such-model'" in done.stderr
    assert time.monotonic() - started < 20  # failed fast, did not wait the start-up timeout
