"""TF Serving's model config in the development server: parsing and rendering, version
policies, label checks as ServerCore does them, reloads from a file and by RPC (fake loader,
no TensorFlow)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from services.modelserver.config import (
    ConfigError,
    ModelConfig,
    VersionPolicy,
    leading_comments,
    parse_config,
    render_config,
    to_proto,
)
from services.modelserver.errors import (
    Code,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnimplementedError,
)
from services.modelserver.manager import ModelManager
from services.modelserver.reload import ConfigFileWatcher, ConfigReloader
from tests.unit.test_modelserver_versions import FakeServable, make_version

REPO = Path(__file__).resolve().parents[2]

SHIPPED = """# comment kept
# on two lines
model_config_list {
  config {
    name: "har"
    base_path: "/models/har"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
}
"""


# --- parsing and rendering -----------------------------------------------------------------


def test_parse_the_shipped_config_files() -> None:
    for path in ("deploy/tfserving/models.config", "k8s/base/tfserving/models.config"):
        (config,) = parse_config((REPO / path).read_text())
        assert (config.name, config.base_path, config.platform) == (
            "har",
            "/models/har",
            "tensorflow",
        )
        assert config.policy.kind == "specific"
        assert {"stable", "canary"} <= set(config.labels)


def test_render_round_trips_and_is_tf_serving_text() -> None:
    (config,) = parse_config(SHIPPED)
    assert config.policy == VersionPolicy.specific([1, 2])
    assert config.labels == {"stable": 1, "canary": 2}
    text = render_config([config], leading_comments(SHIPPED))
    assert text.startswith("# comment kept\n# on two lines\nmodel_config_list {\n")
    assert parse_config(text) == [config]
    # What TF Serving itself parses: the same message as the hand-written file.
    ours = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    theirs = text_format.Parse(SHIPPED, model_server_config_pb2.ModelServerConfig())
    assert ours == theirs
    for policy in (VersionPolicy.latest(2), VersionPolicy.all()):
        again = config.with_policy(policy)
        assert parse_config(render_config([again])) == [again]


def test_policies_select_like_tf_serving() -> None:
    loadable = [1, 2, 5, 7]
    assert VersionPolicy().select(loadable) == {7}  # no policy: latest 1
    assert VersionPolicy.latest(2).select(loadable) == {5, 7}
    assert VersionPolicy.latest(0).select(loadable) == {7}  # TF Serving serves at least 1
    assert VersionPolicy.all().select(loadable) == {1, 2, 5, 7}
    assert VersionPolicy.specific([2, 3]).select(loadable) == {2}  # 3 is not there
    assert VersionPolicy.specific([]).select(loadable) == set()
    assert VersionPolicy.latest().select([]) == set()
    empty = model_server_config_pb2.ModelServerConfig()
    empty.model_config_list.config.add(name="m", base_path="/m", model_platform="tensorflow")
    (parsed,) = parse_config(text_format.MessageToString(empty))
    assert parsed.policy == VersionPolicy.latest(1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { name: 'a' base_path: 'rel' model_platform: 'tensorflow' } }",
         "absolute path"),
        ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'tensorflow' }"
         " config { name: 'a' base_path: '/b' model_platform: 'tensorflow' } }",
         "multiple times"),
        ("model_config_list { config { name: 'a' base_path: '/a' } }", "model_platform"),
        ("model_config_list { config { nme: 'a' } }", "cannot parse"),
        ("custom_model_config { }", "Only ModelConfigList"),
    ],
)  # fmt: skip
def test_configs_tf_serving_refuses_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(text)
    assert caught.value.code == Code.INVALID_ARGUMENT


def test_proto_of_an_empty_list_is_a_model_config_list() -> None:
    proto = to_proto([])
    assert proto.WhichOneof("config") == "model_config_list"


# --- labels and reloads over a manager with a fake loader ------------------------------------


def _manager(base: Path, policy: VersionPolicy) -> ModelManager[FakeServable]:
    return ModelManager("har", base, FakeServable, policy=policy)


def _config(base: Path, versions: list[int], **labels: int) -> ModelConfig:
    return ModelConfig("har", str(base), policy=VersionPolicy.specific(versions), labels=labels)


def test_labels_on_versions_not_available_are_refused_unless_allowed(tmp_path: Path) -> None:
    make_version(tmp_path, "1")
    make_version(tmp_path, "2")
    manager = _manager(tmp_path, VersionPolicy.specific([1]))
    # TF Serving checks labels before it loads anything: at start-up they fail...
    with pytest.raises(FailedPreconditionError, match="version 1 of model har, which is not"):
        ConfigReloader(manager, allow_unavailable_labels=False).reload(
            [_config(tmp_path, [1], stable=1)]
        )
    # ...unless --allow_version_labels_for_unavailable_models.
    reloader = ConfigReloader(manager, allow_unavailable_labels=True)
    reloader.reload([_config(tmp_path, [1], stable=1, canary=1)])
    manager.poll()
    assert manager.get("har", label="canary").version == 1
    # Moving an existing label to a version that is not loaded is refused even so, and the
    # refused config changes nothing (its policy is not applied either).
    with pytest.raises(FailedPreconditionError, match="version 2 of model har"):
        reloader.reload([_config(tmp_path, [1, 2], stable=1, canary=2)])
    manager.poll()
    assert set(manager.serving) == {1}
    assert manager.get("har", label="canary").version == 1
    # The two steps TF Serving needs: load the version, then move the label.
    reloader.reload([_config(tmp_path, [1, 2], stable=1, canary=1)])
    manager.poll()
    assert set(manager.serving) == {1, 2}
    reloader.reload([_config(tmp_path, [1, 2], stable=1, canary=2)])
    assert manager.get("har", label="canary").version == 2  # at once, no poll needed
    assert manager.get("har", label="stable").version == 1
    assert manager.get("har").version == 2  # no label: the newest served
    # A new label may name a version still to load (with the flag): it answers NOT_FOUND
    # until it is served, like TF Serving's Specific(har, 3).
    make_version(tmp_path, "3")
    reloader.reload([_config(tmp_path, [1, 2], stable=1, canary=2, next=3)])
    with pytest.raises(NotFoundError, match=r"Specific\(har, 3\)"):
        manager.get("har", label="next")
    with pytest.raises(InvalidArgumentError, match="Unrecognized servable version label: gone"):
        manager.get("har", label="gone")


def test_dropping_a_version_from_the_policy_unloads_it(tmp_path: Path) -> None:
    for name in ("1", "2"):
        make_version(tmp_path, name)
    manager = _manager(tmp_path, VersionPolicy.specific([1, 2]))
    reloader = ConfigReloader(manager, allow_unavailable_labels=True)
    reloader.reload([_config(tmp_path, [1, 2], stable=2, canary=2, previous=1)])
    manager.poll()
    assert set(manager.serving) == {1, 2}
    reloader.reload([_config(tmp_path, [2], stable=2, canary=2)])
    manager.poll()
    assert set(manager.serving) == {2}
    assert [(s.version, s.state.name) for s in manager.statuses("har")] == [
        (2, "AVAILABLE"),
        (1, "END"),
    ]


def test_one_model_one_base_path(tmp_path: Path) -> None:
    manager = _manager(tmp_path, VersionPolicy())
    reloader = ConfigReloader(manager, allow_unavailable_labels=True)
    for configs in (
        [ModelConfig("other", str(tmp_path))],
        [ModelConfig("har", str(tmp_path)), ModelConfig("b", "/b")],
        [ModelConfig("har", "/elsewhere")],
    ):
        with pytest.raises(UnimplementedError):
            reloader.reload(configs)
    with pytest.raises(InvalidArgumentError, match="unsupported platform"):
        reloader.reload([ModelConfig("har", str(tmp_path), platform="pytorch")])
    assert reloader.reload(None) is False  # no config at all: no action, as TF Serving


def test_file_watcher_applies_changes_and_logs_a_refusal_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tmp_path / "har"
    make_version(base, "1")
    make_version(base, "2")
    manager = _manager(base, VersionPolicy.specific([1]))
    changes: list[ModelConfig] = []
    reloader = ConfigReloader(manager, allow_unavailable_labels=True, on_reload=changes.append)
    path = tmp_path / "models.config"
    path.write_text(render_config([_config(base, [1], stable=1, canary=1)]))
    watcher = ConfigFileWatcher(path, reloader, interval_s=1.0)
    assert watcher.poll_once() is True
    assert watcher.poll_once() is False  # unchanged: nothing to do
    manager.poll()
    path.write_text(render_config([_config(base, [1, 2], stable=1, canary=2)]))
    with caplog.at_level(logging.ERROR):
        assert watcher.poll_once() is False
        assert watcher.poll_once() is False
    refusals = [r for r in caplog.records if "not applied" in r.getMessage()]
    assert len(refusals) == 1 and "FAILED_PRECONDITION" in refusals[0].getMessage()
    assert manager.get("har", label="canary").version == 1
    path.write_text("model_config_list { config { name: ")
    assert watcher.poll_once() is False
    assert len(changes) == 1
