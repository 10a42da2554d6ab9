"""``harstream preprocess``: run the preprocessing worker (configured from the environment)."""

from __future__ import annotations

import logging
import signal

import click

logger = logging.getLogger(__name__)


@click.command()
def preprocess() -> None:
    """Run the preprocessing worker: raw packets → per-device filters → 2.56 s windows.

    Configured only by environment variables, prefix HARSTREAM_PREPROCESS_:
    KAFKA_BOOTSTRAP_SERVERS, KAFKA_PROFILE (apache|tansu), TOPIC_PREFIX, TOPIC_PARTITIONS,
    APP_ID, DATA_DIR, STORE (rocksdb://|memory://), BATCH_MAX_SIZE, BATCH_MAX_WAIT_S,
    GAP_THRESHOLD_S, REORDER_MAX_PACKETS, SHUTDOWN_TIMEOUT_S (default 15), METRICS_HOST,
    METRICS_PORT (default 9102), LOG_LEVEL. Stops cleanly on SIGTERM / SIGINT (finishes the
    batch in hand, commits offsets, flushes the state); exits with status 1 if that takes
    longer than SHUTDOWN_TIMEOUT_S (e.g. the broker is gone), and with status 70 when a
    batch cannot be finished (it is read again after the restart).
    """
    # faust is heavy to import: only when the command runs, not for `harstream --help`.
    from faust import Worker  # noqa: PLC0415
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

    from services.common import eventloop  # noqa: PLC0415
    from services.common.kafka.topics import create_topics  # noqa: PLC0415
    from services.common.shutdown import ShutdownWatchdog  # noqa: PLC0415
    from services.preprocess.app import TABLE_NAME, create_app  # noqa: PLC0415
    from services.preprocess.faust_internals import bounded_worker  # noqa: PLC0415
    from services.preprocess.settings import PreprocessSettings  # noqa: PLC0415

    settings = PreprocessSettings()
    logging.getLogger().setLevel(settings.log_level.upper())
    create_topics(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Before the app exists: faust's worker creates its loop from the policy.
    eventloop.install_policy(settings.event_loop)
    registry = CollectorRegistry()
    app = create_app(settings, registry)
    # Until faust's worker installs its own handlers, a SIGTERM (a pod stopped while it is
    # still starting; its metrics port, which tells it has started, opens below) ends the
    # process cleanly: nothing has been read or committed yet. Python's default was death
    # by the signal (exit -15), which a supervisor counts as a crash.
    signal.signal(signal.SIGTERM, _exit_before_start)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
    logger.info(
        "preprocess worker %s: %s → %s (dead letters %s), table %s (%s in %s), brokers %s "
        "(%s profile), metrics on http://%s:%d/metrics",
        settings.app_id,
        settings.topics.raw,
        settings.topics.windows,
        settings.topics.dlq,
        TABLE_NAME,
        settings.store,
        settings.data_dir,
        settings.kafka_bootstrap_servers,
        settings.kafka_profile,
        settings.metrics_host,
        settings.metrics_port,
    )
    # A bound on how long a signalled stop may take: stopping can hang for minutes when the
    # broker is gone (consumer commit, producer flush).
    watchdog = ShutdownWatchdog("preprocess worker", settings.shutdown_timeout_s)
    bounded = bounded_worker(Worker, watchdog.arm)
    # faust's Worker installs SIGTERM/SIGINT handlers that stop the app gracefully; it keeps
    # our logging (override_logging=False) and, since web_enabled=False, starts no web server.
    worker = bounded(app, loglevel=settings.log_level, override_logging=False, quiet=True)
    worker.execute_from_commandline()


def _exit_before_start(signum: int, frame: object) -> None:
    logger.info("stopped (signal %d) before the worker started", signum)
    raise SystemExit(0)
