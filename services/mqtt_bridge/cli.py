"""``harstream mqtt-bridge``: the MQTT → Kafka bridge."""

from __future__ import annotations

import click


@click.command("mqtt-bridge")
@click.option(
    "--mqtt-host",
    default=None,
    help="MQTT broker [env HARSTREAM_MQTT_BRIDGE_MQTT_HOST, 127.0.0.1].",
)
@click.option(
    "--mqtt-port", type=int, default=None, help="[env HARSTREAM_MQTT_BRIDGE_MQTT_PORT, 1883]."
)
@click.option(
    "--health-port",
    type=int,
    default=None,
    help="/healthz, /readyz, /metrics port, 0 for none [env HARSTREAM_MQTT_BRIDGE_HEALTH_PORT, "
    "9104; bound to HARSTREAM_MQTT_BRIDGE_HEALTH_HOST, 127.0.0.1].",
)
def mqtt_bridge(mqtt_host: str | None, mqtt_port: int | None, health_port: int | None) -> None:
    """Bridge device packets from MQTT (harstream/v1/devices/<id>/packets, a shared
    subscription at QoS 1) to the Kafka raw topic, validated as HTTP ingest validates them.

    A message is acknowledged to the broker only after Kafka acknowledged its record (or,
    for a refused packet, its dead letter with the reason): while Kafka is down the bridge
    disconnects and the broker keeps the messages for it. Configured by
    HARSTREAM_MQTT_BRIDGE_* environment variables (Kafka ones too, e.g.
    HARSTREAM_MQTT_BRIDGE_KAFKA_BOOTSTRAP_SERVERS; the bridge's MQTT password in
    HARSTREAM_MQTT_BRIDGE_MQTT_PASSWORD or _MQTT_PASSWORD_FILE).
    """
    from pydantic import ValidationError  # noqa: PLC0415

    from services.mqtt_bridge.main import run  # noqa: PLC0415 - paho/aiokafka when serving
    from services.mqtt_bridge.settings import MqttBridgeSettings  # noqa: PLC0415

    overrides = {
        key: value
        for key, value in (
            ("mqtt_host", mqtt_host),
            ("mqtt_port", mqtt_port),
            ("health_port", health_port),
        )
        if value is not None
    }
    try:
        settings = MqttBridgeSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise click.UsageError(f"invalid mqtt-bridge settings: {exc}") from exc
    run(settings)
