"""The configuration reference covers every settings field and the README carries it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from services.alerting.rules import AlertRules
from services.config_reference import (
    BEGIN_MARKER,
    END_MARKER,
    SERVICES,
    env_var_names,
    env_vars,
    extract_block,
    markdown,
    readme_block,
    replace_block,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    fields = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields.add(prefix + name)  # the whole object as JSON
            fields |= _leaf_fields(annotation, f"{prefix}{name}.")
        else:
            fields.add(prefix + name)
    return fields


def test_every_field_of_every_settings_class_is_documented() -> None:
    names = {cls.__name__ for _, cls in SERVICES}
    assert names == {
        "IngestSettings",
        "PreprocessSettings",
        "InferenceSettings",
        "AlertingSettings",
        "HistorySettings",
        "MqttBridgeSettings",
        "ModelServerSettings",
    }
    text = markdown()
    for service, cls in SERVICES:
        documented = {var.field_path for var in env_vars(cls)}
        assert documented == _leaf_fields(cls), service
        prefix = cls.model_config["env_prefix"]
        for var in env_vars(cls):
            assert var.name.startswith(prefix)
            assert var.description, var.name
            assert f"| `{var.name}` |" in text


def test_nested_alert_rules_use_the_double_underscore_delimiter() -> None:
    names = env_var_names()
    for field in AlertRules.model_fields:
        assert names[f"HARSTREAM_ALERTING_RULES__{field.upper()}"] == "alerting"
    assert names["HARSTREAM_ALERTING_RULES"] == "alerting"
    assert names["HARSTREAM_INGEST_KAFKA_PROFILE"] == "ingest"
    assert "HARSTREAM_INGEST_RULES__FALL_CONFIRM_S" not in names


def test_defaults_are_shown_without_machine_specific_paths() -> None:
    by_name = {v.name: v for _, cls in SERVICES for v in env_vars(cls)}
    assert by_name["HARSTREAM_INGEST_PORT"].default == "8080"
    assert by_name["HARSTREAM_INFERENCE_MODEL_VERSION"].default == "unset"
    assert by_name["HARSTREAM_ALERTING_RULES__DAY_START"].default == "08:00"
    assert by_name["HARSTREAM_INGEST_REGISTRY_URL"].default == "(computed, see description)"
    assert by_name["HARSTREAM_MODELSERVER_MODEL_BASE_PATH"].default == "models/har"
    assert "/home/" not in markdown() and "/root/" not in markdown()


def test_readme_reference_is_the_generated_one() -> None:
    block = extract_block(README.read_text())
    assert block is not None, f"README.md has no {BEGIN_MARKER} ... {END_MARKER} block"
    assert block == readme_block(), (
        "README.md's configuration reference is out of date: run "
        "`.venv/bin/python -m services.config_reference --write README.md`"
    )


def test_replace_block_rewrites_only_the_block() -> None:
    text = f"before\n{BEGIN_MARKER}\nold\n{END_MARKER}\nafter\n"
    new = replace_block(text)
    assert new.startswith("before\n") and new.endswith("\nafter\n")
    assert extract_block(new) == readme_block()
