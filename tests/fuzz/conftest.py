"""One local pipeline (Tansu, model server, every service as a process) for the fuzz tests:
ingest with its production limits, fuzz devices registered."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.demo.pipeline import Pipeline, PipelineConfig
from services.fuzz.cli import PRODUCTION_INGEST_ENV
from services.fuzz.http_cases import Fixture
from services.fuzz.runner import Target, register_devices


@dataclass(frozen=True)
class FuzzSetup:
    pipeline: Pipeline
    target: Target
    fixture: Fixture


@pytest.fixture(scope="module")
def fuzz_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzSetup]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    config = PipelineConfig(workdir=workdir, service_env={"ingest": PRODUCTION_INGEST_ENV})
    with Pipeline(config) as pipeline:
        assert pipeline.settings is not None
        target = Target(
            "127.0.0.1",
            pipeline.ports["ingest"],
            pipeline.settings.kafka_bootstrap_servers,
            pipeline.settings.topics,
            workdir / "devices.db",
        )
        yield FuzzSetup(pipeline, target, register_devices(target.registry_path, 12))
