"""Injecting a scenario's faults into a running :class:`Pipeline` at their scheduled moments.

The moments are the schedule's (seconds after the replay started); everything after an
injection waits for an event instead of a fixed time: a restarted service's readiness
(/readyz, its metrics port, inference's assigned partitions), alerting consuming predictions
again. Waits run in threads, so the replay keeps its real-time pace; processes are started from
the main thread only (children die with the thread that started them, see
``services.common.broker.die_with_parent``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from services.common.processes import ServiceStartError
from services.demo.pipeline import Pipeline
from services.faults.receiver import WebhookReceiver
from services.faults.records import FaultRecord
from services.faults.schedule import Fault, FaultKind

logger = logging.getLogger(__name__)

#: alerting has read predictions again (its counter starts at 0 in a new process).
ALERTING_CONSUMING = "harstream_alerting_predictions_total"
#: Partitions an alerting worker owns.
ALERTING_PARTITIONS = "harstream_alerting_partitions_assigned"


def gauge_reaches(url: str, name: str, value: float, timeout_s: float) -> bool:
    """Whether the Prometheus text at ``url`` shows ``name`` >= ``value`` within
    ``timeout_s`` (False also when the service does not export ``name``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith(name + " ") and float(line.split()[-1]) >= value:
                        return True
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.2)
    return False


class FaultController:
    def __init__(
        self, pipeline: Pipeline, receiver: WebhookReceiver, ready_timeout_s: float = 120.0
    ) -> None:
        self.pipeline = pipeline
        self.receiver = receiver
        self.ready_timeout_s = ready_timeout_s
        self.records: list[FaultRecord] = []
        self._added: dict[str, list[str]] = {}

    async def run(self, faults: Sequence[Fault], t0: float) -> list[FaultRecord]:
        """Apply ``faults`` in order, each at ``t0 + fault.at_s`` (``t0``: ``time.monotonic()``
        of the replay's start) or as soon as the previous one is done."""
        for fault in faults:
            delay = t0 + fault.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule's moment, not a wait for an event
            record = await self.apply(fault, t0)
            self.records.append(record)
            logger.info(
                "%s: lifted after %.1f s%s%s",
                fault.label,
                record.ended_at - record.started_at,
                ""
                if record.recovered_at is None
                else f", recovered {record.recovered_at - record.ended_at:.1f} s later",
                f" ({record.note})" if record.note else "",
            )
        return self.records

    async def apply(self, fault: Fault, t0: float) -> FaultRecord:
        late = time.monotonic() - t0 - fault.at_s
        logger.info("fault at %.1f s (%.1f s late): %s", fault.at_s, max(0.0, late), fault.label)
        started = time.time()
        record = FaultRecord(fault, started, started)
        try:
            if fault.kind is FaultKind.KILL:
                await self._kill(fault.target, record)
            elif fault.kind is FaultKind.PAUSE:
                self.pipeline.pause(fault.target)
                try:
                    await asyncio.sleep(fault.duration_s)  # the fault's scheduled length
                finally:
                    self.pipeline.resume(fault.target)
                record.ended_at = time.time()
            elif fault.kind is FaultKind.JOIN:
                await self._join(fault.target, record)
            elif fault.kind is FaultKind.LEAVE:
                await self._leave(fault.target, record)
            else:
                await self.receiver.down()
                try:
                    await asyncio.sleep(fault.duration_s)
                finally:
                    await self.receiver.up()
                record.ended_at = time.time()
        except (ServiceStartError, OSError, ValueError) as exc:
            record.error = str(exc).splitlines()[0]
            logger.error("%s: %s", fault.label, record.error)
        if late > 1.0:
            record.note = (record.note + "; " if record.note else "") + f"started {late:.1f} s late"
        return record

    async def _kill(self, name: str, record: FaultRecord) -> None:
        self.pipeline.kill(name)  # SIGKILL and reap: milliseconds
        self.pipeline.restart(name)
        record.ended_at = time.time()
        await asyncio.to_thread(self.pipeline.wait_ready, name, self.ready_timeout_s)
        if name == "alerting":
            await self._alerting_consuming(name)
            record.recovered_at = time.time()

    async def _join(self, kind: str, record: FaultRecord) -> None:
        name = self.pipeline.add_worker(kind)
        self._added.setdefault(kind, []).append(name)
        record.ended_at = time.time()
        record.note = f"{name} started"
        await asyncio.to_thread(self.pipeline.wait_ready, name, self.ready_timeout_s)
        if kind == "alerting":
            await self._alerting_consuming(name)
            record.recovered_at = time.time()

    async def _leave(self, kind: str, record: FaultRecord) -> None:
        name = self._added[kind].pop()
        code = await asyncio.to_thread(self.pipeline.remove_worker, name)
        record.ended_at = time.time()
        record.note = f"{name} exited with {code}"
        if kind == "alerting":
            # Back to one worker: recovered once it owns every partition again.
            url = self.pipeline.metrics_urls()["alerting"]
            partitions = self.pipeline.config.partitions
            seen = await asyncio.to_thread(
                gauge_reaches, url, ALERTING_PARTITIONS, partitions, self.ready_timeout_s
            )
            if seen:
                record.recovered_at = time.time()
            else:
                record.note += f"; {ALERTING_PARTITIONS} not {partitions} in time (or absent)"

    async def _alerting_consuming(self, name: str) -> None:
        service = self.pipeline.services[name]
        url = self.pipeline.metrics_urls()[name]
        await asyncio.to_thread(service.wait_metric, url, ALERTING_CONSUMING, self.ready_timeout_s)
