"""``harstream operators``: the people (and scripts) allowed to use the alert API.

Operators live in the alert store, found with the same settings as ``harstream alerting``
(HARSTREAM_ALERTING_STORE_URL / _STORE_SCHEMA, or --store-url / --store-schema), SQLite or
PostgreSQL. Changes take effect on the next request: the service looks operators up on every
request and caches nothing.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import click
from pydantic import SecretStr

from services.alerting.auth import create_operator, rotate_key, set_password
from services.alerting.settings import AlertingSettings
from services.alerting.store import AlertStore, StoreError, open_store
from services.common.operators import OperatorError, OperatorRecord, Role, parse_role

T = TypeVar("T")


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _with_store(ctx: click.Context, work: Callable[[AlertStore], T]) -> T:
    """Open the store (only now: ``--help`` needs none), run ``work``, close it; operator
    and store errors become one-line CLI errors."""
    url, schema = ctx.obj["store_url"], ctx.obj["store_schema"]
    try:
        store = open_store(url, schema)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        return work(store)
    except (OperatorError, StoreError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()


def _read_password(from_stdin: bool, prompt: bool) -> str | None:
    if from_stdin:
        # One line, as `echo "$PW" | ...` and secret files give it; the newline is not part.
        return sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if prompt:
        return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    return None


def _show_key(record: OperatorRecord, key: SecretStr, as_json: bool, verb: str) -> None:
    if as_json:
        click.echo(json.dumps({**record.public(), "api_key": key.get_secret_value()}))
        return
    click.echo(f"operator {record.name} ({record.role.value}) {verb}")
    click.echo(f"API key: {key.get_secret_value()}")
    if sys.stdout.isatty():
        click.echo("Store the key now: it is not shown again (only its hash is kept).", err=True)


_password_options = [
    click.option(
        "--password-stdin",
        is_flag=True,
        help="Read a password (≥ 12 characters) from the first line of stdin.",
    ),
    click.option("--password-prompt", is_flag=True, help="Ask for a password on the terminal."),
]


def _password_flags(f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_password_options):
        f = option(f)
    return f


@click.group()
@click.option(
    "--store-url",
    default=None,
    metavar="URL",
    help=(
        "Alert store: sqlite:////ABS/PATH/alerts.db or postgresql://USER@HOST/DB [env "
        "HARSTREAM_ALERTING_STORE_URL, default sqlite:///$XDG_DATA_HOME/harstream/alerts.db]."
    ),
)
@click.option(
    "--store-schema",
    default=None,
    help="PostgreSQL schema [env HARSTREAM_ALERTING_STORE_SCHEMA, harstream_alerting].",
)
@click.pass_context
def operators(ctx: click.Context, store_url: str | None, store_schema: str | None) -> None:
    """Add, list and revoke operators of the alert API, and rotate their API keys.

    Roles: viewer (read alerts and devices), carer (viewer + acknowledge and resolve alerts),
    admin (everything). API keys are shown once and stored only as hashes; passwords are
    optional (HTTP Basic, and the web console's login) and stored as scrypt hashes.
    """
    settings = AlertingSettings()
    ctx.obj = {
        "store_url": store_url or settings.store_url,
        "store_schema": store_schema or settings.store_schema,
    }


@operators.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    required=True,
    help="viewer, carer or admin.",
)
@_password_flags
@click.option("--json", "as_json", is_flag=True, help="Print the operator and key as JSON.")
@click.pass_context
def add(
    ctx: click.Context,
    name: str,
    role: str,
    password_stdin: bool,
    password_prompt: bool,
    as_json: bool,
) -> None:
    """Add operator NAME and print its API key (the only time it is shown)."""
    password = _read_password(password_stdin, password_prompt)
    record, key = _with_store(
        ctx, lambda store: create_operator(store, name, parse_role(role), password)
    )
    _show_key(record, key, as_json, "added" + (" with a password" if password else ""))


@operators.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def list_operators(ctx: click.Context, as_json: bool) -> None:
    """List operators (never their keys or passwords)."""
    records = _with_store(ctx, lambda store: store.operators())
    if as_json:
        click.echo(json.dumps([r.public() for r in records]))
        return
    click.echo(f"{'NAME':<24} {'ROLE':<7} {'STATE':<34} {'KEY ID':<13} {'PASSWORD':<9} CREATED")
    for r in records:
        state = f"revoked {_when(r.revoked_at)}" if r.revoked else "active"
        click.echo(
            f"{r.name:<24} {r.role.value:<7} {state:<34} {r.key_id or '-':<13} "
            f"{'yes' if r.password_hash else 'no':<9} {_when(r.created_at)}"
        )


@operators.command("revoke")
@click.argument("name")
@click.pass_context
def revoke(ctx: click.Context, name: str) -> None:
    """Revoke NAME: its API key and password are refused from the next request on. Final:
    the name stays taken, so the alert history keeps naming one person."""
    record = _with_store(ctx, lambda store: store.revoke_operator(name, time.time()))
    click.echo(f"operator {record.name} revoked at {_when(record.revoked_at)}")


@operators.command("rotate")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the operator and key as JSON.")
@click.pass_context
def rotate(ctx: click.Context, name: str, as_json: bool) -> None:
    """Give NAME a new API key; the old one is refused from the next request on."""
    record, key = _with_store(ctx, lambda store: rotate_key(store, name))
    _show_key(record, key, as_json, "has a new API key (the old one no longer works)")


@operators.command("password")
@click.argument("name")
@_password_flags
@click.option("--remove", is_flag=True, help="Remove the password (API key only).")
@click.pass_context
def password(
    ctx: click.Context, name: str, password_stdin: bool, password_prompt: bool, remove: bool
) -> None:
    """Set or remove NAME's password."""
    new = None if remove else _read_password(password_stdin, password_prompt or not password_stdin)
    record = _with_store(ctx, lambda store: set_password(store, name, new))
    click.echo(f"operator {record.name}: password {'removed' if new is None else 'set'}")
