"""Prometheus, Alertmanager and Grafana configuration checked with the real tools.

* ``promtool check config`` (compose and Kubernetes scrape configs), ``promtool check rules``,
  ``promtool test rules`` (deploy/prometheus/tests/alerts_test.yml has a firing case for
  every alert), ``amtool check-config``.
* One live test: the local pipeline (:class:`~services.demo.pipeline.Pipeline`, the history
  service included) plus a real Prometheus (Debian's binary, own TSDB in tmp, free port)
  scraping ``pipeline.metrics_urls()`` under the production job names. After a little traffic (two
  HAPT recordings at 100x, one undecodable raw record for the DLQ, one unauthenticated
  request, devices going offline so DEVICE_OFFLINE alerts fire and webhooks deliver), every
  target is up, every rule evaluates without error, and every recording rule and every
  Grafana panel query returns data through the HTTP API, except the queries listed in
  ``NO_LOCAL_DATA`` (no Kafka exporter locally; no retries or TF Serving-only metrics from
  the development model server), which must evaluate without error.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.broker import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
INSTALL_HINT = "run deploy/tools/install-validators.sh"
RULE_NAME = re.compile(r"^[a-z_]+:[a-z0-9_]+:[a-z0-9_]+$")

#: Queries with no samples in the local pipeline, and why. They must still evaluate.
NO_LOCAL_DATA = {
    # Lag comes from danielqsj/kafka-exporter, which the local pipeline does not run (and
    # the Tansu broker cannot describe consumer groups).
    "consumergroup_topic:kafka_consumergroup_lag:sum": "no Kafka exporter locally",
    # No Predict call is retried while the model server is healthy.
    "sum by (code) (rate(harstream_inference_retries_total[1m]))": "no retries",
    # TF Serving's own metric; the development model server exports harstream_modelserver_*.
    'sum by (status) (rate({__name__=":tensorflow:serving:request_count"}[1m]))': "TF Serving only",
    # The local pipeline runs no candidate (no canary share, no shadow): nothing compared,
    # failed or dropped. tests/integration/test_rollout.py asserts these metrics.
    "sum by (mode, stable_version, candidate_version) (rate(harstream_inference_comparisons_"
    'total{outcome="agree"}[1m])) / sum by (mode, stable_version, candidate_version) '
    "(rate(harstream_inference_comparisons_total[1m]))": "no candidate locally",
    "sum by (mode, reason) (rate(harstream_inference_candidate_failures_total[1m]))": (
        "no candidate locally"
    ),
    "sum by (reason) (rate(harstream_inference_shadow_dropped_total[1m]))": "no candidate locally",
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}")
    return path


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


# --- static checks ---------------------------------------------------------------------


def _with_repo_rules(config: dict[str, Any], tmp_path: Path) -> Path:
    config["rule_files"] = [str(PROM / "rules" / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_promtool_check_config_compose(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    result = _run(promtool, "check", "config", str(PROM / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    # Again with the rule files resolvable, so they are checked in the config's context.
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {
        "ingest",
        "preprocess",
        "inference",
        "alerting",
        "history",
        "mqtt-bridge",
        "tfserving",
        "kafka-exporter",
    } <= jobs
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())

    def target(job_name: str) -> list[dict[str, list[str]]]:
        (job,) = [job for job in config["scrape_configs"] if job["job_name"] == job_name]
        targets: list[dict[str, list[str]]] = job["static_configs"]
        return targets

    # ingest's /metrics is on its metrics listener, not on the device port.
    port = compose["services"]["ingest"]["environment"]["HARSTREAM_INGEST_METRICS_PORT"]
    assert target("ingest") == [{"targets": [f"ingest:{port}"]}]
    # history's /metrics is beside its API, on the port compose gives it.
    port = compose["services"]["history"]["environment"]["HARSTREAM_HISTORY_PORT"]
    assert target("history") == [{"targets": [f"history:{port}"]}]
    result = _run(promtool, "check", "config", str(_with_repo_rules(config, tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout


def test_promtool_check_config_kubernetes(tmp_path: Path) -> None:
    """Debian's Prometheus is built without Kubernetes service discovery: the relabelling is
    checked with the discovery swapped for a static target."""
    config = yaml.safe_load((PROM / "prometheus-kubernetes.yml").read_text())
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    result = _run(_tool("promtool"), "check", "config", str(_with_repo_rules(config, tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = _run(_tool("promtool"), "check", "rules", *map(str, (PROM / "rules").glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = _run(_tool("promtool"), "test", "rules", "tests/alerts_test.yml", cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _rules(kind: str) -> list[dict[str, Any]]:
    rules = []
    for path in sorted((PROM / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [r for r in group["rules"] if kind in r]
    return rules


def test_every_alert_is_unit_tested_and_documented() -> None:
    alerts = _rules("alert")
    tests = yaml.safe_load((PROM / "tests" / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for group in tests
        for case in group.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    readme = (REPO / "README.md").read_text()
    for alert in alerts:
        name = alert["alert"]
        assert name in fired, f"{name} has no firing test in alerts_test.yml"
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        assert alert["annotations"]["summary"], name
        anchor = alert["annotations"]["runbook_url"]
        assert anchor == f"README.md#{name.lower()}", name
        assert f"#### {name}\n" in readme, f"{name} has no runbook entry in README.md"


def test_recording_rules_follow_naming_convention() -> None:
    names = [r["record"] for r in _rules("record")]
    assert len(names) == len(set(names))
    for name in names:
        assert RULE_NAME.match(name), name


def test_amtool_check_config() -> None:
    result = _run(_tool("amtool"), "check-config", "deploy/alertmanager/alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def _panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL with Grafana's $__rate_interval resolved)."""
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                # Grafana's $__rate_interval is at least four scrape intervals: 1m here.
                expr = target["expr"].replace("$__rate_interval", "1m")
                queries.append((path.stem, panel["title"], expr))
    return queries


def test_dashboards_are_provisionable() -> None:
    assert [p.stem for p in DASHBOARDS] == ["fleet-overview", "model", "pipeline-health"]
    datasource = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        uids.add(dashboard["uid"])
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"]
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
    assert len(uids) == len(DASHBOARDS)


# --- live: the pipeline scraped by a real Prometheus --------------------------------------


class _WebhookReceiver(BaseHTTPRequestHandler):
    received: list[bytes] = []  # noqa: RUF012 - shared by the handler instances on purpose

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _WebhookReceiver.received.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WebhookReceiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()


def _scrape_config(metrics_urls: dict[str, str]) -> list[dict[str, Any]]:
    jobs = []
    for service, url in metrics_urls.items():
        parsed = urllib.parse.urlsplit(url)
        # The development model server stands in for TF Serving under its production job.
        job = "tfserving" if service == "modelserver" else service
        jobs.append(
            {
                "job_name": job,
                "metrics_path": parsed.path,
                "static_configs": [{"targets": [parsed.netloc]}],
            }
        )
    return jobs


class _Prometheus:
    def __init__(self, workdir: Path, metrics_urls: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROM / "rules" / "*.yml")],
            "scrape_configs": _scrape_config(metrics_urls),
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                _tool("prometheus"),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.console.templates=/dev/null",
                "--web.console.libraries=/dev/null",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "prometheus exited; see prometheus.log"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail("prometheus did not become ready")

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def _drive_traffic(pipeline: Any, hapt_cache: Any) -> None:
    from kafka import KafkaProducer  # type: ignore[import-untyped]

    from services.demo.cli import register_devices
    from services.demo.loadgen import DeviceCredentials, replay_devices
    from services.demo.replay import device_of

    devices = [device_of(r) for r in hapt_cache.load(subjects=[2])[:2]]
    tokens = register_devices(pipeline.registry_url, [d.device_id for d in devices])
    credentials = [DeviceCredentials(d, tokens[d.device_id]) for d in devices]
    stats = asyncio.run(
        replay_devices(pipeline.ingest_url, credentials, speed=100.0, packet_size=250)
    )
    assert stats.packets_accepted > 0
    # One request with a wrong token: a rejection (reason unauthenticated).
    request = urllib.request.Request(
        f"{pipeline.ingest_url}/v1/packets",
        data=b"{}",
        headers={"Authorization": "Bearer not-a-token", "Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(request, timeout=5)
    # One undecodable raw record: preprocess dead-letters it.
    producer = KafkaProducer(bootstrap_servers=pipeline.broker.bootstrap_servers)
    producer.send(pipeline.settings.topics.raw, key=b"broken-device", value=b"not a packet")
    producer.flush(10)
    producer.close()


def _wait_for_data(
    prometheus: _Prometheus, queries: list[str], timeout_s: float
) -> dict[str, list[dict[str, Any]]]:
    deadline = time.monotonic() + timeout_s
    while True:
        results = {q: prometheus.query(q) for q in queries}
        missing = [q for q, r in results.items() if not r and q not in NO_LOCAL_DATA]
        if not missing or time.monotonic() > deadline:
            return results
        time.sleep(2.0)


def test_rules_and_dashboards_return_data_from_the_running_pipeline(
    tmp_path: Path, hapt_cache: Any, webhook_url: str
) -> None:
    from services.demo.pipeline import Pipeline, PipelineConfig

    config = PipelineConfig(
        workdir=tmp_path / "pipeline",
        partitions=2,
        service_env={
            "alerting": {
                # Devices that stop sending go offline within seconds: DEVICE_OFFLINE
                # alerts open and are delivered to the webhook receiver.
                "HARSTREAM_ALERTING_RULES__OFFLINE_AFTER_S": "3",
                "HARSTREAM_ALERTING_TICK_INTERVAL_S": "0.5",
                "HARSTREAM_ALERTING_WEBHOOK_URLS": webhook_url,
            }
        },
    )
    pipeline = Pipeline(config)
    prometheus = _Prometheus(tmp_path, pipeline.metrics_urls())
    try:
        prometheus.wait_ready()
        with pipeline:
            _drive_traffic(pipeline, hapt_cache)
            records = [r["record"] for r in _rules("record")]
            panels = _panel_queries()
            results = _wait_for_data(prometheus, records + [q for _, _, q in panels], 90.0)

            targets = prometheus.api("targets")["activeTargets"]
            # Every service of the local pipeline under its production job name (the MQTT
            # bridge is not part of it).
            assert {t["labels"]["job"] for t in targets} == {
                "ingest",
                "preprocess",
                "inference",
                "alerting",
                "history",
                "tfserving",
            }
            assert all(t["health"] == "up" for t in targets), [
                (t["labels"]["job"], t["lastError"]) for t in targets if t["health"] != "up"
            ]
            for group in prometheus.api("rules")["groups"]:
                for rule in group["rules"]:
                    assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))

            empty_records = [r for r in records if not results[r] and r not in NO_LOCAL_DATA]
            assert not empty_records, f"recording rules without data: {empty_records}"
            empty_panels = [
                (dashboard, title, q)
                for dashboard, title, q in panels
                if not results[q] and q not in NO_LOCAL_DATA
            ]
            assert not empty_panels, f"panels without data: {empty_panels}"
            assert _WebhookReceiver.received, "no alert reached the webhook"
            # The SLO histogram saw real predictions.
            (p99,) = results["job:harstream_end_to_end_latency_seconds:p99_rate5m"]
            assert 0 < float(p99["value"][1]) < 30
            # The history service read those predictions (its series exist from the start,
            # so the panels above had data either way).
            accepted = 'harstream_history_predictions_total{job="history",outcome="accepted"} > 0'
            assert _wait_for_data(prometheus, [accepted], 60.0)[accepted], "history read nothing"
    finally:
        prometheus.stop()
