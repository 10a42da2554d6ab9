"""A Kafka worker (``harstream alerting``, ``harstream history``) as a real child process,
for tests that kill it with SIGKILL and start it again; and the waits around it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Self

from kafka import KafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from services.common.broker import free_port


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """``check()``'s first truthy result, polled every 0.1 s; AssertionError after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)


def all_committed(
    bootstrap_servers: str | list[str], group_id: str, topics: Iterable[str], partitions: int
) -> bool:
    """Whether ``group_id`` has committed every record of ``topics``."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False
    )
    try:
        tps = [TopicPartition(topic, p) for topic in topics for p in range(partitions)]
        ends = consumer.end_offsets(tps)
        return all((consumer.committed(tp) or 0) >= ends[tp] for tp in tps)
    finally:
        consumer.close()


class WorkerProcess:
    """``harstream <command>`` as a child process on a free port (``self.port``), its
    output appended to ``log``. Subclasses give the environment (:meth:`env`)."""

    command: ClassVar[str]

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        """The worker's HARSTREAM_* variables (on top of this process's environment)."""
        raise NotImplementedError

    def start(self) -> Self:
        """Start it and wait until its /readyz answers 200."""
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", self.command],
                env={**os.environ, **self.env()},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, 60, f"{self.command} ready (log {self.log})")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.command} exited: {self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metric(self, name: str) -> float:
        """A sample of the worker's /metrics (0 if absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(f"{name} "):
                    return float(line.split()[1])
        return 0.0

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
