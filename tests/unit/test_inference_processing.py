"""A batch through a fake model: predictions, retries, bisection, dead letters, offsets."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from services.common.kafka.backoff import BackoffPolicy
from services.inference.batching import MicroBatcher, Queued
from services.inference.errors import (
    FingerprintMismatchError,
    InvalidWindowError,
    ModelResponseError,
    ModelServerError,
)
from services.inference.model import ModelOutput
from services.inference.processing import (
    BatchAbandonedError,
    BatchProcessor,
    Consumed,
    decode,
)
from shared.errors import SchemaError
from shared.messages import WindowMessage
from tests.unit.inference_helpers import FakeModel, make_window, probabilities_of, unavailable

FAST = BackoffPolicy(initial_s=0.001, max_s=0.002)


class Observer:
    def __init__(self) -> None:
        self.calls: list[tuple[int, float, int]] = []
        self.retries: list[str] = []

    def predicted(self, batch_size: int, seconds: float, version: int) -> None:
        self.calls.append((batch_size, seconds, version))

    def retried(self, code: str) -> None:
        self.retries.append(code)


def _key(value: bytes | None) -> bytes:
    """Records are keyed by their device id (garbage gets any key)."""
    try:
        return WindowMessage.from_bytes(value).device_id.encode()  # type: ignore[arg-type]
    except SchemaError:
        return b"dev-1"


def _batch(values: list[bytes | None], enqueued_at: float = 0.0) -> list[Queued[Consumed]]:
    return [
        Queued(decode("windows", i % 2, 10 + i, _key(value), value), enqueued_at)
        for i, value in enumerate(values)
    ]


def _processor(model: FakeModel, observer: Observer | None = None) -> BatchProcessor:
    return BatchProcessor(
        model,
        "har",
        FAST,
        observer or Observer(),
        clock=lambda: 5.0,
        wall_clock=lambda: 1234.5,
        rng=random.Random(0),
    )


def test_decode_keeps_failures_instead_of_raising() -> None:
    good = decode("t", 0, 1, b"dev-1", make_window().to_bytes())
    assert good.window is not None and good.error is None
    garbage = decode("t", 0, 2, b"dev-1", b"not a window")
    assert garbage.window is None and isinstance(garbage.error, SchemaError)
    empty = decode("t", 0, 3, b"dev-1", None)
    assert isinstance(empty.error, SchemaError)
    nan = make_window()
    data = nan.data.copy()
    data[0, 0] = np.inf
    object.__setattr__(nan, "data", data)
    assert isinstance(decode("t", 0, 4, b"dev-1", nan.to_bytes()).error, InvalidWindowError)


@pytest.mark.parametrize("key", [None, b"dev-2", b"\xff\xfedev-1", b"dev-1 "])
def test_a_window_keyed_other_than_by_its_device_is_refused(key: bytes | None) -> None:
    """Its partition would be another device's: dead-lettered, never predicted."""
    refused = decode("t", 0, 1, key, make_window(device="dev-1").to_bytes())
    assert refused.window is None
    assert isinstance(refused.error, SchemaError)
    assert "is not the device id" in str(refused.error)


def test_batch_of_good_windows_gives_one_prediction_each_in_order() -> None:
    windows = [make_window(f"d{i}", 64 * i, seed=i) for i in range(5)]
    observer = Observer()
    model = FakeModel(version=7)
    result = asyncio.run(
        _processor(model, observer).process(_batch([w.to_bytes() for w in windows]))
    )
    assert [p.window_id for _, p in result.predictions] == [w.window_id for w in windows]
    expected = probabilities_of(np.stack([w.data for w in windows]))
    for row, (_, prediction) in enumerate(result.predictions):
        np.testing.assert_allclose(prediction.probabilities, expected[row], atol=1e-6)
        assert prediction.model_version == 7
        assert prediction.queue_wait_s == 5.0  # taken at clock 5.0, enqueued at 0.0
        assert prediction.produced_at == 1234.5
    assert result.dead_letters == []
    assert model.predict_batches == [5]
    assert [(size, version) for size, _, version in observer.calls] == [(5, 7)]
    # Highest offset + 1 per partition: offsets 10..14 alternate partitions 0/1.
    assert result.offsets == {("windows", 0): 15, ("windows", 1): 14}


def test_outage_retries_the_same_batch_until_it_succeeds() -> None:
    observer = Observer()
    deadline = ModelServerError("DEADLINE_EXCEEDED", "slow", retriable=True)
    model = FakeModel(predict_failures=[unavailable(), unavailable(), deadline])
    values = [make_window(start_index=64 * i).to_bytes() for i in range(3)]
    result = asyncio.run(_processor(model, observer).process(_batch(values)))
    assert len(result.predictions) == 3 and not result.dead_letters
    assert model.predict_batches == [3, 3, 3, 3]
    assert observer.retries == ["UNAVAILABLE", "UNAVAILABLE", "DEADLINE_EXCEEDED"]


def test_undecodable_records_become_dead_letters_beside_the_predictions() -> None:
    values = [
        make_window(start_index=0).to_bytes(),
        b"\x00garbage",
        make_window(start_index=64).to_bytes(),
    ]
    result = asyncio.run(_processor(FakeModel()).process(_batch(values)))
    assert [p.start_index for _, p in result.predictions] == [0, 64]
    [(entry, error)] = result.dead_letters
    assert entry.offset == 11 and entry.value == b"\x00garbage"
    assert isinstance(error, SchemaError)
    assert result.offsets == {("windows", 0): 13, ("windows", 1): 12}


def test_invalid_argument_is_bisected_down_to_the_bad_window() -> None:
    windows = [make_window(start_index=64 * i, seed=i) for i in range(8)]
    bad = windows[5].data.copy()
    model = FakeModel(reject=lambda w: np.array_equal(w, bad))
    result = asyncio.run(_processor(model).process(_batch([w.to_bytes() for w in windows])))
    assert sorted(p.start_index for _, p in result.predictions) == [
        64 * i for i in range(8) if i != 5
    ]
    [(entry, error)] = result.dead_letters
    assert entry.window is not None and entry.window.start_index == 320
    assert isinstance(error, ModelServerError) and error.code == "INVALID_ARGUMENT"
    assert len(model.predict_batches) <= 1 + 2 * 3  # log2(8) levels


@pytest.mark.parametrize(
    "code",
    ["NOT_FOUND", "FAILED_PRECONDITION", "INTERNAL", "UNKNOWN", "CANCELLED", "UNIMPLEMENTED"],
)
def test_errors_of_the_whole_model_are_retried_not_dead_lettered(
    code: str, caplog: pytest.LogCaptureFixture
) -> None:
    # E.g. NOT_FOUND while a rollout unloads the version: the stream must not turn into
    # dead letters; the batch waits for the server like during an outage.
    observer = Observer()
    gone = ModelServerError(code, "Servable not found", retriable=False)
    model = FakeModel(predict_failures=[gone, gone])
    values = [make_window(start_index=64 * i).to_bytes() for i in range(4)]
    with caplog.at_level(logging.ERROR, logger="services.inference.processing"):
        result = asyncio.run(_processor(model, observer).process(_batch(values)))
    assert len(result.predictions) == 4 and not result.dead_letters
    assert model.predict_batches == [4, 4, 4]  # the same batch again, never bisected
    assert observer.retries == [code, code]
    assert [r.levelno for r in caplog.records] == [logging.ERROR] * 2
    assert code in caplog.records[0].getMessage()


def test_a_malformed_answer_is_bisected_down_to_the_window_that_causes_it() -> None:
    windows = [make_window(start_index=64 * i, seed=i) for i in range(4)]
    bad = windows[2].data.copy()

    class Malformed(FakeModel):
        async def predict(self, batch: npt.NDArray[np.float32]) -> ModelOutput:
            output = await super().predict(batch)
            if not any(np.array_equal(w, bad) for w in batch):
                return output
            # One row short: the answer does not fit the request.
            return replace(output, probabilities=output.probabilities[1:])

    model = Malformed()
    result = asyncio.run(_processor(model).process(_batch([w.to_bytes() for w in windows])))
    assert sorted(p.start_index for _, p in result.predictions) == [0, 64, 192]
    [(entry, error)] = result.dead_letters
    assert entry.window is not None and entry.window.start_index == 128
    assert isinstance(error, ModelResponseError)


def test_fingerprint_mismatch_goes_to_the_dlq_never_predicted() -> None:
    values = [
        make_window(start_index=0).to_bytes(),
        make_window(start_index=64, fingerprint="f00").to_bytes(),
    ]
    result = asyncio.run(_processor(FakeModel()).process(_batch(values)))
    assert [p.start_index for _, p in result.predictions] == [0]
    [(entry, error)] = result.dead_letters
    assert isinstance(error, FingerprintMismatchError) and entry.offset == 11


def test_stop_abandons_a_batch_waiting_for_a_retry() -> None:
    async def scenario() -> None:
        model = FakeModel(predict_failures=[unavailable()] * 1000)
        processor = BatchProcessor(
            model, "har", BackoffPolicy(initial_s=0.05, max_s=0.05), Observer()
        )
        task = asyncio.ensure_future(processor.process(_batch([make_window().to_bytes()])))
        await asyncio.sleep(0.2)
        assert not task.done()
        processor.request_stop()
        with pytest.raises(BatchAbandonedError):
            await asyncio.wait_for(task, 1.0)
        assert 2 <= len(model.predict_batches) <= 10

    asyncio.run(scenario())


def test_batcher_and_processor_together_commit_only_taken_offsets() -> None:
    # A full batch leaves the rest queued; its offsets cover only what it took.
    batcher: MicroBatcher[Consumed] = MicroBatcher(2, 1.0, lambda: 0.0)
    for offset in range(3):
        batcher.add(
            decode("windows", 0, offset, None, make_window(start_index=64 * offset).to_bytes())
        )
    result = asyncio.run(_processor(FakeModel()).process(batcher.take()))
    assert result.offsets == {("windows", 0): 2}
    assert len(batcher) == 1
