"""The whole harstream pipeline on one machine: embedded broker, model server and every
service as its own process, on free ports. Used by ``harstream demo``, the end-to-end tests
and the fault-injection suite (``harstream faults``), which kills, pauses, restarts and adds
workers through the process-control methods here; production runs the same services against
Apache Kafka and TF Serving."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from pydantic import SecretStr

from services.alerting.auth import create_operator, rotate_key, set_password
from services.alerting.store import open_store
from services.common.broker import EmbeddedBroker, free_port
from services.common.kafka.topics import create_topics
from services.common.operators import OperatorExistsError, Role
from services.common.processes import ServiceProcess, ServiceStartError
from services.modelserver.process import ModelServerProcess
from shared.settings import StreamSettings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_BASE = REPO_ROOT / "models" / "har"

#: Services a second (third, ...) worker can be added to: they scale out per partition.
SCALABLE = ("preprocess", "inference", "alerting")
#: Workers that may start with none running (:attr:`PipelineConfig.workers`), e.g. so a
#: benchmark can fill a topic first and then time how fast N workers drain it.
DEFERRABLE = ("preprocess", "inference")
#: The operator the pipeline creates in its alert store (a carer: it may acknowledge).
DEMO_OPERATOR = "demo-carer"
#: The model server shares the machine's few cores with every other service here: one thread
#: per TensorFlow op (TF Serving's --tensorflow_intra_op_parallelism=1) costs less CPU per
#: window for the small batches of live traffic (batch 8: -22 %, batch 32: -10 %, batch 64:
#: -4 %), since the hybrid's recurrent ops are too small to split; calls still run side by
#: side (the inter-op pool is left to TensorFlow). Measured in reports/performance.md ("The
#: model server's threads"). The environment or ``service_env`` may set it otherwise.
LOCAL_MODELSERVER_ENV = {"HARSTREAM_MODELSERVER_TENSORFLOW_INTRA_OP_PARALLELISM": "1"}
#: Partitions per topic, 2 rather than more: the local broker lists every stored batch of a
#: partition on each fetch, and every consumer group fetches each partition it owns, so each
#: partition costs it CPU that Apache Kafka (production, k8s: 8 and up) does not spend.
#: Measured side by side, 1,250 live devices for 3 minutes: 2 partitions held (broker 0.37
#: CPU-s/s), 4 failed (0.46-0.48), reports/performance.md. Two still lets two workers of a
#: kind share the work (the fault runs); the scale-out benchmark asks for 8.
LOCAL_PARTITIONS = 2
#: Ingest writes raw bundles here (``raw_bundle_linger_ms``, see ``shared.messages.raw``):
#: the packets bound for one raw partition while its previous bundle awaits acknowledgement
#: (at most 50 ms) go as one Kafka record. The local broker's CPU grows with the records and
#: batches it stores and faust spends its overhead per record, so one ingest writing to 2
#: partitions at 1,000 packets/s sends one record per ~15-25 packets; packets of a fleet
#: quieter than one per partition per acknowledgement go at once, alone. Measured in
#: reports/performance.md ("Raw bundles").
#: Deployments on Apache Kafka keep the setting's default (0): with many partitions per
#: ingest replica a bundle would rarely hold more than one packet. The environment or
#: ``service_env`` may set it otherwise.
LOCAL_INGEST_ENV = {"HARSTREAM_INGEST_RAW_BUNDLE_LINGER_MS": "50"}
#: Stop order: upstream first, so downstream can drain what is in flight before it stops.
_STOP_ORDER = ("ingest", "preprocess", "inference", "alerting", "history", "modelserver")


def _unless_set(env: Mapping[str, str]) -> dict[str, str]:
    """The local pipeline's own settings ``env``, less those the environment sets."""
    return {k: v for k, v in env.items() if k not in os.environ}


@dataclass
class PipelineConfig:
    workdir: Path
    model_base: Path = DEFAULT_MODEL_BASE
    topic_prefix: str = "harstream"
    partitions: int = LOCAL_PARTITIONS
    #: Extra env for individual services, e.g. ``{"alerting": {"HARSTREAM_ALERTING_...": "5"}}``.
    #: Added workers (``alerting-2``) get the env of their kind.
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    startup_timeout_s: float = 120.0
    #: Workers of a :data:`SCALABLE` kind at start (default 1 each); 0 is allowed for the
    #: :data:`DEFERRABLE` kinds, which :meth:`Pipeline.add_worker` starts later.
    workers: Mapping[str, int] = field(default_factory=dict)

    def worker_count(self, kind: str) -> int:
        count = self.workers.get(kind, 1)
        if count < (0 if kind in DEFERRABLE else 1):
            raise ValueError(f"{count} {kind} workers: the pipeline needs at least one")
        return count


class Pipeline:
    """Start with ``with Pipeline(config) as p:``; everything stops (SIGTERM) on exit.

    Process control for fault injection: :meth:`kill` (SIGKILL) and :meth:`restart` (same
    environment, same state directory, as an orchestrator would), :meth:`pause` /
    :meth:`resume` (SIGSTOP / SIGCONT, also of the broker: Tansu keeps its data in memory,
    so it is paused, never killed), :meth:`add_worker` / :meth:`remove_worker` (a second
    worker joining and leaving the consumer group) and :meth:`wait_ready`.
    """

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.logs = config.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(log_path=self.logs / "broker.log")
        self.ports = {
            "grpc": free_port(),
            "modelserver_rest": free_port(),
            "ingest": free_port(),
            "ingest_metrics": free_port(),
            "preprocess_metrics": free_port(),
            "inference_metrics": free_port(),
            "alerting": free_port(),
            "history": free_port(),
        }
        self.registry_url = f"sqlite:///{config.workdir / 'devices.db'}"
        self.alert_store_url = f"sqlite:///{config.workdir / 'alerts.db'}"
        self.history_store_url = f"sqlite:///{config.workdir / 'history.db'}"
        self.services: dict[str, ServiceProcess] = {}
        self.settings: StreamSettings | None = None
        #: API key of :data:`DEMO_OPERATOR` (set by :meth:`start`).
        self.operator_key: SecretStr | None = None
        #: Password of :data:`DEMO_OPERATOR` for the web console (set by :meth:`start`).
        self.operator_password: SecretStr | None = None
        self._model_server: ModelServerProcess | None = None
        self._paused: set[str] = set()

    # -- addresses -----------------------------------------------------------------------
    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingest']}"

    @property
    def alerting_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['alerting']}"

    @property
    def history_url(self) -> str:
        """The activity-history API (services.history; the alert API's operators)."""
        return f"http://127.0.0.1:{self.ports['history']}"

    @property
    def console_url(self) -> str:
        """The web console (services.console), served by the alerting worker."""
        return f"{self.alerting_url}/console/"

    @property
    def model_server_target(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def metrics_urls(self) -> dict[str, str]:
        """``/metrics`` of every service by name (added workers included while they run)."""
        urls = {
            "ingest": f"http://127.0.0.1:{self.ports['ingest_metrics']}/metrics",
            "preprocess": self._metrics_url("preprocess"),
            "inference": f"http://127.0.0.1:{self.ports['inference_metrics']}/metrics",
            "alerting": f"{self.alerting_url}/metrics",
            "history": f"{self.history_url}/metrics",
            "modelserver": f"http://127.0.0.1:{self.ports['modelserver_rest']}/monitoring/prometheus/metrics",
        }
        for name in self.services:
            if name not in urls and _kind_of(name) in SCALABLE:
                urls[name] = self._metrics_url(name)
        return urls

    def pids(self) -> dict[str, int]:
        """Process id of the ``broker`` and of every running service by name (for CPU and
        memory accounting, e.g. ``benchmarks.capacity``)."""
        pids = {name: s.pid for name, s in self.services.items() if s.running()}
        if self.broker.pid is not None:
            pids["broker"] = self.broker.pid
        return pids

    def alert_api_headers(self) -> dict[str, str]:
        """``Authorization`` of :data:`DEMO_OPERATOR` for the alert API."""
        if self.operator_key is None:
            raise ServiceStartError("the pipeline has not started: no operator yet")
        return {"Authorization": f"Bearer {self.operator_key.get_secret_value()}"}

    def http_url(self, name: str) -> str:
        """Base URL of an alerting worker's HTTP API (``alerting``, ``alerting-2``, ...)."""
        if _kind_of(name) != "alerting":
            raise ValueError(f"{name} has no HTTP API here")
        return f"http://127.0.0.1:{self.ports[_port_key(name)]}"

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Pipeline:
        t0 = time.monotonic()
        self.broker.start()
        self.settings = StreamSettings(
            kafka_bootstrap_servers=self.broker.bootstrap_servers,
            kafka_profile="tansu",
            topic_prefix=self.config.topic_prefix,
            topic_partitions=self.config.partitions,
        )
        create_topics(self.settings)
        self.operator_key = self._demo_operator()
        timeout = self.config.startup_timeout_s
        # The model server and the workers import TensorFlow / faust: start them all, then wait.
        self._model_server = ModelServerProcess(
            self.config.model_base,
            grpc_port=self.ports["grpc"],
            rest_port=self.ports["modelserver_rest"],
            poll_interval_s=2.0,
            log_path=self.logs / "modelserver.log",
        )
        self._model_server.service.env.update(
            {
                **_unless_set(LOCAL_MODELSERVER_ENV),
                **self.config.service_env.get("modelserver", {}),
            }
        )
        self.services["modelserver"] = self._model_server.launch().service
        self._spawn("ingest")
        self._spawn("history")
        # The inference worker starts beside the model server too: its start-up check waits
        # for the model to be served (``startup_timeout_s``), as it must on Kubernetes, where
        # nothing orders pods. Started after the server, it was ready ~8 s later and the
        # pipeline's start took 17.1 s; beside it, 12.8-14.3 s.
        for kind in ("preprocess", "alerting", "inference"):
            for _ in range(self.config.worker_count(kind)):
                self.add_worker(kind)
        self._model_server.wait_available(timeout)
        for name in list(self.services):
            if name != "modelserver":
                self.wait_ready(name, timeout)
        logger.info("pipeline up in %.1f s (logs in %s)", time.monotonic() - t0, self.logs)
        return self

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every service, then the broker; their exit codes."""
        # A stopped process cannot handle SIGTERM: continue everything first.
        for name in list(self._paused):
            self.resume(name)
        extra = [n for n in self.services if n not in _STOP_ORDER]
        codes: dict[str, int | None] = {}
        for name in (*extra, *_STOP_ORDER):
            service = self.services.pop(name, None)
            if service is not None:
                codes[name] = service.stop()
                logger.info("%s stopped (exit code %s)", name, codes[name])
        self.broker.stop()
        return codes

    def __enter__(self) -> Pipeline:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- process control (fault injection) -----------------------------------------------
    def kill(self, name: str) -> None:
        """SIGKILL a service (no clean-up of any kind); :meth:`restart` brings it back."""
        self._service(name).kill()
        self._paused.discard(name)
        logger.info("%s killed (SIGKILL)", name)

    def restart(self, name: str) -> None:
        """Start a killed or stopped service again with the same environment, ports and
        state directory (what an orchestrator does); does not wait (see :meth:`wait_ready`)."""
        service = self._service(name)
        if service.running():
            raise ServiceStartError(f"{name} is still running")
        service.start()

    def pause(self, name: str) -> None:
        """SIGSTOP a service or the ``broker``: it keeps its sockets and memory but answers
        nothing, like a process stuck in a long GC pause or a frozen VM."""
        os.kill(self._pid(name), signal.SIGSTOP)
        self._paused.add(name)
        logger.info("%s paused (SIGSTOP)", name)

    def resume(self, name: str) -> None:
        os.kill(self._pid(name), signal.SIGCONT)
        self._paused.discard(name)
        logger.info("%s resumed (SIGCONT)", name)

    def add_worker(self, kind: str) -> str:
        """Start another worker of ``kind`` (``preprocess``, ``inference`` or ``alerting``)
        in the same consumer group: its own ports and (preprocess) state directory; alerting
        workers share the alert store. Returns its name (``preprocess`` for the first,
        then ``preprocess-2``, ...); does not wait."""
        if kind not in SCALABLE:
            raise ValueError(f"cannot add a {kind} worker (only {', '.join(SCALABLE)})")
        name, n = kind, 1
        while name in self.services:
            n += 1
            name = f"{kind}-{n}"
        if _port_key(name) not in self.ports:
            self.ports[_port_key(name)] = free_port()
        self._spawn(name)
        return name

    def remove_worker(self, name: str) -> int | None:
        """Stop an added worker cleanly (SIGTERM: it leaves the group); its exit code."""
        if name in _STOP_ORDER:
            raise ValueError(f"{name} is not an added worker")
        code = self.services.pop(name).stop()
        logger.info("%s stopped (exit code %s)", name, code)
        return code

    def wait_ready(self, name: str, timeout_s: float) -> None:
        """Until ``name`` serves: /readyz for HTTP services, the metrics port for preprocess,
        assigned partitions for inference (it has joined its group), AVAILABLE for the model
        server. Raises :class:`ServiceStartError` if it exits or the time runs out."""
        service = self._service(name)
        kind = _kind_of(name)
        if kind == "ingest":
            service.wait_http(f"{self.ingest_url}/readyz", timeout_s)
        elif kind == "alerting":
            service.wait_http(f"{self.http_url(name)}/readyz", timeout_s)
        elif kind == "history":
            service.wait_http(f"{self.history_url}/readyz", timeout_s)
        elif kind == "preprocess":
            service.wait_port(self.ports[_port_key(name)], timeout_s)
        elif kind == "inference":
            # Windows produced before inference joined its group would wait for the join
            # (~3 s on Tansu) and show up as latency: ready once it owns its partitions.
            service.wait_metric(
                self.metrics_urls()[name],
                "harstream_inference_partitions_assigned",
                timeout_s,
            )
        elif kind == "modelserver":
            assert self._model_server is not None
            self._model_server.wait_available(timeout_s)
        else:
            raise ValueError(f"unknown service {name}")

    # -- helpers -------------------------------------------------------------------------
    def _demo_operator(self) -> SecretStr:
        """Create :data:`DEMO_OPERATOR` in the alert store (a new key if a reused workdir
        has it already: keys are shown once), with a fresh console password."""
        password = secrets.token_urlsafe(12)
        self.operator_password = SecretStr(password)
        store = open_store(self.alert_store_url)
        try:
            try:
                _, key = create_operator(store, DEMO_OPERATOR, Role.CARER, password)
            except OperatorExistsError:
                _, key = rotate_key(store, DEMO_OPERATOR)
                set_password(store, DEMO_OPERATOR, password)
            return key
        finally:
            store.close()

    def _service(self, name: str) -> ServiceProcess:
        try:
            return self.services[name]
        except KeyError:
            raise ValueError(f"no service {name} in this pipeline") from None

    def _pid(self, name: str) -> int:
        if name == "broker":
            if self.broker.pid is None:
                raise ServiceStartError("the broker is not running")
            return self.broker.pid
        return self._service(name).pid

    def _metrics_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[_port_key(name)]}/metrics"

    def _stream_env(self, service: str) -> dict[str, str]:
        assert self.settings is not None
        prefix = f"HARSTREAM_{service}_"
        return {
            f"{prefix}KAFKA_BOOTSTRAP_SERVERS": self.settings.kafka_bootstrap_servers,
            f"{prefix}KAFKA_PROFILE": self.settings.kafka_profile,
            f"{prefix}TOPIC_PREFIX": self.settings.topic_prefix,
            f"{prefix}TOPIC_PARTITIONS": str(self.settings.topic_partitions),
        }

    def _env(self, name: str) -> dict[str, str]:
        """The environment of service ``name`` (``preprocess-2`` gets its own port and
        state directory; everything else as its kind)."""
        kind = _kind_of(name)
        port = str(self.ports[_port_key(name)])
        if kind == "ingest":
            return {
                **self._stream_env("INGEST"),
                "HARSTREAM_INGEST_HOST": "127.0.0.1",
                "HARSTREAM_INGEST_PORT": port,
                # /metrics has its own listener (not the device port).
                "HARSTREAM_INGEST_METRICS_HOST": "127.0.0.1",
                "HARSTREAM_INGEST_METRICS_PORT": str(self.ports["ingest_metrics"]),
                "HARSTREAM_INGEST_REGISTRY_URL": self.registry_url,
                # Replayed devices send up to ~50x faster than real time; the production
                # per-device limit (800 samples/s) would throttle them.
                "HARSTREAM_INGEST_RATE_LIMIT_SAMPLES_PER_S": "100000",
                "HARSTREAM_INGEST_RATE_LIMIT_BURST_SAMPLES": "200000",
                **_unless_set(LOCAL_INGEST_ENV),
            }
        if kind == "preprocess":
            # Two faust workers on one machine need two RocksDB directories.
            state = "preprocess-state" if name == kind else f"{name.replace('-', '-state-')}"
            return {
                **self._stream_env("PREPROCESS"),
                "HARSTREAM_PREPROCESS_DATA_DIR": str(self.config.workdir / state),
                "HARSTREAM_PREPROCESS_METRICS_HOST": "127.0.0.1",
                "HARSTREAM_PREPROCESS_METRICS_PORT": port,
            }
        if kind == "alerting":
            return {
                **self._stream_env("ALERTING"),
                "HARSTREAM_ALERTING_HOST": "127.0.0.1",
                "HARSTREAM_ALERTING_PORT": port,
                "HARSTREAM_ALERTING_STORE_URL": self.alert_store_url,
                # Devices may start sending before alerting has joined its group.
                "HARSTREAM_ALERTING_AUTO_OFFSET_RESET": "earliest",
                # The console's device page asks the history service, as the demo operator.
                "HARSTREAM_ALERTING_CONSOLE__HISTORY_URL": self.history_url,
                "HARSTREAM_ALERTING_CONSOLE__HISTORY_API_KEY": (
                    self.operator_key.get_secret_value() if self.operator_key else ""
                ),
                # The console's pipeline page reads every other service's /metrics.
                "HARSTREAM_ALERTING_CONSOLE__METRICS_URLS": ",".join(
                    f"{n}={u}" for n, u in self.metrics_urls().items() if _kind_of(n) != "alerting"
                ),
            }
        if kind == "history":
            return {
                **self._stream_env("HISTORY"),
                "HARSTREAM_HISTORY_HOST": "127.0.0.1",
                "HARSTREAM_HISTORY_PORT": port,
                "HARSTREAM_HISTORY_STORE_URL": self.history_store_url,
                # Time zones from the devices' registry; operators from the alert store.
                "HARSTREAM_HISTORY_REGISTRY_URL": self.registry_url,
                "HARSTREAM_HISTORY_OPERATORS_STORE_URL": self.alert_store_url,
            }
        if kind == "inference":
            return {
                **self._stream_env("INFERENCE"),
                "HARSTREAM_INFERENCE_MODEL_SERVER_TARGET": self.model_server_target,
                "HARSTREAM_INFERENCE_METRICS_HOST": "127.0.0.1",
                "HARSTREAM_INFERENCE_METRICS_PORT": port,
            }
        raise ValueError(f"unknown service {name}")

    def _spawn(self, name: str) -> ServiceProcess:
        kind = _kind_of(name)
        extra = {**self.config.service_env.get(kind, {}), **self.config.service_env.get(name, {})}
        command = [kind]
        service = ServiceProcess.harstream(name, command, {**self._env(name), **extra}, self.logs)
        self.services[name] = service.start()
        return service


def _kind_of(name: str) -> str:
    """``alerting-2`` -> ``alerting``."""
    return name.split("-", 1)[0]


def _port_key(name: str) -> str:
    """Key of ``name``'s own port in :attr:`Pipeline.ports`."""
    kind = _kind_of(name)
    if kind in ("ingest", "alerting", "history"):
        return name.replace("-", "_")
    if kind in ("preprocess", "inference"):
        return f"{name.replace('-', '_')}_metrics"
    return name
