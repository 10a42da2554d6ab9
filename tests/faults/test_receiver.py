"""The suite's webhook receiver records every notification and can really go down: while
it is down a POST fails to connect (what alerting's retries must survive), and it comes
back on the same port."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest

from services.faults.receiver import WebhookReceiver

pytestmark = pytest.mark.integration

BODY = {
    "event": "opened",
    "alert": {
        "alert_id": "a1",
        "device_id": "d",
        "type": "FALL_SUSPECTED",
        "state": "open",
        "opened_at": 1.0,
    },
}


async def _post(session: aiohttp.ClientSession, url: str, key: str, body: object) -> int:
    async with session.post(url, data=json.dumps(body), headers={"Idempotency-Key": key}) as r:
        return r.status


def test_records_goes_down_and_comes_back_on_the_same_port() -> None:
    async def scenario() -> None:
        async with WebhookReceiver() as receiver, aiohttp.ClientSession() as session:
            assert await _post(session, receiver.url, "a1:opened", BODY) == 204
            assert await _post(session, receiver.url, "a1:opened", BODY) == 204  # a retry
            assert await _post(session, receiver.url, "x", {"nope": 1}) == 204
            await receiver.down()
            assert not receiver.listening
            # The keep-alive connection of the POSTs above is gone too.
            with pytest.raises(aiohttp.ClientConnectionError):
                await _post(session, receiver.url, "a1:opened", BODY)
            await receiver.up()
            assert await _post(session, receiver.url, "a1:resolved", BODY) == 204
            keys = [d.idempotency_key for d in receiver.deliveries]
            assert keys == ["a1:opened", "a1:opened", "a1:resolved"]
            assert receiver.deliveries[0].alert_id == "a1"
            assert receiver.deliveries[0].type == "FALL_SUSPECTED"
            assert len(receiver.malformed) == 1 and receiver.malformed[0].startswith("x:")

    asyncio.run(scenario())


def test_the_port_is_the_receivers_before_it_listens_and_while_it_is_down() -> None:
    """Alerting gets the URL before the pipeline starts; nothing may take the port
    meanwhile (it did: "address already in use" when the receiver came up)."""

    def taken(port: int) -> bool:
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.1", port))
            except OSError:
                return True
            return False

    async def scenario() -> None:
        receiver = WebhookReceiver()
        assert taken(receiver.port) and not receiver.listening
        await receiver.up()
        await receiver.down()
        assert taken(receiver.port)
        receiver.close()
        assert not taken(receiver.port)

    asyncio.run(scenario())
