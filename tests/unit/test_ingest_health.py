"""The producer-health verdict (pure)."""

from __future__ import annotations

from services.ingest.health import ProducerHealth, Verdict


def test_a_producer_keeping_up_is_healthy() -> None:
    health = ProducerHealth(timeout_s=5.0)
    assert health.verdict(0.0) is Verdict.HEALTHY and not health.needs_probe()
    health.sent(0.0)
    health.sent(1.0)
    assert health.needs_probe()
    health.acked(4.0)  # progress restarts the clock for the record still outstanding
    assert health.verdict(8.9) is Verdict.HEALTHY
    health.acked(9.0)
    assert health.outstanding == 0 and not health.needs_probe()
    assert health.verdict(100.0) is Verdict.HEALTHY and health.problem(100.0) is None


def test_no_ack_is_a_stall_until_the_broker_answers_long_enough() -> None:
    health = ProducerHealth(timeout_s=5.0)
    health.sent(0.0)
    health.broker_answered(0.5, answered=False)
    assert health.verdict(4.9) is Verdict.HEALTHY
    assert health.verdict(5.0) is Verdict.STALLED  # broker down: a new producer won't help
    problem = health.problem(5.0)
    assert problem is not None and "broker is not answering" in problem
    health.broker_answered(30.0, answered=True)  # the broker is back...
    assert health.verdict(34.9) is Verdict.STALLED  # ...a healthy producer retries by now
    assert health.verdict(35.0) is Verdict.WEDGED
    assert "wedged" in (health.problem(35.0) or "")
    health.broker_answered(36.0, answered=False)  # answering must be continuous
    assert health.verdict(36.0) is Verdict.STALLED


def test_a_broker_that_always_answered_makes_a_silent_producer_wedged_at_the_timeout() -> None:
    health = ProducerHealth(timeout_s=5.0)
    health.broker_answered(0.0, answered=True)
    health.sent(10.0)
    assert health.verdict(14.9) is Verdict.HEALTHY
    assert health.verdict(15.0) is Verdict.WEDGED


def test_a_failed_delivery_keeps_the_producer_under_watch_without_traffic() -> None:
    # Batches that expired are no sign of life: with no later traffic (a load balancer
    # stops sending to a replica that is not ready) the producer must still be checked.
    health = ProducerHealth(timeout_s=5.0)
    health.sent(0.0)
    health.delivery_failed(30.0)
    assert health.outstanding == 0 and health.needs_probe()
    health.broker_answered(31.0, answered=True)
    assert health.verdict(36.0) is Verdict.WEDGED
    health.sent(37.0)
    health.acked(37.1)  # one acknowledgement clears it
    assert health.verdict(37.1) is Verdict.HEALTHY and not health.needs_probe()
