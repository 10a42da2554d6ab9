"""The fuzz suite, small: a few hundred hostile requests to ingest and one poison record of
each kind on every topic a worker consumes, against the whole local pipeline. The full size
is `harstream fuzz` (reports/fuzz.md). The poison tests share one run and each checks one
worker, so a failure names the worker that broke its promise."""

from __future__ import annotations

import pytest

from services.fuzz.poison import Delivery
from services.fuzz.report import http_section, topics_section
from services.fuzz.runner import TopicsResult, fuzz_http, fuzz_topics
from tests.fuzz.conftest import FuzzSetup

pytestmark = pytest.mark.integration


def test_hostile_requests_get_problem_documents_and_write_nothing(fuzz_setup: FuzzSetup) -> None:
    result = fuzz_http(fuzz_setup.target, fuzz_setup.fixture, total=500, seed=1)
    summary = "\n".join(http_section(result))
    tally = result.tally
    assert tally.requests >= 500
    assert set(tally.categories) >= {
        "valid", "json", "raw_body", "gzip", "content_type", "headers", "auth", "oversized",
        "truncated", "disconnect", "parser", "msgpack", "batch", "schemathesis", "replay",
    }, summary  # fmt: skip
    # the gateway path gets accepted packets too, and refusals of every kind
    assert tally.categories["batch"].statuses["202"] + tally.categories["batch"].statuses["207"]
    assert tally.categories["msgpack"].statuses["202"] > 0, summary
    assert tally.server_errors == 0, summary
    assert tally.non_problem_refusals == 0, summary
    assert tally.failures == 0, summary
    assert sum(tally.accepted.values()) > 0, summary  # the accounting below means something
    assert tally.categories["replay"].statuses["202"] > 0, summary
    assert (result.refused_records, result.missing_records) == (0, 0), summary
    assert not result.schemathesis_failures, summary
    assert result.schemathesis_cases > 50, summary
    assert all(result.health.values()), summary


@pytest.fixture(scope="module")
def poison(fuzz_setup: FuzzSetup) -> TopicsResult:
    pipeline = fuzz_setup.pipeline
    return fuzz_topics(
        fuzz_setup.target,
        fuzz_setup.fixture,
        lambda: {name: s.running() for name, s in pipeline.services.items()},
        per_kind=1,
        seed=1,
        wait_s=20.0,
    )


def not_dead_lettered(result: TopicsResult, topic: str, stage: str) -> list[Delivery]:
    deliveries = [d for d in result.deliveries if d.record.topic == topic and d.stage == stage]
    assert deliveries, f"no {stage} records produced on {topic}"
    return [d for d in deliveries if not d.dead_letters]


@pytest.mark.parametrize(
    ("topic", "worker"),
    [("raw", "preprocess"), ("windows", "inference"), ("predictions", "alerting")],
)
def test_poison_is_dead_lettered(
    poison: TopicsResult, fuzz_setup: FuzzSetup, topic: str, worker: str
) -> None:
    name = getattr(fuzz_setup.target.topics, topic)
    missing = not_dead_lettered(poison, name, "poison")
    assert not missing, "\n".join(topics_section(poison))
    services = {s for d in poison.deliveries if d.record.topic == name for s, _ in d.dead_letters}
    assert worker in services
    assert poison.workers_alive["poison"][worker], "\n".join(topics_section(poison))


def test_huge_poison_values_are_dead_lettered_and_stop_no_worker(
    poison: TopicsResult, fuzz_setup: FuzzSetup
) -> None:
    topics = fuzz_setup.target.topics
    summary = "\n".join(topics_section(poison))
    for name in (topics.raw, topics.windows, topics.predictions):
        assert not not_dead_lettered(poison, name, "huge"), summary
    assert all(poison.workers_alive["huge"].values()), summary


def test_valid_traffic_flows_before_and_after_the_poison(poison: TopicsResult) -> None:
    summary = "\n".join(topics_section(poison))
    assert not poison.unproduced, summary
    assert poison.predictions_before > 0, summary
    assert poison.predictions_after > 0, summary
