"""TF Serving's model server config: the file of ``--model_config_file`` and the body of
``ModelService/HandleReloadConfigRequest``, parsed into plain values and rendered back.

The format is protobuf text of ``tensorflow.serving.ModelServerConfig`` (a
``model_config_list`` of ``config`` entries with ``name``, ``base_path``,
``model_platform``, ``model_version_policy`` and ``version_labels``). Its protos ship with
tensorflow-serving-api and import no TensorFlow, so this module stays cheap to import and
is shared by the model server and ``harstream models``.

Validation follows TF Serving's ``ServerCore``: model names unique, base paths absolute
(there is no ``--model_config_list_root_dir`` here), a ``model_config_list`` rather than a
custom config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from google.protobuf import text_format
from google.protobuf.message import DecodeError
from tensorflow_serving.config import model_server_config_pb2

from services.modelserver.errors import InvalidArgumentError

PolicyKind = Literal["latest", "all", "specific"]


@dataclass(frozen=True)
class VersionPolicy:
    """``model_version_policy``: which versions found under the base path are served."""

    kind: PolicyKind = "latest"
    #: ``latest { num_versions }`` (TF Serving serves at least 1).
    num_versions: int = 1
    #: ``specific { versions }``.
    versions: frozenset[int] = frozenset()

    @classmethod
    def latest(cls, num_versions: int = 1) -> VersionPolicy:
        return cls("latest", max(1, num_versions))

    @classmethod
    def specific(cls, versions: Iterable[int]) -> VersionPolicy:
        return cls("specific", versions=frozenset(versions))

    @classmethod
    def all(cls) -> VersionPolicy:
        return cls("all")

    def select(self, loadable: Iterable[int]) -> set[int]:
        """The versions to serve among ``loadable`` ones (on disk, complete, not failed)."""
        present = set(loadable)
        if self.kind == "all":
            return present
        if self.kind == "specific":
            return present & self.versions
        return set(sorted(present)[-self.num_versions :]) if present else set()

    def describe(self) -> str:
        if self.kind == "specific":
            return "specific " + ",".join(str(v) for v in sorted(self.versions))
        return f"latest {self.num_versions}" if self.kind == "latest" else "all"


@dataclass(frozen=True)
class ModelConfig:
    """One ``config`` entry of a ``model_config_list``."""

    name: str
    base_path: str
    platform: str = "tensorflow"
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    #: ``version_labels``: label → version.
    labels: Mapping[str, int] = field(default_factory=dict)

    def with_labels(self, labels: Mapping[str, int]) -> ModelConfig:
        return ModelConfig(self.name, self.base_path, self.platform, self.policy, dict(labels))

    def with_policy(self, policy: VersionPolicy) -> ModelConfig:
        return ModelConfig(self.name, self.base_path, self.platform, policy, dict(self.labels))


class ConfigError(InvalidArgumentError):
    """A model server config TF Serving would refuse (unparsable or invalid)."""


def _policy_from_proto(proto: object) -> VersionPolicy:
    choice = proto.WhichOneof("policy_choice")  # type: ignore[attr-defined]
    if choice == "specific":
        return VersionPolicy.specific(int(v) for v in proto.specific.versions)  # type: ignore[attr-defined]
    if choice == "all":
        return VersionPolicy.all()
    if choice == "latest":
        return VersionPolicy.latest(int(proto.latest.num_versions))  # type: ignore[attr-defined]
    return VersionPolicy.latest(1)  # TF Serving's default


def from_proto(proto: model_server_config_pb2.ModelServerConfig) -> list[ModelConfig]:
    """The model configs of a ``ModelServerConfig``; raises :class:`ConfigError` where
    TF Serving's ``ServerCore::ReloadConfig`` would refuse it."""
    which = proto.WhichOneof("config")
    if which is None:
        return []
    if which != "model_config_list":
        raise ConfigError(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
            "ModelConfigList is currently supported"
        )
    configs: list[ModelConfig] = []
    names: set[str] = set()
    for entry in proto.model_config_list.config:
        if entry.name in names:
            raise ConfigError(f"Illegal to list model {entry.name} multiple times in config list")
        names.add(entry.name)
        if not entry.base_path.startswith("/") and "://" not in entry.base_path:
            raise ConfigError(
                f"Expected model {entry.name} to have an absolute path or URI; "
                f"got base_path()={entry.base_path}"
            )
        platform = entry.model_platform
        if not platform:
            if entry.model_type == 0:
                raise ConfigError(
                    "Illegal setting neither model_type(deprecated) nor model_platform."
                )
            platform = "tensorflow" if entry.model_type == 1 else "other"
        configs.append(
            ModelConfig(
                name=entry.name,
                base_path=entry.base_path,
                platform=platform,
                policy=_policy_from_proto(entry.model_version_policy),
                labels={str(k): int(v) for k, v in entry.version_labels.items()},
            )
        )
    return configs


def to_proto(configs: Iterable[ModelConfig]) -> model_server_config_pb2.ModelServerConfig:
    proto = model_server_config_pb2.ModelServerConfig()
    entries = proto.model_config_list.config
    for config in configs:
        entry = entries.add(
            name=config.name, base_path=config.base_path, model_platform=config.platform
        )
        policy = entry.model_version_policy
        if config.policy.kind == "specific":
            policy.specific.versions.extend(sorted(config.policy.versions))
        elif config.policy.kind == "all":
            policy.all.SetInParent()
        else:
            policy.latest.num_versions = config.policy.num_versions
        for label, version in sorted(config.labels.items()):
            entry.version_labels[label] = version
    if not configs:
        proto.model_config_list.SetInParent()
    return proto


def parse_config(text: str) -> list[ModelConfig]:
    """Parse a config file's text; :class:`ConfigError` if it is not a valid one."""
    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except (text_format.ParseError, DecodeError) as exc:
        raise ConfigError(f"cannot parse the model server config: {exc}") from exc
    return from_proto(proto)


def render_config(configs: Iterable[ModelConfig], header: str = "") -> str:
    """The text of a config file: ``header`` (comment lines, kept as given) then the
    protobuf text of ``configs``."""
    body = str(text_format.MessageToString(to_proto(list(configs))))
    return (header if not header or header.endswith("\n") else header + "\n") + body


def leading_comments(text: str) -> str:
    """The comment block at the top of a config file (kept when the file is rewritten)."""
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        lines.append(line)
    return "".join(lines)


def only_model(configs: list[ModelConfig], name: str | None = None) -> ModelConfig:
    """The config of model ``name`` (or the only one when ``name`` is None)."""
    if name is None:
        if len(configs) != 1:
            raise ConfigError(
                f"the config lists {len(configs)} models "
                f"({', '.join(c.name for c in configs) or 'none'}): name one"
            )
        return configs[0]
    for config in configs:
        if config.name == name:
            return config
    raise ConfigError(f"the config has no model {name!r}")


__all__ = [
    "ConfigError",
    "ModelConfig",
    "VersionPolicy",
    "from_proto",
    "leading_comments",
    "only_model",
    "parse_config",
    "render_config",
    "to_proto",
]
