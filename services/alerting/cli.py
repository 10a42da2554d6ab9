"""``harstream alerting``: run the alerting worker and its HTTP API."""

from __future__ import annotations

import logging

import click

from services.alerting.settings import AlertingSettings
from services.common.worker_cli import Worker, run_worker, worker_settings

logger = logging.getLogger(__name__)


@click.command()
@click.option("--port", type=int, default=None, help="HTTP port [env HARSTREAM_ALERTING_PORT].")
@click.option(
    "--store-url", default=None, help="Alert store URL [env HARSTREAM_ALERTING_STORE_URL]."
)
@click.option(
    "--create-topics/--no-create-topics",
    default=True,
    show_default=True,
    help="Create missing harstream topics before starting.",
)
def alerting(port: int | None, store_url: str | None, create_topics: bool) -> None:
    """Turn predictions into alerts: falls, prolonged lying, inactivity, offline devices and
    sensor faults; store them, publish them on the alerts topic, POST them to webhooks and
    serve the alert API (GET /v1/alerts, GET /v1/alerts/{id}[/history],
    POST /v1/alerts/{id}/ack|resolve; open: /healthz, /readyz, /metrics).

    The /v1 endpoints need an operator: Authorization: Bearer <API key> or HTTP Basic
    (create one with `harstream operators add NAME --role carer`, in the same store). An
    address that fails to authenticate more than ..._AUTH_FAILURE_BURST times (refilled at
    ..._AUTH_FAILURE_RATE_PER_S) gets 429 until its budget refills; connections are held to
    ..._HEADER_TIMEOUT_S, ..._BODY_TIMEOUT_S and ..._MAX_CONNECTIONS.

    Configured by HARSTREAM_ALERTING_* environment variables (Kafka: ..._KAFKA_BOOTSTRAP_SERVERS,
    ..._KAFKA_PROFILE, ..._TOPIC_PREFIX; webhooks: ..._WEBHOOK_URLS; thresholds:
    ..._RULES__FALL_CONFIRM_S and the other AlertRules fields). Stops cleanly on SIGTERM/SIGINT;
    exits with status 1 if that takes longer than ..._SHUTDOWN_TIMEOUT_S (default 25 s).
    """
    settings = worker_settings(AlertingSettings, create_topics, port=port, store_url=store_url)
    run_worker(
        lambda: _service(settings),
        "alerting worker",
        settings.shutdown_timeout_s,
        settings.event_loop,
    )


def _service(settings: AlertingSettings) -> Worker:
    from services.alerting.app import AlertingService  # noqa: PLC0415 - keeps --help fast

    return AlertingService(settings)
