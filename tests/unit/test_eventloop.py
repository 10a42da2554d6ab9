"""services.common.eventloop: which loop a service runs on, chosen by its settings."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest
import uvloop

from services.common import eventloop
from services.inference.settings import InferenceSettings
from services.ingest.settings import IngestSettings


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_a_service_runs_on_uvloop_unless_told_otherwise() -> None:
    assert IngestSettings().event_loop == "uvloop"
    assert isinstance(eventloop.run(_running_loop(), "uvloop"), uvloop.Loop)


def test_the_setting_selects_asyncio_s_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARSTREAM_INFERENCE_EVENT_LOOP", "asyncio")
    kind = InferenceSettings().event_loop
    assert kind == "asyncio"
    loop = eventloop.run(_running_loop(), kind)
    assert not isinstance(loop, uvloop.Loop)
    assert isinstance(loop, asyncio.BaseEventLoop)


def test_an_unknown_loop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARSTREAM_INGEST_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        IngestSettings()


def test_without_uvloop_a_service_falls_back_to_asyncio_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An import of a module set to None in sys.modules raises ImportError.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with caplog.at_level("WARNING", logger=eventloop.__name__):
        loop = eventloop.run(_running_loop(), "uvloop")
    assert not isinstance(loop, uvloop.Loop)
    assert "uvloop is not installed" in caplog.text


@pytest.fixture
def restored_policy() -> Iterator[None]:
    policy = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(policy)


@pytest.mark.usefixtures("restored_policy")
def test_installing_the_policy_makes_new_loops_uvloop_ones() -> None:
    eventloop.install_policy("uvloop")
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


@pytest.mark.usefixtures("restored_policy")
def test_installing_asyncio_leaves_the_policy_alone() -> None:
    before = asyncio.get_event_loop_policy()
    eventloop.install_policy("asyncio")
    assert asyncio.get_event_loop_policy() is before
