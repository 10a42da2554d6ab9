"""``harstream history``: run the activity-history worker and its HTTP API."""

from __future__ import annotations

import click

from services.common.worker_cli import Worker, run_worker, worker_settings
from services.history.settings import HistorySettings


@click.command()
@click.option(
    "--port", type=int, default=None, help="HTTP port [env HARSTREAM_HISTORY_PORT, 8084]."
)
@click.option(
    "--store-url", default=None, help="History store URL [env HARSTREAM_HISTORY_STORE_URL]."
)
@click.option(
    "--create-topics/--no-create-topics",
    default=True,
    show_default=True,
    help="Create missing harstream topics before starting.",
)
def history(port: int | None, store_url: str | None, create_topics: bool) -> None:
    """Keep every device's activity history: predictions → activity segments (start, end,
    activity, mean confidence, model version) in SQLite or PostgreSQL, daily summaries in
    the wearer's time zone (`harstream devices timezone ID Europe/Paris`), and the API
    GET /v1/devices, /v1/devices/{id}, /v1/devices/{id}/activity?from=&to=,
    /v1/devices/{id}/summary?date=YYYY-MM-DD (open: /healthz, /readyz, /metrics).

    The /v1 endpoints take the alert API's operators (viewer is enough; the store is
    HARSTREAM_HISTORY_OPERATORS_STORE_URL, by default the alert store). Duplicated and
    replayed predictions are never counted twice; offsets are committed only after the
    segments they produced are stored. Segments older than ..._RETENTION_DAYS are deleted.

    Configured by HARSTREAM_HISTORY_* environment variables (Kafka:
    ..._KAFKA_BOOTSTRAP_SERVERS, ..._KAFKA_PROFILE, ..._TOPIC_PREFIX; the device registry:
    ..._REGISTRY_URL, the same as ingest's). Stops cleanly on SIGTERM/SIGINT.
    """
    settings = worker_settings(HistorySettings, create_topics, port=port, store_url=store_url)
    run_worker(
        lambda: _service(settings),
        "history worker",
        settings.shutdown_timeout_s,
        settings.event_loop,
    )


def _service(settings: HistorySettings) -> Worker:
    from services.history.app import HistoryService  # noqa: PLC0415 - keeps --help fast

    return HistoryService(settings)
