"""Safe rollout end to end: the development model server with a TF Serving model config
(versions 1 and 2 of the committed model, labels stable and canary), the real broker, the
inference worker with a canary share or shadow mode, and ``harstream models`` promoting
and rolling back while the worker runs."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)

from services.inference.rollout import in_canary
from services.inference.settings import InferenceSettings
from services.models.cli import models
from services.modelserver.config import (
    ModelConfig,
    VersionPolicy,
    parse_config,
    render_config,
    to_proto,
)
from services.modelserver.process import ModelServerProcess
from shared.messages import Prediction, WindowMessage
from tests.integration.kafka_reading import read_topic
from tests.integration.test_inference_worker import WorkerThread, produce, recording_windows

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_V1 = REPO_ROOT / "models" / "har" / "1"


class RolloutServer:
    """A model server reading ``config`` (polled every 0.3 s) over ``base``."""

    def __init__(self, root: Path, versions: tuple[int, ...], **labels: int) -> None:
        self.base = root / "har"
        for version in versions:
            shutil.copytree(MODEL_V1, self.base / str(version))  # same model, its own version
        self.config = root / "models.config"
        self.write(
            ModelConfig(
                "har", str(self.base), policy=VersionPolicy.specific(versions), labels=labels
            )
        )
        self.process = ModelServerProcess(
            self.base,
            poll_interval_s=0.3,
            log_path=root / "modelserver.log",
            model_config_file=self.config,
            config_poll_s=0.3,
        )

    def write(self, config: ModelConfig) -> None:
        self.config.write_text(render_config([config]))

    def labels(self) -> dict[str, int]:
        return dict(parse_config(self.config.read_text())[0].labels)

    def models(self, *args: str) -> str:
        """``harstream models ARGS --config <file> --target <server>``; its output."""
        result = CliRunner().invoke(
            models, [*args, "--config", str(self.config), "--target", self.process.grpc_target]
        )
        assert result.exit_code == 0, result.output
        return result.output


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutServer]:
    rollout = RolloutServer(tmp_path_factory.mktemp("rollout"), (1, 2), stable=1, canary=2)
    with rollout.process:
        yield rollout


@pytest.fixture
def worker_on(
    stream_settings: Callable[..., Any], unique_id: str
) -> Iterator[Callable[..., WorkerThread]]:
    started: list[WorkerThread] = []

    def start(server: RolloutServer, **overrides: Any) -> WorkerThread:
        values: dict[str, Any] = {
            "group_id": f"rollout-{unique_id}-{len(started)}",
            "model_server_target": server.process.grpc_target,
            "model_name": "har",
            "model_version_label": "stable",
            "metrics_port": 0,
            "startup_timeout_s": 30,
        }
        values.update(overrides)
        worker = WorkerThread(stream_settings(InferenceSettings, **values))
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


def fleet(hapt_cache: Any, devices: int, per_device: int) -> list[WindowMessage]:
    """``per_device`` windows of a recording for each of ``devices`` devices."""
    base = recording_windows(hapt_cache, "x")[:per_device]
    return [
        WindowMessage(**{**w.__dict__, "device_id": f"wearable-{d:03d}"})
        for d in range(devices)
        for w in base
    ]


def records(windows: list[WindowMessage]) -> list[tuple[bytes, bytes]]:
    return [(w.device_id.encode(), w.to_bytes()) for w in windows]


def read_predictions(
    settings: InferenceSettings, topic: str, count: int, timeout_s: float = 60
) -> list[Prediction]:
    return [
        Prediction.from_bytes(v) for _, v in read_topic(settings, topic, count, timeout_s=timeout_s)
    ]


def test_canary_share_routes_the_right_devices(
    server: RolloutServer, worker_on: Callable[..., WorkerThread], hapt_cache: Any, capsys: Any
) -> None:
    windows = fleet(hapt_cache, devices=40, per_device=3)
    worker = worker_on(server, canary_share=0.3)
    produce(worker.settings, records(windows))
    predictions = read_predictions(
        worker.settings, worker.settings.topics.predictions, len(windows)
    )

    assert {p.window_id for p in predictions} == {w.window_id for w in windows}
    versions: dict[str, set[tuple[int, str]]] = {}
    for p in predictions:
        versions.setdefault(p.device_id, set()).add((p.model_version, p.model_label))
    canary = {d for d in versions if in_canary(d, 0.3)}
    for device, seen in versions.items():
        assert seen == ({(2, "canary")} if device in canary else {(1, "stable")}), device
    agree = worker.metric(
        "harstream_inference_comparisons_total",
        mode="canary", stable_version="1", candidate_version="2", outcome="agree",
    )  # fmt: skip
    assert agree == 3 * len(canary)  # the same model under both labels: always agrees
    assert worker.metric("harstream_inference_canary_share") == 0.3
    with capsys.disabled():
        print(f"\ncanary share 0.3: {len(canary)} of {len(versions)} devices on v2")


def test_shadow_predictions_land_on_the_shadow_topic_and_never_on_predictions(
    server: RolloutServer, worker_on: Callable[..., WorkerThread], hapt_cache: Any
) -> None:
    windows = fleet(hapt_cache, devices=8, per_device=10)
    worker = worker_on(server, shadow=True)
    produce(worker.settings, records(windows))
    topics = worker.settings.topics
    live = read_predictions(worker.settings, topics.predictions, len(windows))
    shadow = read_predictions(worker.settings, topics.shadow_predictions, len(windows))

    assert {(p.model_version, p.model_label) for p in live} == {(1, "stable")}
    assert {(p.model_version, p.model_label) for p in shadow} == {(2, "canary")}
    assert {p.window_id for p in shadow} == {p.window_id for p in live}
    for p in shadow:  # the shadow record is a whole prediction of the same window
        assert p.features == next(w.features for w in windows if w.window_id == p.window_id)
    labels = {"mode": "shadow", "stable_version": "1", "candidate_version": "2"}
    assert worker.metric("harstream_inference_comparisons_total", **labels, outcome="agree") == len(
        windows
    )
    assert worker.metric(
        "harstream_inference_version_predictions_total", version="2", route="shadow"
    ) == len(windows)
    assert worker.metric("harstream_inference_shadow_dropped_total", reason="backlog") == 0


def test_promote_takes_effect_without_restart_and_rollback_works(
    tmp_path: Path, worker_on: Callable[..., WorkerThread], hapt_cache: Any
) -> None:
    rollout = RolloutServer(tmp_path, (1, 2), stable=1, canary=2)
    with rollout.process:
        worker = worker_on(rollout)
        topic = worker.settings.topics.predictions
        windows = fleet(hapt_cache, devices=4, per_device=30)
        rounds = [windows[i::3] for i in range(3)]
        seen = 0

        def next_round(windows: list[WindowMessage]) -> set[int]:
            nonlocal seen
            produce(worker.settings, records(windows))
            seen += len(windows)
            everything = read_predictions(worker.settings, topic, seen)
            mine = {w.window_id for w in windows}
            return {p.model_version for p in everything if p.window_id in mine}

        assert next_round(rounds[0]) == {1}
        out = rollout.models("promote", "2")
        assert "stable=2, canary=2, previous=1" in out and "serves it now" in out
        assert rollout.labels() == {"stable": 2, "canary": 2, "previous": 1}
        assert next_round(rounds[1]) == {2}  # the same worker, no restart
        rollout.models("rollback")
        assert rollout.labels() == {"stable": 1, "canary": 2}
        assert next_round(rounds[2]) == {1}
        assert worker.error is None

        # A version not loaded yet: added to the policy, waited for, then labelled.
        shutil.copytree(MODEL_V1, rollout.base / "3")
        out = rollout.models("promote", "3", "--label", "canary")
        assert "loading version 3" in out
        assert rollout.labels() == {"stable": 1, "canary": 3}
        listing = rollout.models("list")
        assert "stable=1" in listing and "canary=3" in listing and "(as in the file)" in listing


def test_labels_are_checked_like_tf_serving(server: RolloutServer) -> None:
    with grpc.insecure_channel(server.process.grpc_target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        moved = ModelConfig(
            "har", str(server.base), policy=VersionPolicy.specific([1, 2, 9]), labels={"stable": 9}
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.HandleReloadConfigRequest(
                model_management_pb2.ReloadConfigRequest(config=to_proto([moved])), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "version 9 of model har, which is not currently available" in (
            refused.value.details() or ""
        )
        # GetModelStatus ignores a label and lists every version, as TF Serving's does.
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "har"
        request.model_spec.version_label = "canary"
        status = stub.GetModelStatus(request, timeout=10)
        assert sorted(s.version for s in status.model_version_status) == [1, 2]
    assert server.labels() == {"stable": 1, "canary": 2}  # the refusal changed nothing


def test_a_broken_candidate_does_not_stop_stable_predictions(
    tmp_path: Path, worker_on: Callable[..., WorkerThread], hapt_cache: Any, capsys: Any
) -> None:
    rollout = RolloutServer(tmp_path, (1, 2), stable=1, canary=2)
    windows = fleet(hapt_cache, devices=20, per_device=12)
    before, after = windows[::2], windows[1::2]
    with rollout.process:
        worker = worker_on(
            rollout,
            canary_share=0.5,
            shadow=True,
            candidate_deadline_s=0.5,
            candidate_failures_to_pause=2,
            candidate_pause_s=0.5,
        )
        produce(worker.settings, records(before))
        read_predictions(worker.settings, worker.settings.topics.predictions, len(before))
        # The canary's version vanishes: the server unloads it, the label names nothing.
        shutil.rmtree(rollout.base / "2")
        wait_until_ended(rollout, 2)
        producer = threading.Thread(target=produce, args=(worker.settings, records(after), 0.01))
        producer.start()  # ~1.2 s of windows: several batches, the breaker pauses and retries
        producer.join(30)
        predictions = read_predictions(
            worker.settings, worker.settings.topics.predictions, len(windows)
        )

    ids = Counter(p.window_id for p in predictions)
    assert set(ids) == {w.window_id for w in windows}  # every window predicted
    routes = Counter((p.model_version, p.model_label) for p in predictions)
    failures = {
        reason: worker.metric(
            "harstream_inference_candidate_failures_total", mode="canary", reason=reason
        )
        for reason in ("NOT_FOUND", "paused")
    }
    fallbacks = worker.metric(
        "harstream_inference_version_predictions_total", version="1", route="fallback"
    )
    with capsys.disabled():
        print(
            f"\nbroken candidate: {dict(routes)}, canary failures {failures}, fallbacks {fallbacks}"
        )
    # Before: canary devices on v2. After: on stable, every one of their windows.
    canary_after = {w.window_id for w in after if in_canary(w.device_id, 0.5)}
    assert canary_after and fallbacks == len(canary_after)
    by_id = {p.window_id: p for p in predictions}
    assert {(by_id[i].model_version, by_id[i].model_label) for i in canary_after} == {(1, "stable")}
    assert routes[(2, "canary")] == sum(in_canary(w.device_id, 0.5) for w in before)
    assert failures["NOT_FOUND"] > 0
    assert sum(failures.values()) == len(canary_after)
    assert worker.metric("harstream_dead_letters_total", error_type="ModelServerError") == 0


def wait_until_ended(rollout: RolloutServer, version: int, timeout_s: float = 30) -> None:
    """Until the model server reports ``version`` END (unloaded)."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "har"
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(rollout.process.grpc_target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        while True:
            states = {
                s.version: s.state
                for s in stub.GetModelStatus(request, timeout=10).model_version_status
            }
            if states.get(version) == get_model_status_pb2.ModelVersionStatus.END:
                return
            assert time.monotonic() < deadline, f"version {version} still {states}"
            time.sleep(0.1)


def test_an_unknown_candidate_label_costs_nothing_but_fallbacks(
    server: RolloutServer, worker_on: Callable[..., WorkerThread], hapt_cache: Any
) -> None:
    windows = fleet(hapt_cache, devices=10, per_device=4)
    worker = worker_on(server, candidate_version_label="no-such-label", canary_share=1.0)
    produce(worker.settings, records(windows))
    predictions = read_predictions(
        worker.settings, worker.settings.topics.predictions, len(windows)
    )
    assert {(p.model_version, p.model_label) for p in predictions} == {(1, "stable")}
    assert len({p.window_id for p in predictions}) == len(windows)
    assert (
        worker.metric(
            "harstream_inference_candidate_failures_total", mode="canary", reason="INVALID_ARGUMENT"
        )
        > 0
    )
