"""``harstream modelserver``: the development stand-in for TF Serving."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click
from pydantic import ValidationError

logger = logging.getLogger(__name__)


@click.command()
@click.option(
    "--model-name",
    default=None,
    help="Model name [env HARSTREAM_MODELSERVER_MODEL_NAME, default har].",
)
@click.option(
    "--model-base-path",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help=(
        "Base path of numbered versions "
        "[env HARSTREAM_MODELSERVER_MODEL_BASE_PATH, default models/har]."
    ),
)
@click.option(
    "--host",
    default=None,
    help=(
        "Bind address [env HARSTREAM_MODELSERVER_HOST, default 127.0.0.1: no credential is "
        "asked, so 0.0.0.0 only where the network is restricted]."
    ),
)
@click.option(
    "--grpc-port",
    "--port",
    type=int,
    default=None,
    help="gRPC port [env HARSTREAM_MODELSERVER_GRPC_PORT, default 8500].",
)
@click.option(
    "--rest-port",
    "--rest-api-port",
    type=int,
    default=None,
    help="REST/metrics port [env HARSTREAM_MODELSERVER_REST_PORT, default 8501].",
)
@click.option(
    "--poll-interval",
    "poll_interval_s",
    type=float,
    default=None,
    help="Seconds between base-path scans [env HARSTREAM_MODELSERVER_POLL_INTERVAL_S, default 2].",
)
@click.option(
    "--version-labels",
    default=None,
    help="e.g. 'stable=1,canary=2' [env HARSTREAM_MODELSERVER_VERSION_LABELS].",
)
@click.option(
    "--model-config-file",
    "--model_config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=(
        "TF Serving model config (text ModelServerConfig, one model) "
        "[env HARSTREAM_MODELSERVER_MODEL_CONFIG_FILE]."
    ),
)
@click.option(
    "--model-config-file-poll-wait-seconds",
    "--model_config_file_poll_wait_seconds",
    "model_config_file_poll_wait_s",
    type=float,
    default=None,
    help=(
        "Seconds between reads of the config file, 0: once "
        "[env HARSTREAM_MODELSERVER_MODEL_CONFIG_FILE_POLL_WAIT_S, default 0]."
    ),
)
@click.option(
    "--allow-version-labels-for-unavailable-models",
    "--allow_version_labels_for_unavailable_models",
    "allow_version_labels_for_unavailable_models",
    type=bool,
    default=None,
    help=(
        "New labels may name versions not AVAILABLE yet (true/false) "
        "[env HARSTREAM_MODELSERVER_ALLOW_VERSION_LABELS_FOR_UNAVAILABLE_MODELS, default false]."
    ),
)
@click.option(
    "--grpc-workers",
    type=int,
    default=None,
    help="gRPC handler threads [env HARSTREAM_MODELSERVER_GRPC_WORKERS, default 4].",
)
@click.option(
    "--tensorflow-intra-op-parallelism",
    "--tensorflow_intra_op_parallelism",
    "tensorflow_intra_op_parallelism",
    type=int,
    default=None,
    help=(
        "Threads one TensorFlow op may use, 0: TensorFlow's choice "
        "[env HARSTREAM_MODELSERVER_TENSORFLOW_INTRA_OP_PARALLELISM, default 0]."
    ),
)
@click.option(
    "--tensorflow-inter-op-parallelism",
    "--tensorflow_inter_op_parallelism",
    "tensorflow_inter_op_parallelism",
    type=int,
    default=None,
    help=(
        "Ops of one call run at once, 0: TensorFlow's choice "
        "[env HARSTREAM_MODELSERVER_TENSORFLOW_INTER_OP_PARALLELISM, default 0]."
    ),
)
def modelserver(**options: Any) -> None:
    """Serve a SavedModel base path over TF Serving's gRPC and REST APIs.

    Options override HARSTREAM_MODELSERVER_* environment variables. New version directories
    (renamed into place) are picked up without restart; so are version policy and label
    changes of a --model-config-file (polled, or sent by ModelService/HandleReloadConfigRequest,
    e.g. by `harstream models promote`). SIGTERM/SIGINT stop gracefully.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from services.modelserver.settings import ModelServerSettings  # noqa: PLC0415

    overrides = {key: value for key, value in options.items() if value is not None}
    try:
        settings = ModelServerSettings(**overrides)
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from exc
    # imported only now: TensorFlow takes seconds to import
    from services.modelserver.errors import ServingError  # noqa: PLC0415
    from services.modelserver.server import ModelServer  # noqa: PLC0415

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = ModelServer(settings).start()
    except ServingError as exc:
        # TF Serving's words for a config it refuses at start-up.
        logger.error("Failed to start server. Error: %s: %s", exc.code.value, exc.message)
        raise SystemExit(1) from exc
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
