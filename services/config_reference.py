"""The configuration reference, generated from the settings classes so it cannot drift.

One markdown table per service (env var, type, default, description), nested models
expanded (``HARSTREAM_ALERTING_RULES__FALL_CONFIRM_S``). Pure: imports only the settings
classes, reads no environment. It sits beside the services, not in ``services/common``:
it imports every service's settings, and the common layer is what services import.
Regenerate the README section with::

    .venv/bin/python -m services.config_reference --write README.md
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from services.alerting.settings import AlertingSettings
from services.history.settings import HistorySettings
from services.inference.settings import InferenceSettings
from services.ingest.settings import IngestSettings
from services.modelserver.settings import ModelServerSettings
from services.mqtt_bridge.settings import MqttBridgeSettings
from services.preprocess.settings import PreprocessSettings

#: (service, settings class) in pipeline order; the service name is the ``harstream`` command.
SERVICES: tuple[tuple[str, type[BaseSettings]], ...] = (
    ("ingest", IngestSettings),
    ("preprocess", PreprocessSettings),
    ("inference", InferenceSettings),
    ("alerting", AlertingSettings),
    ("history", HistorySettings),
    ("mqtt-bridge", MqttBridgeSettings),
    ("modelserver", ModelServerSettings),
)

BEGIN_MARKER = "<!-- config-reference:begin (generated: do not edit by hand) -->"
END_MARKER = "<!-- config-reference:end -->"
REGENERATE_COMMAND = ".venv/bin/python -m services.config_reference --write README.md"


@dataclass(frozen=True)
class EnvVar:
    """One environment variable of one service."""

    name: str
    type: str
    default: str
    description: str
    #: Dotted path of the settings field, e.g. ``rules.fall_confirm_s``.
    field_path: str


def _type_name(annotation: Any) -> str:  # noqa: PLR0911 - one return per kind of type
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "unset"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(repr(m.value) for m in annotation)
    if annotation is time:
        return "time (HH:MM)"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:  # noqa: PLR0911 - one return per kind of default
    if info.default_factory is not None:
        # Factories compute machine-specific values (XDG paths): the description says how.
        return "(computed, see description)"
    if info.default is PydanticUndefined:
        return "(required)"
    if info.default is None:
        return "unset"
    if isinstance(info.default, time):
        return info.default.strftime("%H:%M")
    if isinstance(info.default, Path):
        # The model server's default is the repo's models/har: show it relative to the repo.
        parts = info.default.parts
        return "/".join(parts[-2:]) if len(parts) >= 2 else str(info.default)
    if isinstance(info.default, enum.Enum):
        return str(info.default.value)
    return repr(info.default) if isinstance(info.default, str) else str(info.default)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _walk(
    model: type[BaseModel], env_prefix: str, delimiter: str | None, path: str
) -> Iterator[EnvVar]:
    for name, info in model.model_fields.items():
        env_name = f"{env_prefix}{name}".upper()
        field_path = f"{path}{name}"
        nested = _nested_model(info.annotation)
        if nested is not None and delimiter:
            yield EnvVar(
                env_name,
                "JSON object",
                "(see the fields below)",
                (info.description or "") + " All fields at once, as one JSON object.",
                field_path,
            )
            yield from _walk(nested, f"{env_name}{delimiter}", delimiter, f"{field_path}.")
            continue
        yield EnvVar(
            env_name,
            _type_name(info.annotation),
            _default(info),
            " ".join((info.description or "").split()),
            field_path,
        )


def env_vars(settings_class: type[BaseSettings]) -> list[EnvVar]:
    """Every environment variable ``settings_class`` reads, nested fields expanded."""
    config = settings_class.model_config
    prefix = str(config.get("env_prefix", ""))
    delimiter = config.get("env_nested_delimiter")
    return list(_walk(settings_class, prefix, delimiter, ""))


def env_var_names() -> dict[str, str]:
    """``{env var: service}`` for every service: what deployment manifests may set."""
    return {var.name: service for service, cls in SERVICES for var in env_vars(cls)}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """The reference: one ``###`` section and table per service."""
    lines: list[str] = []
    for service, cls in SERVICES:
        prefix = cls.model_config.get("env_prefix", "")
        doc = " ".join((cls.__doc__ or "").split())
        lines += [
            f"### `harstream {service}` ({cls.__name__}, prefix `{prefix}`)",
            "",
            doc,
            "",
            "| Env var | Type | Default | Description |",
            "| --- | --- | --- | --- |",
        ]
        for var in env_vars(cls):
            lines.append(
                f"| `{var.name}` | {var.type} | `{_cell(var.default)}` | {_cell(var.description)} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def readme_block() -> str:
    """The README section body between the markers, the regeneration command included."""
    return (
        f"{BEGIN_MARKER}\n\nRegenerate with `{REGENERATE_COMMAND}`.\n\n{markdown()}\n{END_MARKER}"
    )


def extract_block(text: str) -> str | None:
    """The generated block in ``text`` (markers included), or None if there is none."""
    start = text.find(BEGIN_MARKER)
    end = text.find(END_MARKER)
    if start < 0 or end < start:
        return None
    return text[start : end + len(END_MARKER)]


def replace_block(text: str) -> str:
    """``text`` with its generated block replaced by the current one."""
    current = extract_block(text)
    if current is None:
        raise ValueError(f"no {BEGIN_MARKER!r} ... {END_MARKER!r} block to replace")
    return text.replace(current, readme_block())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="Replace the generated block in this file.")
    parser.add_argument(
        "--check", type=Path, help="Exit 1 if this file's generated block is out of date."
    )
    args = parser.parse_args(argv)
    if args.write:
        args.write.write_text(replace_block(args.write.read_text()))
        return 0
    if args.check:
        return 0 if extract_block(args.check.read_text()) == readme_block() else 1
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
