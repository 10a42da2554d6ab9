"""Gateway credentials bound to sets of devices: the registry (SQLite and the local
PostgreSQL), ``harstream gateways``, and ``POST /v1/packets:batch`` authenticated by a
gateway's token in-process against the real broker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from services.cli import cli
from services.ingest.app import SERVICE_KEY
from services.ingest.errors import (
    DeviceExistsError,
    GatewayExistsError,
    InvalidDeviceError,
    RegistryUnavailableError,
    UnknownDeviceError,
    UnknownGatewayError,
)
from services.ingest.registry import (
    DeviceRegistry,
    NewDevice,
    PostgresRegistry,
    SqliteRegistry,
)
from services.ingest.settings import IngestSettings
from shared.messages.raw import RawPacket
from tests.integration.ingest_helpers import auth, metric, packet, read_raw, run, serve

pytestmark = pytest.mark.integration

BATCH = "/v1/packets:batch"
JSON = {"Content-Type": "application/json"}
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeviceRegistry]:
    if request.param == "sqlite":
        sqlite = SqliteRegistry(tmp_path / "devices.db")
        yield sqlite
        sqlite.close()
        return
    postgres = PostgresRegistry(POSTGRES_URL, table=f"test_devices_{uuid.uuid4().hex[:10]}")
    try:
        yield postgres
    finally:
        postgres.drop()
        postgres.close()


def test_gateways_are_registered_bound_looked_up_and_revoked(
    any_registry: DeviceRegistry,
) -> None:
    registry = any_registry
    for device_id in ("w1", "w2", "w3"):
        registry.add(device_id)
    record, token = registry.add_gateway("hub-1", ["w1", "w2"], label="ward 3")
    assert record.device_ids == {"w1", "w2"} and not record.revoked
    assert registry.get_gateway("hub-1") == record
    assert registry.find_gateway_by_token(token) == record
    assert registry.find_gateway_by_token("x" * 43) is None
    # A device's token is not a gateway's, whichever way round.
    assert registry.find_by_token(token) is None

    assert registry.bind_gateway("hub-1", remove=["w1"]).device_ids == {"w2"}
    rebound = registry.bind_gateway("hub-1", add=["w1", "w3"], remove=["w1"])
    assert rebound.device_ids == {"w2", "w3"}
    assert registry.find_gateway_by_token(token) == rebound

    with pytest.raises(UnknownDeviceError, match="'ghost'"):
        registry.bind_gateway("hub-1", add=["ghost"])
    assert registry.get_gateway("hub-1") == rebound  # nothing half-applied
    with pytest.raises(UnknownDeviceError, match="'ghost'"):
        registry.add_gateway("hub-2", ["w1", "ghost"])
    assert registry.get_gateway("hub-2") is None
    with pytest.raises(GatewayExistsError, match="'hub-1'"):
        registry.add_gateway("hub-1", ["w1"])
    with pytest.raises(GatewayExistsError, match="token"):
        registry.add_gateway("hub-2", ["w1"], token=token)
    device_token = registry.add("w4")[1]
    with pytest.raises(GatewayExistsError, match="token"):
        registry.add_gateway("hub-2", ["w1"], token=device_token)
    # ...and the other way round: one secret never authenticates both.
    with pytest.raises(DeviceExistsError, match="gateway"):
        registry.add("w5", token=token)
    with pytest.raises(DeviceExistsError, match="gateway"):
        registry.add_many([NewDevice("w6"), NewDevice("w7", token=token)])
    assert registry.get("w5") is None and registry.get("w6") is None
    with pytest.raises(InvalidDeviceError):
        registry.add_gateway("hub 2", ["w1"])
    with pytest.raises(UnknownGatewayError):
        registry.bind_gateway("nope", add=["w1"])

    revoked = registry.revoke_gateway("hub-1")
    assert revoked.revoked and revoked.device_ids == {"w2", "w3"}
    assert registry.revoke_gateway("hub-1").revoked_at == revoked.revoked_at
    found = registry.find_gateway_by_token(token)
    assert found is not None and found.revoked
    with pytest.raises(UnknownGatewayError):
        registry.revoke_gateway("nope")
    assert [g.gateway_id for g in registry.list_gateways()] == ["hub-1"]


def test_the_gateways_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'devices.db'}"
    runner = CliRunner()

    def harstream(*args: str) -> Any:
        return runner.invoke(cli, [*args[:1], "--registry", url, *args[1:]])

    for device_id in ("w1", "w2", "w3"):
        assert harstream("devices", "add", device_id).exit_code == 0
    added = harstream("gateways", "add", "hub-1", "w1,w2", "--label", "ward 3", "--json")
    assert added.exit_code == 0, added.output
    created = json.loads(added.output)
    assert created["device_ids"] == ["w1", "w2"] and len(created["token"]) >= 43
    assert "token_hash" not in created

    assert harstream("gateways", "bind", "hub-1", "w3").exit_code == 0
    unbound = harstream("gateways", "unbind", "hub-1", "w1")
    assert unbound.exit_code == 0 and "2 device(s)" in unbound.output
    listed = json.loads(harstream("gateways", "list", "--json").output)
    assert listed == [
        {
            "gateway_id": "hub-1",
            "label": "ward 3",
            "created_at": created["created_at"],
            "revoked_at": None,
            "device_ids": ["w2", "w3"],
        }
    ]
    table = harstream("gateways", "list").output
    assert "hub-1" in table and "active" in table and created["token"] not in table

    unknown = harstream("gateways", "bind", "hub-1", "ghost")
    assert unknown.exit_code != 0 and "'ghost'" in unknown.output
    assert harstream("gateways", "revoke", "hub-1").exit_code == 0
    assert "revoked" in harstream("gateways", "list").output
    assert harstream("gateways", "revoke", "nope").exit_code != 0


def test_a_gateway_token_authenticates_exactly_its_bound_devices(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    # No token cache: revocations and bindings are honoured at the next request.
    settings = make_settings(token_cache_ttl_s=0.0)
    for device_id in ("w1", "w2", "w3", "other"):
        registry.add(device_id)
    _, token = registry.add_gateway("hub-1", ["w1", "w2", "w3"])
    registry.revoke("w3")
    sent: list[Any] = [
        packet("w1", seq=0, seed=1),  # 0 accepted
        packet("w2", seq=0, seed=2),  # 1 accepted
        packet("w1", seq=1, seed=3),  # 2 accepted
        packet("w3", seq=0),  # 3 revoked device
        packet("other", seq=0),  # 4 registered, not bound to hub-1
        packet("ghost", seq=0),  # 5 not registered at all: not bound either
    ]

    async def scenario() -> list[dict[str, Any]]:
        async with serve(settings, registry) as client:
            response = await client.post(
                BATCH, data=json.dumps({"packets": sent}), headers={**JSON, **auth(token)}
            )
            assert response.status == 207, await response.text()
            answer: dict[str, Any] = await response.json()
            assert (answer["accepted"], answer["refused"]) == (3, 3)
            assert metric(client, "harstream_ingest_rejections_total", reason="forbidden") == 3

            # Whole-request refusals: an unknown gateway token, tokens beside a gateway's,
            # a malformed header.
            unknown = await client.post(
                BATCH, data=json.dumps({"packets": sent[:1]}), headers={**JSON, **auth("y" * 43)}
            )
            assert unknown.status == 401 and "gateway" in (await unknown.json())["detail"]
            both = await client.post(
                BATCH,
                data=json.dumps({"tokens": {}, "packets": sent[:1]}),
                headers={**JSON, **auth(token)},
            )
            assert both.status == 400
            assert (await both.json())["errors"][0]["field"] == "tokens"
            malformed = await client.post(
                BATCH,
                data=json.dumps({"packets": sent[:1]}),
                headers={**JSON, "Authorization": "Basic x"},
            )
            assert malformed.status == 401

            # Unbinding and revoking take effect at the next batch.
            registry.bind_gateway("hub-1", remove=["w2"])
            again = await client.post(
                BATCH,
                data=json.dumps({"packets": [packet("w2", seq=1, seed=4)]}),
                headers={**JSON, **auth(token)},
            )
            assert again.status == 207
            assert (await again.json())["results"][0]["status"] == 403
            registry.revoke_gateway("hub-1")
            revoked = await client.post(
                BATCH,
                data=json.dumps({"packets": [packet("w1", seq=2, seed=5)]}),
                headers={**JSON, **auth(token)},
            )
            assert revoked.status == 403 and "revoked" in (await revoked.json())["detail"]
            assert metric(client, "harstream_ingest_packets_total") == 3
            results: list[dict[str, Any]] = answer["results"]
            return results

    results = run(scenario())
    assert [r["status"] for r in results] == [202, 202, 202, 403, 403, 403]
    assert "revoked" in results[3]["detail"]
    assert "not bound to gateway 'hub-1'" in results[4]["detail"]
    assert results[5]["device_id"] == "ghost" and "not bound" in results[5]["detail"]

    written = read_raw(settings, expected=3)
    decoded = {(p.device_id, p.seq) for p in (RawPacket.from_bytes(r.value) for r in written)}
    assert decoded == {("w1", 0), ("w2", 0), ("w1", 1)}  # nothing refused was written


def test_device_and_gateway_tokens_do_not_stand_in_for_each_other(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings(token_cache_ttl_s=60.0)
    device_token = registry.add("w1")[1]
    _, gateway_token = registry.add_gateway("hub-1", ["w1"])

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            # A gateway's token is no device's: refused as an unknown device token.
            single = await client.post(
                "/v1/packets",
                data=json.dumps(packet("w1")),
                headers={**JSON, **auth(gateway_token)},
            )
            assert single.status == 401
            # A device's token is no gateway's, with a hint at the other way to post.
            batch = await client.post(
                BATCH,
                data=json.dumps({"packets": [packet("w1")]}),
                headers={**JSON, **auth(device_token)},
            )
            assert batch.status == 401 and "tokens" in (await batch.json())["detail"]
            accepted = await client.post(
                BATCH,
                data=json.dumps({"packets": [packet("w1", seq=1)]}),
                headers={**JSON, **auth(gateway_token)},
            )
            assert accepted.status == 202, await accepted.text()
            # Cached for token_cache_ttl_s: a revocation in the registry is not seen yet,
            # and the cache is what keeps a busy hub from costing a lookup per batch.
            registry.revoke_gateway("hub-1")
            cached = await client.post(
                BATCH,
                data=json.dumps({"packets": [packet("w1", seq=2)]}),
                headers={**JSON, **auth(gateway_token)},
            )
            assert cached.status == 202
            assert metric(client, "harstream_ingest_packets_total") == 2

    run(scenario())


def test_a_gateways_cached_devices_are_reread_so_a_revoked_device_is_refused(
    make_settings: Callable[..., IngestSettings], registry: SqliteRegistry
) -> None:
    settings = make_settings(token_cache_ttl_s=600.0)
    registry.add("w1")
    registry.add("w2")
    _, token = registry.add_gateway("hub-1", ["w1", "w2"])

    async def scenario() -> None:
        async with serve(settings, registry) as client:
            service = client.server.app[SERVICE_KEY]  # type: ignore[union-attr]

            async def post(seq: int) -> dict[str, Any]:
                body = {"packets": [packet("w1", seq=seq), packet("w2", seq=seq)]}
                response = await client.post(
                    BATCH, data=json.dumps(body), headers={**JSON, **auth(token)}
                )
                assert response.status in (202, 207), await response.text()
                answer: dict[str, Any] = await response.json()
                return answer

            assert (await post(0))["accepted"] == 2
            registry.revoke("w2")
            assert (await post(1))["accepted"] == 2  # cached: not seen yet
            assert await service.refresh_cached_lookups() == 2
            answer = await post(2)
            assert (answer["accepted"], answer["refused"]) == (1, 1), answer

    run(scenario())


class GatewayLookupDown(SqliteRegistry):
    """A registry whose gateway lookups fail (the store locked or gone)."""

    def find_gateway_by_token(self, token: str) -> Any:
        raise RegistryUnavailableError("database is locked")


class DeviceLookupDown(SqliteRegistry):
    """A registry that finds gateways but not their devices."""

    def get(self, device_id: str) -> Any:
        raise RegistryUnavailableError("database is locked")


def test_a_registry_outage_is_a_503_to_retry_never_a_refusal_or_a_500(
    make_settings: Callable[..., IngestSettings], tmp_path: Path
) -> None:
    settings = make_settings(token_cache_ttl_s=0.0)
    sent = json.dumps({"packets": [packet("w1")]})

    async def post(registry: SqliteRegistry, token: str) -> tuple[int, str, dict[str, Any]]:
        async with serve(settings, registry) as client:
            response = await client.post(BATCH, data=sent, headers={**JSON, **auth(token)})
            return response.status, response.headers.get("Retry-After", ""), await response.json()

    gateway_down = GatewayLookupDown(tmp_path / "a.db")
    gateway_down.add("w1")
    _, token = gateway_down.add_gateway("hub-1", ["w1"])
    status, retry_after, body = run(post(gateway_down, token))
    assert (status, body["reason"]) == (503, "registry_unavailable") and retry_after

    device_down = DeviceLookupDown(tmp_path / "b.db")
    device_down.add("w1")
    _, token = device_down.add_gateway("hub-1", ["w1"])
    status, retry_after, body = run(post(device_down, token))
    assert status == 207 and retry_after
    (result,) = body["results"]
    assert (result["status"], result["reason"]) == (503, "registry_unavailable")
    assert result["retry_after_s"] > 0
