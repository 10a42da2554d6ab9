"""``harstream inference``: the inference worker."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

import click

from services.common import eventloop

logger = logging.getLogger(__name__)


@click.command()
@click.option(
    "--model-server-target",
    default=None,
    help="TF Serving gRPC host:port [env HARSTREAM_INFERENCE_MODEL_SERVER_TARGET, "
    "default localhost:8500].",
)
@click.option(
    "--model-name",
    default=None,
    help="Served model [env HARSTREAM_INFERENCE_MODEL_NAME, default har].",
)
@click.option(
    "--model-version",
    type=int,
    default=None,
    help="Pin a version [env HARSTREAM_INFERENCE_MODEL_VERSION; default: newest].",
)
@click.option(
    "--model-version-label",
    default=None,
    help="Use a labelled version, e.g. stable [env HARSTREAM_INFERENCE_MODEL_VERSION_LABEL].",
)
@click.option(
    "--candidate-version-label",
    default=None,
    help="Label of the candidate model [env HARSTREAM_INFERENCE_CANDIDATE_VERSION_LABEL, "
    "default canary].",
)
@click.option(
    "--canary-share",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Fraction of devices served by the candidate [env HARSTREAM_INFERENCE_CANARY_SHARE, "
    "default 0].",
)
@click.option(
    "--shadow/--no-shadow",
    default=None,
    help="Also send every batch to the candidate, predictions to the shadow topic "
    "[env HARSTREAM_INFERENCE_SHADOW, default off].",
)
@click.option(
    "--batch-max-size",
    type=int,
    default=None,
    help="Windows per Predict [env HARSTREAM_INFERENCE_BATCH_MAX_SIZE, default 64].",
)
@click.option(
    "--batch-max-wait-ms",
    type=float,
    default=None,
    help="Longest batch wait [env HARSTREAM_INFERENCE_BATCH_MAX_WAIT_MS, default 50].",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Prometheus /metrics port, 0 for none [env HARSTREAM_INFERENCE_METRICS_PORT, "
    "default 9103].",
)
def inference(**options: Any) -> None:
    """Classify the windows topic with TF Serving and write the predictions topic.

    Every setting is read from HARSTREAM_INFERENCE_* environment variables (Kafka ones too:
    HARSTREAM_INFERENCE_KAFKA_BOOTSTRAP_SERVERS, _KAFKA_PROFILE, _TOPIC_PREFIX, ...); options
    override them. At start-up the worker waits for the model to be AVAILABLE
    and checks its signature and preprocessing fingerprint; it exits with status 2 if the
    model server does not serve a usable model. SIGTERM/SIGINT stop it gracefully; if that
    takes longer than HARSTREAM_INFERENCE_SHUTDOWN_TIMEOUT_S (default 20 s, e.g. the broker
    is gone) it exits with status 1 (uncommitted windows are read again).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Imported here: the TF Serving protos import TensorFlow (seconds), not wanted for --help.
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415
    from pydantic import ValidationError  # noqa: PLC0415

    from services.common.shutdown import ShutdownWatchdog  # noqa: PLC0415
    from services.inference.errors import StartupError  # noqa: PLC0415
    from services.inference.main import run  # noqa: PLC0415
    from services.inference.settings import InferenceSettings  # noqa: PLC0415

    overrides = {key: value for key, value in options.items() if value is not None}
    try:
        settings = InferenceSettings(**overrides)
    except ValidationError as exc:
        raise click.UsageError(f"invalid inference settings: {exc}") from exc
    registry = CollectorRegistry()

    def serve_metrics() -> None:
        if settings.metrics_port:
            start_http_server(settings.metrics_port, settings.metrics_host, registry=registry)
            logger.info(
                "metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port
            )

    # Stopping can hang on a broker that is gone (client stop, commit): bounded.
    watchdog = ShutdownWatchdog("inference worker", settings.shutdown_timeout_s)

    async def main() -> None:
        stop = asyncio.Event()

        def on_signal() -> None:
            watchdog.arm()
            stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await run(settings, registry, stop, on_ready=serve_metrics)

    try:
        eventloop.run(main(), settings.event_loop)
    except StartupError as exc:
        logger.error("inference worker refused to start: %s", exc)
        raise SystemExit(2) from exc
