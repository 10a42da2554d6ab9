"""A local MQTT door for the demo: a private Mosquitto (device credentials and ACLs as
``harstream devices mqtt-config`` writes them) and ``harstream mqtt-bridge``, as processes on
free ports, in front of a running pipeline's Kafka."""

from __future__ import annotations

import logging
import os
import pwd
import secrets
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from services.common.broker import free_port
from services.common.processes import ServiceProcess
from services.mqtt_bridge.mosquitto import (
    DEFAULT_BRIDGE_USER,
    BrokerOptions,
    password_hash,
    render_acl,
    render_conf,
    render_password_file,
    usable_username,
)
from shared.settings import StreamSettings

logger = logging.getLogger(__name__)


class LocalMqtt:
    """``with LocalMqtt(workdir, kafka, tokens) as mqtt:`` devices publish to
    ``mqtt.host:mqtt.port``; the bridge forwards to ``kafka``'s raw topic."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        kafka: StreamSettings,
        tokens: Mapping[str, str],
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.port = free_port()
        self.health_port = free_port()
        self._dir = workdir / "mosquitto"
        self._logs = workdir / "logs"
        self._kafka = kafka
        self._tokens = dict(tokens)
        self._timeout_s = startup_timeout_s
        self._bridge_password = secrets.token_urlsafe(32)
        self.services: dict[str, ServiceProcess] = {}

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    def _write_config(self) -> Path:
        self._dir.mkdir(parents=True, exist_ok=True)
        entries = {d: password_hash(t) for d, t in self._tokens.items() if usable_username(d)}
        entries[DEFAULT_BRIDGE_USER] = password_hash(self._bridge_password)
        passwd = self._dir / "passwd"
        passwd.touch(mode=0o600)
        passwd.write_text(render_password_file(entries))
        (self._dir / "acl").write_text(render_acl(DEFAULT_BRIDGE_USER))
        conf = render_conf(
            BrokerOptions(port=self.port, bind=self.host, config_dir=str(self._dir), data_dir=None)
        )
        # Started as root, mosquitto switches to user "mosquitto", who cannot read the
        # 0600 password file: stay this user (ignored when not root).
        conf += f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        path = self._dir / "mosquitto.conf"
        path.write_text(conf)
        return path

    def start(self) -> LocalMqtt:
        conf = self._write_config()
        broker = ServiceProcess(
            "mosquitto", ["mosquitto", "-c", str(conf)], {}, self._logs / "mosquitto.log"
        )
        self.services["mosquitto"] = broker.start()
        broker.wait_port(self.port, self._timeout_s)
        k = self._kafka
        env = {
            "HARSTREAM_MQTT_BRIDGE_KAFKA_BOOTSTRAP_SERVERS": k.kafka_bootstrap_servers,
            "HARSTREAM_MQTT_BRIDGE_KAFKA_PROFILE": k.kafka_profile,
            "HARSTREAM_MQTT_BRIDGE_TOPIC_PREFIX": k.topic_prefix,
            "HARSTREAM_MQTT_BRIDGE_TOPIC_PARTITIONS": str(k.topic_partitions),
            "HARSTREAM_MQTT_BRIDGE_MQTT_HOST": self.host,
            "HARSTREAM_MQTT_BRIDGE_MQTT_PORT": str(self.port),
            "HARSTREAM_MQTT_BRIDGE_MQTT_PASSWORD": self._bridge_password,
            "HARSTREAM_MQTT_BRIDGE_HEALTH_PORT": str(self.health_port),
            "HARSTREAM_MQTT_BRIDGE_CLIENT_ID": f"harstream-mqtt-bridge-{self.port}",
        }
        bridge = ServiceProcess.harstream("mqtt-bridge", ["mqtt-bridge"], env, self._logs)
        self.services["mqtt-bridge"] = bridge.start()
        bridge.wait_http(f"{self.health_url}/readyz", self._timeout_s)
        logger.info("MQTT broker on %s:%d, bridge ready", self.host, self.port)
        return self

    def stop(self) -> None:
        # The bridge first: it finishes its batch while the broker is still there.
        for name in ("mqtt-bridge", "mosquitto"):
            service = self.services.pop(name, None)
            if service is not None:
                service.stop()

    def __enter__(self) -> LocalMqtt:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
