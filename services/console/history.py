"""The device page's history: a thin client of the activity-history service
(``GET /v1/devices/{id}/activity?from=&to=`` and ``/summary?date=``), called with the
console's own operator API key. Every failure becomes an "unavailable" answer with its
reason: the device page shows what it has and says what it has not."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from services.console.settings import ConsoleSettings

logger = logging.getLogger(__name__)

#: Days of summaries on the device page.
SUMMARY_DAYS = 7


class HistoryUnavailableError(Exception):
    """The history service is not configured or did not answer usably."""


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def day_bounds(now: float, utc_offset_s: float) -> tuple[dt.datetime, dt.datetime, dt.date]:
    """Midnight to midnight of the viewer's day containing ``now`` (UTC datetimes), and
    that day's date; ``utc_offset_s`` is the browser's offset (east positive)."""
    tz = dt.timezone(dt.timedelta(seconds=utc_offset_s))
    local = dt.datetime.fromtimestamp(now, tz)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + dt.timedelta(days=1), start.date()


class HistoryClient:
    def __init__(self, settings: ConsoleSettings) -> None:
        self._base = settings.history_url.rstrip("/")
        self._key = settings.history_api_key.get_secret_value()
        self._timeout = aiohttp.ClientTimeout(total=settings.history_timeout_s)

    @property
    def configured(self) -> bool:
        return bool(self._base)

    async def _get(self, session: aiohttp.ClientSession, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        try:
            async with session.get(f"{self._base}{path}", headers=headers) as response:
                if response.status == 404:
                    return None
                if response.status != 200:
                    endpoint = path.split("?", maxsplit=1)[0]
                    raise HistoryUnavailableError(
                        f"the history service answered {response.status} to {endpoint}"
                    )
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise HistoryUnavailableError(f"the history service cannot be reached: {exc}") from exc

    async def device_history(
        self, device_id: str, now: float, utc_offset_s: float
    ) -> dict[str, Any]:
        """Today's activity segments and the last 7 daily summaries of ``device_id``."""
        if not self.configured:
            raise HistoryUnavailableError("no history service is configured (console.history_url)")
        start, end, today = day_bounds(now, utc_offset_s)
        device = quote(device_id, safe="")
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            days = [today - dt.timedelta(days=n) for n in range(SUMMARY_DAYS)]
            activity, *summaries = await asyncio.gather(
                self._get(
                    session, f"/v1/devices/{device}/activity?from={_iso(start)}&to={_iso(end)}"
                ),
                *(self._get(session, f"/v1/devices/{device}/summary?date={d}") for d in days),
            )
        return {
            "day_start": start.timestamp(),
            "day_end": end.timestamp(),
            "activity": activity,
            "summaries": [
                {"date": d.isoformat(), "summary": s}
                for d, s in zip(reversed(days), reversed(summaries), strict=True)
            ],
        }
