"""Ingest bundling the packets of a raw partition into one record (raw_bundle_linger_ms, on
in the local pipeline by default): the whole pipeline as separate processes gives the
windows it gives from single records (test_end_to_end), bit for bit, as the offline
preprocessor does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from services.demo.cli import register_devices
from services.demo.pipeline import Pipeline, PipelineConfig
from services.demo.replay import device_of
from services.demo.run import run_replay
from shared.dsp.preprocessor import StreamingPreprocessor
from shared.messages import RawPacket, WindowMessage
from shared.messages.raw import split_raw
from shared.settings import StreamSettings
from tests.integration.kafka_reading import read_topic

pytestmark = pytest.mark.integration

SPEED = 50.0


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    # The local pipeline's own setting (LOCAL_INGEST_ENV), whatever the environment says.
    config = PipelineConfig(workdir=tmp_path_factory.mktemp("bundles"), partitions=2)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("HARSTREAM_INGEST_RAW_BUNDLE_LINGER_MS", raising=False)
        with Pipeline(config) as running:
            yield running


def test_bundled_packets_give_the_offline_windows_bit_for_bit(pipeline, hapt_cache) -> None:  # type: ignore[no-untyped-def]
    # Enough devices per partition that packets come while a bundle is in flight.
    recordings = hapt_cache.load(subjects=[2, 4, 9, 10])[:8]
    devices = [device_of(r) for r in recordings]
    tokens = register_devices(pipeline.registry_url, [d.device_id for d in devices])
    result = asyncio.run(
        run_replay(pipeline, devices, tokens, SPEED, 50, console=None, drain_timeout_s=30)
    )
    assert result.load.packets_accepted == sum(-(-len(r.samples) // 50) for r in recordings)
    settings = pipeline.settings
    assert settings is not None

    for recording, device in zip(recordings, devices, strict=True):
        pre = StreamingPreprocessor()
        _, offline = pre.process(pre.new_state(), recording.samples)
        windows = {
            w.start_index: w
            for w in (
                WindowMessage.from_bytes(value)
                for _, value in read_topic(
                    settings, settings.topics.windows, len(offline), key=device.device_id.encode()
                )
            )
        }
        assert sorted(windows) == offline.start_indices.tolist()
        got = np.stack([windows[s].data for s in offline.start_indices])
        assert np.array_equal(got, offline.data)

    # The packets travelled in bundles, without keys, each in the partition it was built for.
    records = _raw_records(settings, result.load.packets_accepted)
    assert all(r.key is None and split_raw(r.value).partition == r.partition for r in records)
    assert max(len(split_raw(r.value).frames) for r in records) > 1


def _raw_records(settings: StreamSettings, packets: int, timeout_s: float = 30.0) -> list[Any]:
    """The raw topic's records, once they hold ``packets`` distinct packets."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    try:
        topic = settings.topics.raw
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        seen: set[tuple[str, int]] = set()
        deadline = time.monotonic() + timeout_s
        while len(seen) < packets:
            assert time.monotonic() < deadline, f"{len(seen)} of {packets} packets on {topic}"
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
                for record in batch:
                    for frame in split_raw(record.value).frames:
                        header = RawPacket.peek(frame)
                        seen.add((header.device_id, header.seq))
        return records
    finally:
        consumer.close()
