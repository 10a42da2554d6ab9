"""``harstream models``: label moves as TF Serving configs, and the config files it writes
(no server; the integration tests run them against the development model server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.models.admin import AdminError, read_config_files, write_config_files
from services.models.cli import models
from services.models.labels import RolloutError, promote, rollback
from services.modelserver.config import ModelConfig, VersionPolicy, parse_config, render_config


def _config(versions: list[int], **labels: int) -> ModelConfig:
    return ModelConfig("har", "/models/har", policy=VersionPolicy.specific(versions), labels=labels)


def test_promoting_a_new_version_loads_it_first_then_moves_the_label() -> None:
    start = _config([1], stable=1, canary=1)
    load, final = promote(start, 2, "canary")
    # Step 1 only adds the version: TF Serving refuses labels on versions not yet loaded.
    assert (load.loads, load.config.labels) == (2, {"stable": 1, "canary": 1})
    assert load.config.policy == VersionPolicy.specific([1, 2])
    assert final.loads is None
    assert final.config.labels == {"stable": 1, "canary": 2}
    assert final.config.policy == VersionPolicy.specific([1, 2])
    # Promoting the loaded canary to stable: one step, and the old stable kept to roll back.
    (step,) = promote(final.config, 2)
    assert step.config.labels == {"stable": 2, "canary": 2, "previous": 1}
    assert step.config.policy == VersionPolicy.specific([1, 2])
    assert promote(step.config, 2) == []  # already there


def test_rollback_returns_to_previous_and_unloads_nothing_still_labelled() -> None:
    promoted = _config([1, 2], stable=2, canary=2, previous=1)
    (step,) = rollback(promoted)
    assert step.config.labels == {"stable": 1, "canary": 2}  # the state before the promotion
    assert step.config.policy == VersionPolicy.specific([1, 2])
    (abandon,) = rollback(step.config, "canary")
    assert abandon.config.labels == {"stable": 1, "canary": 1}
    assert abandon.config.policy == VersionPolicy.specific([1])  # v2 is unloaded
    with pytest.raises(RolloutError, match="nothing to roll back"):
        rollback(abandon.config)
    with pytest.raises(RolloutError):
        promote(abandon.config, 3, "other")
    with pytest.raises(RolloutError):
        promote(abandon.config, 0)


def test_other_labels_are_kept_and_a_latest_policy_becomes_specific() -> None:
    start = ModelConfig("har", "/m", labels={"stable": 1, "canary": 1, "beta": 4})
    load, final = promote(start, 3, "canary")
    assert load.config.policy == VersionPolicy.specific([1, 3, 4])
    assert final.config.labels == {"stable": 1, "canary": 3, "beta": 4}


def test_config_files_are_copies_rewritten_with_their_header(tmp_path: Path) -> None:
    text = "# keep me\nmodel_config_list { config { name: 'har' base_path: '/models/har' "
    text += "model_platform: 'tensorflow' model_version_policy { specific { versions: 1 } } "
    text += (
        "version_labels { key: 'stable' value: 1 } version_labels { key: 'canary' value: 1 } } }\n"
    )
    paths = [tmp_path / "a.config", tmp_path / "b.config"]
    for path in paths:
        path.write_text(text)
    files = read_config_files(paths)
    target = _config([1, 2], stable=1, canary=2)
    write_config_files(files, target)
    for path in paths:
        written = path.read_text()
        assert written.startswith("# keep me\nmodel_config_list {")
        assert parse_config(written) == [target]
        assert path.stat().st_mode & 0o777 == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    paths[1].write_text(text)
    with pytest.raises(AdminError, match="differ"):
        read_config_files(paths)


def test_cli_without_a_server_stages_a_promotion_in_two_runs(tmp_path: Path) -> None:
    base = tmp_path / "har"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"x")
    config = tmp_path / "models.config"
    start = ModelConfig(
        "har", str(base), policy=VersionPolicy.specific([1]), labels={"stable": 1, "canary": 1}
    )
    config.write_text(render_config([start]))
    runner = CliRunner()
    first = runner.invoke(models, ["promote", "2", "--label", "canary", "--config", str(config)])
    assert first.exit_code == 0, first.output
    assert "run the same command again" in first.output
    assert parse_config(config.read_text())[0].labels == {"stable": 1, "canary": 1}
    second = runner.invoke(models, ["promote", "2", "--label", "canary", "--config", str(config)])
    assert second.exit_code == 0, second.output
    assert parse_config(config.read_text())[0].labels == {"stable": 1, "canary": 2}
    listing = runner.invoke(models, ["list", "--config", str(config), "--json"])
    assert listing.exit_code == 0, listing.output
    rows = {r["version"]: r for r in json.loads(listing.output)["versions"]}
    assert rows[1]["on_disk"] and rows[1]["labels"] == ["stable"]
    assert not rows[2]["on_disk"] and rows[2]["labels"] == ["canary"]
    refused = runner.invoke(models, ["rollback", "--config", str(config)])
    assert refused.exit_code == 2 and "nothing to roll back" in refused.output
