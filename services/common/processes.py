"""Running harstream services as child processes (the demo, the model-server fixture, the
end-to-end tests)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from services.common.broker import die_with_parent, terminate, wait_for_port
from shared.errors import HarstreamError

logger = logging.getLogger(__name__)


class ServiceStartError(HarstreamError):
    """A child service exited or did not become ready in time."""


class ServiceProcess:
    """``harstream <command>`` in its own process, configured only by environment variables,
    with its output in ``log_path``."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def harstream(
        cls, name: str, command: list[str], env: Mapping[str, str], log_dir: Path
    ) -> ServiceProcess:
        return cls(name, cls.argv_of(command), env, log_dir / f"{name}.log")

    @staticmethod
    def argv_of(command: list[str]) -> list[str]:
        """``harstream <command>`` with this interpreter (no reliance on PATH)."""
        return [sys.executable, "-m", "services.cli", *command]

    def start(self) -> ServiceProcess:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # A new session: Ctrl-C in the terminal reaches the demo only, which then stops
            # the services in order instead of all of them dying at once.
            self._process = subprocess.Popen(
                die_with_parent(self.argv),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        logger.info("started %s (pid %d), log %s", self.name, self._process.pid, self.log_path)
        return self

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServiceStartError(f"{self.name} is not running")
        return self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_http(self, url: str, timeout_s: float) -> None:
        """Until ``url`` answers 200 (a readiness endpoint)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise ServiceStartError(
            f"{self.name} not ready at {url} after {timeout_s:.0f} s:\n{self.tail()}"
        )

    def wait_metric(self, url: str, name: str, timeout_s: float) -> None:
        """Until the Prometheus text at ``url`` shows ``name`` with a positive value
        (e.g. a consumer's assigned partitions: joined its group)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    for line in response.read().decode().splitlines():
                        if line.startswith(name + " ") and float(line.split()[-1]) > 0:
                            return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.2)
        raise ServiceStartError(f"{self.name}: {name} not > 0 at {url} after {timeout_s:.0f} s")

    def wait_port(self, port: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            if wait_for_port("127.0.0.1", port, 0.5):
                return
        raise ServiceStartError(
            f"{self.name} did not open port {port} in {timeout_s:.0f} s:\n{self.tail()}"
        )

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        process, self._process = self._process, None
        return terminate(process, timeout_s)

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise ServiceStartError(
                f"{self.name} exited with code {self._process.returncode}:\n{self.tail()}"
            )
