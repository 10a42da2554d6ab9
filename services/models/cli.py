"""``harstream models list|promote|rollback``: which model version carries which label.

Works on TF Serving model config files (``--config``, protobuf text of ModelServerConfig:
deploy/tfserving/models.config for docker-compose, k8s/base/tfserving/models.config for the
ConfigMap, or the one a ``harstream modelserver`` reads) and, with ``--target``, on a
running model server through ModelService/HandleReloadConfigRequest: the change takes
effect at once and the inference workers' next Predict follows the label, no restart.

The file is always written first, then the same config is sent: TF Serving re-reads its
file every --model_config_file_poll_wait_seconds and the file wins, so both must agree.
Without ``--target`` only the files change; a server polling them applies them within its
poll interval (docker-compose: 10 s; k8s: the ConfigMap, once ``kubectl apply -k`` updated
it and the kubelet synced it, ~1 min, then TF Serving's 60 s poll). k8s runs two TF Serving
replicas: use the files (an RPC reaches one pod only).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

logger = logging.getLogger(__name__)

CONFIG_HELP = (
    "TF Serving model config file; give it several times to keep copies identical "
    "(e.g. deploy/tfserving/models.config and k8s/base/tfserving/models.config) "
    "[env HARSTREAM_MODELS_CONFIG, space-separated]."
)
TARGET_HELP = (
    "gRPC host:port of the model server to reload at once (TF Serving or harstream "
    "modelserver); without it only the files change [env HARSTREAM_MODELS_TARGET]."
)


@dataclass(frozen=True)
class _Options:
    configs: tuple[Path, ...]
    target: str | None
    model_name: str | None
    timeout_s: float


def _common(function: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--config",
                "configs",
                type=click.Path(path_type=Path, dir_okay=False, exists=True),
                multiple=True,
                required=True,
                envvar="HARSTREAM_MODELS_CONFIG",
                help=CONFIG_HELP,
            ),
            click.option(
                "--target", default=None, envvar="HARSTREAM_MODELS_TARGET", help=TARGET_HELP
            ),
            click.option(
                "--model-name", default=None, help="Model in the config [default: its only one]."
            ),
            click.option(
                "--timeout",
                "timeout_s",
                type=float,
                default=120.0,
                show_default=True,
                help="Seconds to wait for a version to load on --target.",
            ),
        ]
    ):
        function = option(function)
    return function


@click.group()
def models() -> None:
    """Model versions and their TF Serving labels (stable, canary, previous)."""


@models.command(name="list")
@_common
@click.option(
    "--model-base",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Local base path of the versions, for what is on disk [default: the config's].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_versions(
    configs: tuple[Path, ...],
    target: str | None,
    model_name: str | None,
    timeout_s: float,
    model_base: Path | None,
    as_json: bool,
) -> None:
    """Versions on disk, in the config's policy and on the server, with their labels."""
    from services.models import admin  # noqa: PLC0415

    files = _read(configs, model_name)
    config = files[0].config
    base = model_base or Path(config.base_path)
    on_disk = _versions_on_disk(base)
    server_states: dict[int, str] = {}
    server_labels: dict[str, int | str] = {}
    if target:
        with admin.ModelServerAdmin(target, min(timeout_s, 30.0)) as server:
            server_states = _or_exit(lambda: server.statuses(config.name))
            for label in sorted(config.labels):
                try:
                    server_labels[label] = server.resolve_label(config.name, label)
                except admin.AdminError as exc:
                    server_labels[label] = str(exc)
    versions = sorted({*on_disk, *config.labels.values(), *config.policy.versions, *server_states})
    rows = []
    for version in versions:
        card = on_disk.get(version, {})
        rows.append(
            {
                "version": version,
                "labels": sorted(k for k, v in config.labels.items() if v == version),
                "in_policy": version in config.policy.select(versions),
                "on_disk": version in on_disk,
                "server": server_states.get(version, "-") if target else None,
                "model": card.get("name", "-"),
                "test_accuracy": card.get("accuracy"),
            }
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": config.name,
                    "config": [str(f.path) for f in files],
                    "policy": config.policy.describe(),
                    "labels": dict(config.labels),
                    "server_labels": server_labels if target else None,
                    "versions": rows,
                },
                indent=2,
            )
        )
        return
    click.echo(f"model {config.name}: policy {config.policy.describe()}, base path {base}")
    header = f"{'version':>7}  {'labels':<24} {'policy':<6} {'disk':<5} "
    header += f"{'server':<10} " if target else ""
    click.echo(header + "model (test accuracy)")
    for row in rows:
        accuracy = row["test_accuracy"]
        model = f"{row['model']}" + (f" ({accuracy:.2%})" if accuracy is not None else "")
        line = (
            f"{row['version']:>7}  {','.join(row['labels']) or '-':<24} "
            f"{'yes' if row['in_policy'] else 'no':<6} {'yes' if row['on_disk'] else 'no':<5} "
        )
        line += f"{row['server']:<10} " if target else ""
        click.echo(line + model)
    if target:
        mismatched = {k: v for k, v in server_labels.items() if v != config.labels.get(k)}
        click.echo(
            "server labels: "
            + ", ".join(f"{k}={v}" for k, v in sorted(server_labels.items()))
            + (f" (differs from the file: {mismatched})" if mismatched else " (as in the file)")
        )


@models.command()
@click.argument("version", type=int)
@click.option(
    "--label",
    type=click.Choice(["stable", "canary"]),
    default="stable",
    show_default=True,
    help="Label to move onto VERSION (stable keeps the old one as 'previous').",
)
@_common
@click.option(
    "--no-staging",
    is_flag=True,
    help=(
        "Without --target: write the final config at once even if VERSION is not in the "
        "policy yet. Only for a config no running server reads (TF Serving accepts labels "
        "of versions still loading only at start-up)."
    ),
)
def promote(
    version: int,
    label: str,
    configs: tuple[Path, ...],
    target: str | None,
    model_name: str | None,
    timeout_s: float,
    no_staging: bool,
) -> None:
    """Make LABEL (stable by default) name VERSION.

    With --target: adds VERSION to the policy, waits until it is AVAILABLE, then moves the
    label; each step written to the files and sent to the server. Without: the first run
    adds VERSION to the policy of the files; run it again once the server has loaded it
    (its poll interval) to move the label.
    """
    from services.models.labels import RolloutError  # noqa: PLC0415
    from services.models.labels import promote as plan_promotion  # noqa: PLC0415

    files = _read(configs, model_name)
    try:
        steps = plan_promotion(files[0].config, version, label)
    except RolloutError as exc:
        raise click.UsageError(str(exc)) from exc
    _apply(files, steps, target, timeout_s, no_staging, what=f"{label} → v{version}")


@models.command()
@click.option(
    "--label",
    type=click.Choice(["stable", "canary"]),
    default="stable",
    show_default=True,
    help="stable: back to the 'previous' version; canary: back to the stable version.",
)
@_common
def rollback(
    label: str,
    configs: tuple[Path, ...],
    target: str | None,
    model_name: str | None,
    timeout_s: float,
) -> None:
    """Undo the last promotion of LABEL (stable by default)."""
    from services.models.labels import RolloutError  # noqa: PLC0415
    from services.models.labels import rollback as plan_rollback  # noqa: PLC0415

    files = _read(configs, model_name)
    try:
        steps = plan_rollback(files[0].config, label)
    except RolloutError as exc:
        raise click.UsageError(str(exc)) from exc
    _apply(files, steps, target, timeout_s, no_staging=False, what=f"rollback of {label}")


def _read(configs: tuple[Path, ...], model_name: str | None) -> list[Any]:
    from services.models import admin  # noqa: PLC0415
    from services.modelserver.errors import ServingError  # noqa: PLC0415

    try:
        return admin.read_config_files(configs, model_name)
    except (admin.AdminError, ServingError, OSError) as exc:
        raise click.UsageError(str(exc)) from exc


def _or_exit(call: Any) -> Any:
    from services.models.admin import AdminError  # noqa: PLC0415

    try:
        return call()
    except AdminError as exc:
        raise click.ClickException(str(exc)) from exc


def _apply(
    files: list[Any],
    steps: list[Any],
    target: str | None,
    timeout_s: float,
    no_staging: bool,
    what: str,
) -> None:
    from services.models import admin  # noqa: PLC0415
    from services.models.labels import describe_labels  # noqa: PLC0415

    config = files[0].config
    if not steps:
        click.echo(f"nothing to do: {describe_labels(config.labels)}")
        return
    if target is None and no_staging:
        steps = steps[-1:]
    server = admin.ModelServerAdmin(target, min(timeout_s, 30.0)) if target else None
    try:
        for step in steps:
            admin.write_config_files(files, step.config)
            if server is None:
                if step.loads is not None:
                    click.echo(
                        f"added version {step.loads} to the policy in "
                        f"{', '.join(str(f.path) for f in files)} (labels unchanged: "
                        f"{describe_labels(step.config.labels)}); once the model server has "
                        "loaded it, run the same command again to move the label"
                    )
                    return
                continue
            _or_exit(lambda step=step: server.reload(step.config))
            if step.loads is not None:
                click.echo(f"loading version {step.loads} on {target}...")
                _or_exit(
                    lambda step=step: server.wait_available(config.name, step.loads, timeout_s)
                )
        final = steps[-1].config
        if server is not None:
            served = {
                k: _or_exit(lambda k=k: server.resolve_label(final.name, k)) for k in final.labels
            }
            if served != dict(final.labels):
                raise click.ClickException(f"the server answers {served}, not {dict(final.labels)}")
        click.echo(
            f"{what}: {describe_labels(final.labels)} "
            f"({', '.join(str(f.path) for f in files)}"
            + (f"; {target} serves it now" if server is not None else "")
            + ")"
        )
    finally:
        if server is not None:
            server.close()


def _versions_on_disk(base: Path) -> dict[int, dict[str, Any]]:
    """Version → what its model card says (name, test accuracy), for versions under
    ``base`` that hold a SavedModel."""
    from services.modelserver.versions import has_saved_model, scan_versions  # noqa: PLC0415

    found: dict[int, dict[str, Any]] = {}
    for version, path in scan_versions(base).items():
        if not has_saved_model(path):
            continue
        card: dict[str, Any] = {}
        try:
            data = json.loads((path / "model_card.json").read_text())
            card["name"] = data.get("name", "-")
            card["accuracy"] = data.get("metrics", {}).get("test", {}).get("accuracy")
        except (OSError, ValueError, AttributeError):
            pass
        found[version] = card
    return found
