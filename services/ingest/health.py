"""Is the raw-topic producer still getting acknowledgements? Pure: clock readings are passed
in, no Kafka import; :mod:`services.ingest.producer` feeds it and acts on its verdict.

Why this exists (measured, kafka-python 3.0.12, the pinned version): when a batch that was
already sent to the broker expires in the producer (the broker stopped answering for longer
than ``delivery_timeout_ms``, e.g. a 30 s SIGSTOP of the broker), the sender calls
``TransactionManager.reset_producer_id()``. That sets the producer id to -1 but leaves the
idempotence state machine in READY; the sender then waits for a producer id before sending
anything (``not has_producer_id()`` gate in ``Sender.run_once``), while
``init_producer_id()`` only asks for one from the UNINITIALIZED state, to which no
transition is allowed. No InitProducerId request is ever sent: every later record waits in
the accumulator forever (it does not even expire, the expiry check is behind the same
gate), ``flush`` never returns, and a brand-new producer on the same broker is acknowledged
in milliseconds. Nothing in the client's public API gets it out of that state, so the sink
detects it from the outside (sends not acknowledged within the produce timeout while the
broker answers metadata requests) and replaces the producer. The same detection covers any
other way a client can wedge.

The verdict, from what the sink reports:

- ``HEALTHY``: every record handed over in the last ``timeout_s`` was acknowledged, or some
  record was acknowledged within ``timeout_s`` (the producer is making progress).
- ``STALLED``: nothing acknowledged for ``timeout_s`` while records were outstanding (or the
  last one failed), and the broker is not known to answer: a broker outage, during which a
  new producer would not do better. Readiness fails.
- ``WEDGED``: stalled, and the broker has been answering probes for ``timeout_s`` too, long
  enough for a healthy producer to have delivered its retries: replace the producer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    HEALTHY = "healthy"
    STALLED = "stalled"
    WEDGED = "wedged"


@dataclass
class ProducerHealth:
    """Acknowledgement bookkeeping of one producer instance (monotonic seconds)."""

    #: How long records may go unacknowledged before the producer is suspect (seconds).
    timeout_s: float
    #: Records handed to the producer whose delivery has not completed either way.
    outstanding: int = 0
    #: Since when nothing was acknowledged although something was outstanding or failed;
    #: None while the producer is keeping up.
    unacked_since: float | None = None
    #: Since when the broker has answered every probe; None if the last probe failed.
    broker_since: float | None = None
    acknowledged: int = 0
    failed: int = 0

    def sent(self, now: float) -> None:
        """A record was handed to the producer."""
        self.outstanding += 1
        if self.unacked_since is None:
            self.unacked_since = now

    def acked(self, now: float) -> None:
        """The broker acknowledged a record: the producer works. The clock restarts for the
        records still outstanding."""
        self.outstanding = max(0, self.outstanding - 1)
        self.acknowledged += 1
        self.unacked_since = now if self.outstanding else None

    def delivery_failed(self, now: float) -> None:
        """The producer gave up on a record (expired, or a non-retriable error). That is no
        sign of life: ``unacked_since`` stays, so a producer whose last word was a failure
        is checked even when no traffic follows (a load balancer stops sending to a replica
        that is not ready)."""
        self.outstanding = max(0, self.outstanding - 1)
        self.failed += 1
        if self.unacked_since is None:
            self.unacked_since = now

    def broker_answered(self, now: float, answered: bool) -> None:
        """Result of a metadata probe of the broker."""
        if not answered:
            self.broker_since = None
        elif self.broker_since is None:
            self.broker_since = now

    def unacked_for(self, now: float) -> float:
        """Seconds without an acknowledgement while one was due (0 if none is due)."""
        return 0.0 if self.unacked_since is None else max(0.0, now - self.unacked_since)

    def needs_probe(self) -> bool:
        """Whether the broker's state matters now (something is waiting for an ack)."""
        return self.unacked_since is not None

    def verdict(self, now: float) -> Verdict:
        if self.unacked_for(now) < self.timeout_s:
            return Verdict.HEALTHY
        if self.broker_since is not None and now - self.broker_since >= self.timeout_s:
            return Verdict.WEDGED
        return Verdict.STALLED

    def problem(self, now: float) -> str | None:
        """Why the producer is not fit to take records (readiness), or None."""
        verdict = self.verdict(now)
        if verdict is Verdict.HEALTHY:
            return None
        broker = (
            "while the broker answers metadata requests: the producer is wedged and is being "
            "replaced"
            if verdict is Verdict.WEDGED
            else "and the broker is not answering"
            if self.broker_since is None
            else "although the broker answers again"
        )
        return (
            f"producer: no acknowledgement for {self.unacked_for(now):.1f} s "
            f"({self.outstanding} record(s) outstanding) {broker}"
        )
