"""The whole harstream pipeline on one machine: embedded broker, model server and every
service as its own process, on free ports. Used by ``harstream demo`` and the end-to-end
tests; production runs the same services against Apache Kafka and TF Serving."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from services.common.broker import EmbeddedBroker, free_port
from services.common.kafka import create_topics
from services.common.processes import ServiceProcess
from services.modelserver.process import ModelServerProcess
from shared.settings import StreamSettings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_BASE = REPO_ROOT / "models" / "har"


@dataclass
class PipelineConfig:
    workdir: Path
    model_base: Path = DEFAULT_MODEL_BASE
    topic_prefix: str = "harstream"
    partitions: int = 4
    #: Extra env for individual services, e.g. ``{"alerting": {"HARSTREAM_ALERTING_...": "5"}}``.
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    startup_timeout_s: float = 120.0


class Pipeline:
    """Start with ``with Pipeline(config) as p:``; everything stops (SIGTERM) on exit."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.logs = config.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(log_path=self.logs / "broker.log")
        self.ports = {
            "grpc": free_port(),
            "modelserver_rest": free_port(),
            "ingest": free_port(),
            "preprocess_metrics": free_port(),
            "inference_metrics": free_port(),
            "alerting": free_port(),
        }
        self.registry_url = f"sqlite:///{config.workdir / 'devices.db'}"
        self.alert_store_url = f"sqlite:///{config.workdir / 'alerts.db'}"
        self.services: dict[str, ServiceProcess] = {}
        self.settings: StreamSettings | None = None

    # -- addresses -----------------------------------------------------------------------
    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingest']}"

    @property
    def alerting_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['alerting']}"

    @property
    def model_server_target(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def metrics_urls(self) -> dict[str, str]:
        return {
            "ingest": f"{self.ingest_url}/metrics",
            "preprocess": f"http://127.0.0.1:{self.ports['preprocess_metrics']}/metrics",
            "inference": f"http://127.0.0.1:{self.ports['inference_metrics']}/metrics",
            "alerting": f"{self.alerting_url}/metrics",
            "modelserver": f"http://127.0.0.1:{self.ports['modelserver_rest']}/monitoring/prometheus/metrics",
        }

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
        timeout = self.config.startup_timeout_s
        # The model server and the workers import TensorFlow / faust: start them all, then wait.
        model_server = ModelServerProcess(
            self.config.model_base,
            grpc_port=self.ports["grpc"],
            rest_port=self.ports["modelserver_rest"],
            poll_interval_s=2.0,
            log_path=self.logs / "modelserver.log",
        )
        model_server.service.env.update(self.config.service_env.get("modelserver", {}))
        self.services["modelserver"] = model_server.launch().service
        self._spawn(
            "ingest",
            ["ingest"],
            {
                **self._stream_env("INGEST"),
                "HARSTREAM_INGEST_HOST": "127.0.0.1",
                "HARSTREAM_INGEST_PORT": str(self.ports["ingest"]),
                "HARSTREAM_INGEST_REGISTRY_URL": self.registry_url,
                # Replayed devices send up to ~50x faster than real time; the production
                # per-device limit (800 samples/s) would throttle them.
                "HARSTREAM_INGEST_RATE_LIMIT_SAMPLES_PER_S": "100000",
                "HARSTREAM_INGEST_RATE_LIMIT_BURST_SAMPLES": "200000",
            },
        )
        self._spawn(
            "preprocess",
            ["preprocess"],
            {
                **self._stream_env("PREPROCESS"),
                "HARSTREAM_PREPROCESS_DATA_DIR": str(self.config.workdir / "preprocess-state"),
                "HARSTREAM_PREPROCESS_METRICS_HOST": "127.0.0.1",
                "HARSTREAM_PREPROCESS_METRICS_PORT": str(self.ports["preprocess_metrics"]),
            },
        )
        self._spawn(
            "alerting",
            ["alerting"],
            {
                **self._stream_env("ALERTING"),
                "HARSTREAM_ALERTING_HOST": "127.0.0.1",
                "HARSTREAM_ALERTING_PORT": str(self.ports["alerting"]),
                "HARSTREAM_ALERTING_STORE_URL": self.alert_store_url,
                # Devices may start sending before alerting has joined its group.
                "HARSTREAM_ALERTING_AUTO_OFFSET_RESET": "earliest",
            },
        )
        model_server.wait_available(timeout)
        # The inference worker checks the served model at start-up, so it starts after it.
        self._spawn(
            "inference",
            ["inference"],
            {
                **self._stream_env("INFERENCE"),
                "HARSTREAM_INFERENCE_MODEL_SERVER_TARGET": self.model_server_target,
                "HARSTREAM_INFERENCE_METRICS_HOST": "127.0.0.1",
                "HARSTREAM_INFERENCE_METRICS_PORT": str(self.ports["inference_metrics"]),
            },
        )
        self.services["ingest"].wait_http(f"{self.ingest_url}/readyz", timeout)
        self.services["alerting"].wait_http(f"{self.alerting_url}/readyz", timeout)
        self.services["preprocess"].wait_port(self.ports["preprocess_metrics"], timeout)
        # Windows produced before inference joined its group would wait for the join (~3 s
        # on Tansu) and show up as latency: start only once it owns its partitions.
        self.services["inference"].wait_metric(
            self.metrics_urls()["inference"], "harstream_inference_partitions_assigned", timeout
        )
        logger.info("pipeline up in %.1f s (logs in %s)", time.monotonic() - t0, self.logs)
        return self

    def stop(self) -> None:
        # Upstream first, so downstream can drain what is in flight before it stops.
        for name in ("ingest", "preprocess", "inference", "alerting", "modelserver"):
            service = self.services.pop(name, None)
            if service is not None:
                code = service.stop()
                logger.info("%s stopped (exit code %s)", name, code)
        self.broker.stop()

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

    # -- helpers -------------------------------------------------------------------------
    def _stream_env(self, service: str) -> dict[str, str]:
        assert self.settings is not None
        prefix = f"HARSTREAM_{service}_"
        return {
            f"{prefix}KAFKA_BOOTSTRAP_SERVERS": self.settings.kafka_bootstrap_servers,
            f"{prefix}KAFKA_PROFILE": self.settings.kafka_profile,
            f"{prefix}TOPIC_PREFIX": self.settings.topic_prefix,
            f"{prefix}TOPIC_PARTITIONS": str(self.settings.topic_partitions),
        }

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> ServiceProcess:
        extra = self.config.service_env.get(name, {})
        service = ServiceProcess.harstream(name, command, {**env, **extra}, self.logs)
        self.services[name] = service.start()
        return service
