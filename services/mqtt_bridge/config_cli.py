"""``harstream devices mqtt-config``: Mosquitto's password file, ACL file and configuration
from the device registry (see :mod:`services.mqtt_bridge.mosquitto` for what is safe)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import click

from services.common.files import PRIVATE_FILE_MODE, ensure_private
from services.ingest.errors import RegistryError
from services.ingest.registry import DeviceRegistry
from services.ingest.tokens import verify_token
from services.mqtt_bridge.mosquitto import (
    DEFAULT_BRIDGE_USER,
    BrokerOptions,
    merge_credentials,
    parse_password_file,
    render_acl,
    render_conf,
    render_password_file,
)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (password hashes, secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    ensure_private(path)  # an older file keeps its mode through O_CREAT


def read_tokens(path: Path) -> dict[str, str]:
    """Device id → token from ``path``: a JSON object of them, a JSON array of
    ``{"device_id", "token"}`` objects, or such objects one per line (what
    ``harstream devices add --json`` prints)."""
    text = path.read_text()
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError:
        document = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(document, dict) and "device_id" not in document:
        return {str(k): str(v) for k, v in document.items()}
    items = document if isinstance(document, list) else [document]
    return {str(item["device_id"]): str(item["token"]) for item in items}


@click.command("mqtt-config")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Directory for passwd, acl and mosquitto.conf (passwd entries there are kept).",
)
@click.option(
    "--tokens",
    "tokens_files",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    multiple=True,
    help="Tokens of devices (JSON, or the lines of `devices add --json`); repeatable.",
)
@click.option("--bridge-user", default=DEFAULT_BRIDGE_USER, show_default=True)
@click.option(
    "--bridge-password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The bridge's password (created with a random one if missing) "
    "[default OUT/bridge.password].",
)
@click.option(
    "--bridge-password-env",
    metavar="NAME",
    default=None,
    help="Take the bridge's password from environment variable NAME instead (docker-compose: "
    "MQTT_BRIDGE_PASSWORD from .env).",
)
@click.option("--port", type=int, default=1883, show_default=True, help="Listener port.")
@click.option("--bind", default="", help="Listener address (default: all).")
@click.option(
    "--config-dir",
    default=None,
    help="OUT as the broker sees it (e.g. /mosquitto/config in a container) [default OUT].",
)
@click.option(
    "--data-dir",
    default=None,
    help="Broker persistence directory (e.g. /mosquitto/data) [default: none, in memory].",
)
@click.pass_context
def mqtt_config(
    ctx: click.Context,
    out_dir: Path,
    tokens_files: tuple[Path, ...],
    bridge_user: str,
    bridge_password_file: Path | None,
    bridge_password_env: str | None,
    port: int,
    bind: str,
    config_dir: str | None,
    data_dir: str | None,
) -> None:
    """Write Mosquitto's passwd, acl and mosquitto.conf for the registered devices.

    Devices log in with their device id and their token; each may publish only to
    harstream/v1/devices/<its id>/packets. The registry stores only token hashes, so new
    devices' tokens come from --tokens; devices already in OUT/passwd keep their entries,
    revoked and removed devices lose them. Send the broker SIGHUP to reload the files.
    """
    registry: DeviceRegistry = ctx.obj["registry"]
    try:
        records = {record.device_id: record for record in registry.list() if not record.revoked}
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    tokens: dict[str, str] = {}
    for path in tokens_files:
        tokens.update(read_tokens(path))
    wrong = [
        d for d, t in tokens.items() if d in records and not verify_token(t, records[d].token_hash)
    ]
    if wrong:
        raise click.ClickException(
            f"{len(wrong)} tokens do not match the registry (e.g. device {wrong[0]!r}): "
            "they would be refused by HTTP ingest too"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    passwd = out_dir / "passwd"
    existing = parse_password_file(passwd.read_text()) if passwd.exists() else {}
    bridge_file = bridge_password_file or out_dir / "bridge.password"
    bridge_password = None
    if bridge_password_env is not None:
        bridge_password = os.environ.get(bridge_password_env, "").strip()
        if not bridge_password:
            raise click.ClickException(f"environment variable {bridge_password_env} is empty")
    elif bridge_file.exists():
        bridge_password = bridge_file.read_text().strip()
    elif bridge_user not in existing:
        bridge_password = secrets.token_urlsafe(32)
        write_private(bridge_file, bridge_password + "\n")
    entries, missing = merge_credentials(
        existing, sorted(records), tokens, bridge_user, bridge_password
    )
    write_private(passwd, render_password_file(entries))
    (out_dir / "acl").write_text(render_acl(bridge_user))
    options = BrokerOptions(
        port=port, bind=bind, config_dir=config_dir or str(out_dir.resolve()), data_dir=data_dir
    )
    (out_dir / "mosquitto.conf").write_text(render_conf(options))
    click.echo(
        f"wrote {out_dir}/passwd ({len(entries) - (bridge_user in entries)} devices and "
        f"{bridge_user}), acl, mosquitto.conf"
    )
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        click.echo(
            f"{len(missing)} registered devices have no MQTT credential (token not given, or "
            f"an id with ':'): {shown}",
            err=True,
        )
