"""``harstream ingest`` (the HTTP service) and ``harstream devices`` (the device registry)."""

from __future__ import annotations

import importlib
import json
import sys
from datetime import UTC, datetime

import click

from services.ingest.errors import RegistryError
from services.ingest.registry import DeviceRecord, DeviceRegistry, open_registry
from services.ingest.settings import IngestSettings


@click.command()
@click.option("--host", default=None, help="Bind address [env HARSTREAM_INGEST_HOST, 0.0.0.0].")
@click.option("--port", type=int, default=None, help="HTTP port [env HARSTREAM_INGEST_PORT, 8080].")
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Prometheus /metrics port, 0 for none [env HARSTREAM_INGEST_METRICS_PORT, 9101; "
    "bound to HARSTREAM_INGEST_METRICS_HOST, 127.0.0.1].",
)
def ingest(host: str | None, port: int | None, metrics_port: int | None) -> None:
    """Run the HTTP ingest service: POST /v1/packets (a device) and POST /v1/packets:batch
    (a gateway forwarding many devices' packets) → Kafka raw topic. Bodies in JSON or
    MessagePack.

    Configured by HARSTREAM_INGEST_* environment variables, e.g.
    HARSTREAM_INGEST_KAFKA_BOOTSTRAP_SERVERS, HARSTREAM_INGEST_KAFKA_PROFILE,
    HARSTREAM_INGEST_TOPIC_PREFIX, HARSTREAM_INGEST_REGISTRY_URL. Also serves /healthz,
    /readyz, /openapi.json and /docs; /metrics is on a listener of its own (metrics_host,
    metrics_port). SIGTERM or SIGINT stops accepting connections, finishes in-flight
    requests and flushes the producer. Revoked devices are refused within
    token_cache_ttl_s (default 5 s).
    """
    from services.ingest.app import run  # noqa: PLC0415 - aiohttp/kafka only when serving

    overrides = {
        k: v
        for k, v in (("host", host), ("port", port), ("metrics_port", metrics_port))
        if v is not None
    }
    # Options over the environment, validated together (metrics_port must differ from port).
    settings = IngestSettings(**overrides)  # type: ignore[arg-type]
    run(settings)


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def registry_of(ctx: click.Context) -> DeviceRegistry:
    registry: DeviceRegistry = ctx.obj["registry"]
    return registry


#: The ``--registry`` option of ``harstream devices`` and ``harstream gateways``.
registry_option = click.option(
    "--registry",
    "registry_url",
    default=None,
    metavar="URL",
    help=(
        "Registry: sqlite:////ABS/PATH.db or postgresql://USER@HOST/DB [env "
        "HARSTREAM_INGEST_REGISTRY_URL, default sqlite:///$XDG_DATA_HOME/harstream/devices.db]."
    ),
)


def open_for_commands(ctx: click.Context, registry_url: str | None) -> None:
    """Open the registry for a command group's subcommands (:func:`registry_of`); it is
    closed after them."""
    settings = IngestSettings()
    try:
        registry = open_registry(registry_url or settings.registry_url, settings.registry_table)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    ctx.obj = {"registry": registry}
    ctx.call_on_close(registry.close)


@click.group()
@registry_option
@click.pass_context
def devices(ctx: click.Context, registry_url: str | None) -> None:
    """Register, list and revoke devices (tokens are shown once, stored only as hashes)."""
    open_for_commands(ctx, registry_url)


@devices.command("add")
@click.argument("device_id")
@click.option("--label", default="", help="Free text, e.g. the wearer's room or the model.")
@click.option(
    "--token",
    default=None,
    help="Use this token (≥ 32 characters) instead of a generated one, for scripted setups.",
)
@click.option(
    "--timezone",
    default="UTC",
    show_default=True,
    metavar="IANA_NAME",
    help="The wearer's time zone, e.g. Europe/Paris: daily activity summaries follow it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print {device_id, token, ...} as JSON.")
@click.pass_context
def add(
    ctx: click.Context,
    device_id: str,
    label: str,
    token: str | None,
    timezone: str,
    as_json: bool,
) -> None:
    """Register DEVICE_ID and print its token (the only time it is shown)."""
    try:
        record, token = registry_of(ctx).add(device_id, label, token, timezone)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({**record.public(), "token": token}))
        return
    click.echo(f"device {record.device_id} registered")
    click.echo(f"token: {token}")
    if sys.stdout.isatty():
        click.echo("Store the token now: it is not shown again (only its hash is kept).", err=True)


def _row(record: DeviceRecord) -> str:
    state = f"revoked {when(record.revoked_at)}" if record.revoked else "active"
    return (
        f"{record.device_id:<24} {state:<34} {when(record.created_at):<26} "
        f"{record.timezone:<20} {record.label}"
    )


@devices.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def list_devices(ctx: click.Context, as_json: bool) -> None:
    """List registered devices (never their tokens)."""
    try:
        records = registry_of(ctx).list()
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps([r.public() for r in records]))
        return
    click.echo(f"{'DEVICE':<24} {'STATE':<34} {'CREATED (UTC)':<26} {'TIME ZONE':<20} LABEL")
    for record in records:
        click.echo(_row(record))


@devices.command("revoke")
@click.argument("device_id")
@click.pass_context
def revoke(ctx: click.Context, device_id: str) -> None:
    """Revoke DEVICE_ID: the service refuses it (403) within token_cache_ttl_s."""
    try:
        record = registry_of(ctx).revoke(device_id)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"device {record.device_id} revoked at {when(record.revoked_at)}")


@devices.command("timezone")
@click.argument("device_id")
@click.argument("timezone", metavar="IANA_NAME")
@click.pass_context
def set_timezone(ctx: click.Context, device_id: str, timezone: str) -> None:
    """Set DEVICE_ID's time zone (an IANA name such as Europe/Paris or UTC): the history
    service's daily summaries (``harstream history``) cover the wearer's local days."""
    try:
        record = registry_of(ctx).set_timezone(device_id, timezone)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"device {record.device_id} time zone {record.timezone}")


# MQTT credentials and ACLs from this registry (services/mqtt_bridge/config_cli.py).
devices.add_command(importlib.import_module("services.mqtt_bridge.config_cli").mqtt_config)
