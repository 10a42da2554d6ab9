"""``harstream gateways``: gateway credentials bound to sets of registered devices.

A gateway (a care-home hub, a phone paired with several wearables) posts
``POST /v1/packets:batch`` with its own token in ``Authorization: Bearer`` and no device
tokens; the packets of the devices bound to it are accepted, any other device's are refused
(403). See :mod:`services.ingest.registry`.
"""

from __future__ import annotations

import json
import sys

import click

from services.ingest.cli import open_for_commands, registry_of, registry_option, when
from services.ingest.errors import RegistryError
from services.ingest.registry import GatewayRecord


def _device_ids(values: tuple[str, ...]) -> list[str]:
    """Device ids given as arguments and/or comma-separated lists (``a,b c``)."""
    return [part for value in values for part in value.split(",") if part]


@click.group()
@registry_option
@click.pass_context
def gateways(ctx: click.Context, registry_url: str | None) -> None:
    """Register gateways, bind devices to them, list and revoke them (tokens are shown once,
    stored only as hashes)."""
    open_for_commands(ctx, registry_url)


@gateways.command("add")
@click.argument("gateway_id")
@click.argument("device_ids", nargs=-1)
@click.option("--label", default="", help="Free text, e.g. the ward or the care home.")
@click.option(
    "--token",
    default=None,
    help="Use this token (≥ 32 characters) instead of a generated one, for scripted setups.",
)
@click.option("--json", "as_json", is_flag=True, help="Print {gateway_id, token, ...} as JSON.")
@click.pass_context
def add(
    ctx: click.Context,
    gateway_id: str,
    device_ids: tuple[str, ...],
    label: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Register GATEWAY_ID bound to DEVICE_IDS (registered devices, separated by spaces or
    commas; none: bind them later with `gateways bind`) and print its token (the only time
    it is shown)."""
    try:
        record, token = registry_of(ctx).add_gateway(
            gateway_id, _device_ids(device_ids), label, token
        )
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({**record.public(), "token": token}))
        return
    click.echo(f"gateway {record.gateway_id} registered for {len(record.device_ids)} device(s)")
    click.echo(f"token: {token}")
    if sys.stdout.isatty():
        click.echo("Store the token now: it is not shown again (only its hash is kept).", err=True)


@gateways.command("bind")
@click.argument("gateway_id")
@click.argument("device_ids", nargs=-1, required=True)
@click.pass_context
def bind(ctx: click.Context, gateway_id: str, device_ids: tuple[str, ...]) -> None:
    """Let GATEWAY_ID forward the packets of DEVICE_IDS too (within token_cache_ttl_s)."""
    try:
        record = registry_of(ctx).bind_gateway(gateway_id, add=_device_ids(device_ids))
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"gateway {record.gateway_id} bound to {len(record.device_ids)} device(s)")


@gateways.command("unbind")
@click.argument("gateway_id")
@click.argument("device_ids", nargs=-1, required=True)
@click.pass_context
def unbind(ctx: click.Context, gateway_id: str, device_ids: tuple[str, ...]) -> None:
    """Stop GATEWAY_ID forwarding DEVICE_IDS: their packets through it are refused (403)
    within token_cache_ttl_s."""
    try:
        record = registry_of(ctx).bind_gateway(gateway_id, remove=_device_ids(device_ids))
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"gateway {record.gateway_id} bound to {len(record.device_ids)} device(s)")


def _row(record: GatewayRecord) -> str:
    state = f"revoked {when(record.revoked_at)}" if record.revoked else "active"
    return (
        f"{record.gateway_id:<24} {state:<34} {when(record.created_at):<26} "
        f"{len(record.device_ids):>7} {record.label}"
    )


@gateways.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (with device ids).")
@click.pass_context
def list_gateways(ctx: click.Context, as_json: bool) -> None:
    """List registered gateways and how many devices each forwards (never their tokens)."""
    try:
        records = registry_of(ctx).list_gateways()
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps([r.public() for r in records]))
        return
    click.echo(f"{'GATEWAY':<24} {'STATE':<34} {'CREATED (UTC)':<26} {'DEVICES':>7} LABEL")
    for record in records:
        click.echo(_row(record))


@gateways.command("revoke")
@click.argument("gateway_id")
@click.pass_context
def revoke(ctx: click.Context, gateway_id: str) -> None:
    """Revoke GATEWAY_ID: the service refuses its batches (403) within token_cache_ttl_s.
    Its devices keep their own tokens."""
    try:
        record = registry_of(ctx).revoke_gateway(gateway_id)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"gateway {record.gateway_id} revoked at {when(record.revoked_at)}")
