"""`harstream ingest` as the demo runs it: a subprocess configured by env vars, stopped by
SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.common.broker import free_port, wait_for_port
from services.ingest.registry import SqliteRegistry
from services.ingest.settings import IngestSettings
from shared.messages.raw import RawPacket
from tests.integration.ingest_helpers import packet, read_raw

pytestmark = pytest.mark.integration

HARSTREAM = str(Path(sys.executable).with_name("harstream"))


def http(method: str, url: str, body: dict[str, Any] | None = None, token: str = "") -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_subprocess_serves_and_stops_cleanly_on_sigterm(
    stream_settings: Callable[..., Any], tmp_path: Path
) -> None:
    settings: IngestSettings = stream_settings(IngestSettings)
    registry = SqliteRegistry(tmp_path / "devices.db")
    _, token = registry.add("proc-1")
    port = free_port()
    env = {
        **os.environ,
        "HARSTREAM_INGEST_HOST": "127.0.0.1",
        "HARSTREAM_INGEST_PORT": str(port),
        "HARSTREAM_INGEST_METRICS_PORT": "0",  # (test_security_listeners covers it)
        "HARSTREAM_INGEST_REGISTRY_URL": f"sqlite:///{registry.path}",
        "HARSTREAM_INGEST_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "HARSTREAM_INGEST_KAFKA_PROFILE": "tansu",
        "HARSTREAM_INGEST_TOPIC_PREFIX": settings.topic_prefix,
    }
    log = tmp_path / "ingest.log"
    with log.open("wb") as out:
        process = subprocess.Popen([HARSTREAM, "ingest"], env=env, stdout=out, stderr=out)
    try:
        assert wait_for_port("127.0.0.1", port, 20), log.read_text()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while http("GET", f"{base}/readyz") != 200:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert http("POST", f"{base}/v1/packets", packet("proc-1"), token) == 202
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "ingest listening on http://127.0.0.1:" in text
    assert settings.topics.raw in text
    assert "closing the producer" in text
    assert "ingest stopped" in text
    assert "Traceback" not in text
    records = read_raw(settings, expected=1)
    assert [RawPacket.from_bytes(r.value).device_id for r in records] == ["proc-1"]
