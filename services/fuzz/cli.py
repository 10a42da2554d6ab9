"""``harstream fuzz``: the fuzz suite against the whole local pipeline."""

from __future__ import annotations

import logging
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parents[2]

logger = logging.getLogger(__name__)

#: ingest's production per-device limits (the demo pipeline raises them for fast replays),
#: with one exception: the per-address limit on failed authentications. All hostile requests
#: come from one address, so with it on, all but the first 20 bad-token requests would be
#: answered 429 before the parser and validators that the fuzz is there to exercise. The
#: limit itself is tested in tests/integration/test_security_listeners.py.
PRODUCTION_INGEST_ENV = {
    "HARSTREAM_INGEST_RATE_LIMIT_SAMPLES_PER_S": "800",
    "HARSTREAM_INGEST_RATE_LIMIT_BURST_SAMPLES": "8000",
    "HARSTREAM_INGEST_AUTH_FAILURE_BURST": "1000000000",
}


@click.command()
@click.option(
    "--requests",
    "total",
    type=click.IntRange(min=100),
    default=10_000,
    show_default=True,
    help="HTTP requests to ingest (hypothesis cases, schemathesis cases, replays).",
)
@click.option(
    "--poison-per-kind",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Poison records per kind and topic (empty/missing/huge ones: one each).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--devices", type=click.IntRange(min=4), default=40, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Pipeline state and logs (default: a temporary directory, removed after).",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=REPO_ROOT / "reports" / "fuzz.md",
    show_default=True,
)
@click.option("--http/--no-http", "run_http", default=True, help="Fuzz ingest over HTTP.")
@click.option("--topics/--no-topics", "run_topics", default=True, help="Poison the topics.")
def fuzz(
    total: int,
    poison_per_kind: int,
    seed: int,
    devices: int,
    concurrency: int,
    workdir: Path | None,
    report_path: Path,
    run_http: bool,
    run_topics: bool,
) -> None:
    """Fuzz the local pipeline: malformed, oversized, truncated, mis-encoded and replayed
    requests to ingest (hypothesis strategies, raw-socket garbage, schemathesis cases from
    ingest's own OpenAPI document), then poison records on every topic a worker consumes.

    Checks: no 5xx, every refusal application/problem+json with a reason, no Kafka record
    for a refused request, ingest healthy after; every poison record dead-lettered, every
    worker still running, valid traffic still predicted. Prints the figures, writes them to
    --report, exits 1 if an invariant failed. Needs the dev extra (hypothesis,
    schemathesis); the full size takes about 10 minutes on 2 cores.
    """
    from services.demo.pipeline import Pipeline, PipelineConfig  # noqa: PLC0415 - heavy
    from services.fuzz.report import RunInfo, markdown  # noqa: PLC0415
    from services.fuzz.runner import (  # noqa: PLC0415
        HttpResult,
        Target,
        TopicsResult,
        fuzz_http,
        fuzz_topics,
        register_devices,
    )

    started = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    http: HttpResult | None = None
    topics: TopicsResult | None = None
    with tempfile.TemporaryDirectory(prefix="harstream-fuzz-") as scratch:
        root = workdir or Path(scratch)
        config = PipelineConfig(workdir=root, service_env={"ingest": PRODUCTION_INGEST_ENV})
        with Pipeline(config) as pipeline:
            assert pipeline.settings is not None
            target = Target(
                "127.0.0.1",
                pipeline.ports["ingest"],
                pipeline.settings.kafka_bootstrap_servers,
                pipeline.settings.topics,
                root / "devices.db",
            )
            fixture = register_devices(target.registry_path, devices)
            if run_http:
                http = fuzz_http(target, fixture, total, seed, concurrency)
            if run_topics:
                topics = fuzz_topics(
                    target,
                    fixture,
                    lambda: {n: s.running() for n, s in pipeline.services.items()},
                    poison_per_kind,
                    seed,
                )
    command = (
        "harstream fuzz " + shlex.join(sys.argv[sys.argv.index("fuzz") + 1 :])
        if ("fuzz" in sys.argv)
        else "harstream fuzz"
    )
    info = RunInfo(command.strip(), seed, started_at, time.monotonic() - started)
    text = markdown(info, http, topics)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(text)
    click.echo(text)
    click.echo(f"wrote {report_path}")
    if not all(r.ok for r in (http, topics) if r is not None):
        raise SystemExit(1)
