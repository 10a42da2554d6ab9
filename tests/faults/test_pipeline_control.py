"""Process control of the local pipeline (what the fault suite drives): kill -9 and restart
on the same state, SIGSTOP/SIGCONT, a second preprocess and alerting worker joining and
leaving. The CI short run covers kills and the broker pause under load; this covers the
rest on an idle pipeline (~1 min)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.processes import ServiceStartError
from services.demo.pipeline import Pipeline, PipelineConfig
from services.faults.control import gauge_reaches

pytestmark = pytest.mark.integration


def _process_state(pid: int) -> str:
    """The one-letter state of ``pid`` in /proc (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _becomes(pid: int, stopped: bool, timeout_s: float = 5.0) -> bool:
    """Whether ``pid`` is or becomes stopped (``stopped``) or running again within
    ``timeout_s``: signals are delivered asynchronously."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (_process_state(pid) == "T") == stopped:
            return True
        time.sleep(0.01)
    return False


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    config = PipelineConfig(workdir=tmp_path_factory.mktemp("control"), partitions=2)
    with Pipeline(config) as running:
        yield running


def test_a_second_alerting_worker_joins_shares_the_store_and_leaves(pipeline: Pipeline) -> None:
    name = pipeline.add_worker("alerting")
    assert name == "alerting-2"
    pipeline.wait_ready(name, 120)
    assert pipeline.http_url(name) != pipeline.alerting_url
    assert pipeline.services[name].env["HARSTREAM_ALERTING_STORE_URL"] == pipeline.alert_store_url
    alerts = urllib.request.Request(
        f"{pipeline.http_url(name)}/v1/alerts", headers=pipeline.alert_api_headers()
    )
    with urllib.request.urlopen(alerts, timeout=5) as r:
        assert r.status == 200
    assert pipeline.remove_worker(name) == 0
    assert name not in pipeline.services
    assert name not in pipeline.metrics_urls()


def test_a_second_preprocess_worker_gets_its_own_state_dir_and_port(pipeline: Pipeline) -> None:
    name = pipeline.add_worker("preprocess")
    env = pipeline.services[name].env
    first = pipeline.services["preprocess"].env
    assert env["HARSTREAM_PREPROCESS_DATA_DIR"] != first["HARSTREAM_PREPROCESS_DATA_DIR"]
    assert env["HARSTREAM_PREPROCESS_METRICS_PORT"] != first["HARSTREAM_PREPROCESS_METRICS_PORT"]
    pipeline.wait_ready(name, 120)
    assert name in pipeline.metrics_urls()
    assert pipeline.remove_worker(name) == 0


def test_a_second_inference_worker_shares_the_partitions(pipeline: Pipeline) -> None:
    name = pipeline.add_worker("inference")
    assert name == "inference-2"
    pipeline.wait_ready(name, 120)
    urls = pipeline.metrics_urls()
    assert urls[name] != urls["inference"]
    # 2 partitions, 2 workers in one group: one each once the rebalance settles.
    assert _assignment_becomes({w: urls[w] for w in ("inference", name)}, [1, 1])
    assert pipeline.remove_worker(name) == 0
    assert _assignment_becomes({"inference": urls["inference"]}, [2])


def _assignment_becomes(urls: dict[str, str], expected: list[int], timeout_s: float = 30) -> bool:
    """Whether the inference workers at ``urls`` come to own ``expected`` partitions each."""
    gauge = "harstream_inference_partitions_assigned "
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        owned = []
        for url in urls.values():
            with urllib.request.urlopen(url, timeout=2) as response:
                lines = response.read().decode().splitlines()
            owned += [int(float(line.split()[-1])) for line in lines if line.startswith(gauge)]
        if owned == expected:
            return True
        time.sleep(0.2)
    return False


def test_kill_and_restart_on_the_same_state(pipeline: Pipeline) -> None:
    before = pipeline.services["inference"].pid
    pipeline.kill("inference")
    assert not pipeline.services["inference"].running()
    pipeline.restart("inference")
    pipeline.wait_ready("inference", 120)
    assert pipeline.services["inference"].pid != before
    url = pipeline.metrics_urls()["inference"]
    assert gauge_reaches(url, "harstream_inference_partitions_assigned", 1, 5)


def test_pause_stops_the_process_and_resume_continues_it(pipeline: Pipeline) -> None:
    pid = pipeline.services["modelserver"].pid
    pipeline.pause("modelserver")
    assert _becomes(pid, stopped=True)
    pipeline.resume("modelserver")
    assert _becomes(pid, stopped=False)
    pipeline.pause("broker")
    assert pipeline.broker.pid is not None
    assert _becomes(pipeline.broker.pid, stopped=True)
    pipeline.resume("broker")
    assert _becomes(pipeline.broker.pid, stopped=False)
    pipeline.wait_ready("modelserver", 30)


def test_misuse_is_refused(pipeline: Pipeline) -> None:
    with pytest.raises(ValueError, match="cannot add"):
        pipeline.add_worker("modelserver")
    with pytest.raises(ValueError, match="not an added worker"):
        pipeline.remove_worker("alerting")
    with pytest.raises(ValueError, match="no service"):
        pipeline.kill("nothing")
    with pytest.raises(ServiceStartError, match="still running"):
        pipeline.restart("alerting")
