"""Console settings: nested in the alerting service's settings
(``HARSTREAM_ALERTING_CONSOLE__<FIELD>``), since the alerting process serves the console."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class ConsoleSettings(BaseModel):
    """Sessions, the history service and the pipeline page's metrics URLs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="Serve the web console under /console/.")
    session_idle_s: float = Field(
        1800.0,
        gt=0,
        description="A console session unused this long ends (seconds); log in again then.",
    )
    session_max_s: float = Field(
        43_200.0,
        gt=0,
        description="A console session ends this long after login whatever its use (seconds).",
    )
    max_sessions: int = Field(
        10_000,
        ge=1,
        description=(
            "Console sessions held at once (in this process's memory); a new login past it "
            "ends the least recently used one."
        ),
    )
    cookie_secure: Literal["auto", "always", "never"] = Field(
        "auto",
        description=(
            "The session cookie's Secure flag: 'auto' sets it when the request came over TLS; "
            "'always' behind a proxy that terminates TLS (the service itself speaks HTTP)."
        ),
    )
    history_url: str = Field(
        "",
        description=(
            "Base URL of the activity-history service (e.g. http://history:8084) for the "
            "device page's timeline and daily summaries; empty: shown as unavailable."
        ),
    )
    history_api_key: SecretStr = Field(
        SecretStr(""),
        description="Operator API key (a viewer's) the console calls the history service with.",
    )
    history_timeout_s: float = Field(
        5.0, gt=0, description="Timeout of one call to the history service (seconds)."
    )
    metrics_urls: str = Field(
        "",
        description=(
            "The pipeline page's sources: comma-separated name=URL of each service's "
            "Prometheus /metrics, e.g. 'ingest=http://ingest:9100/metrics,inference=...'. "
            "The alerting service's own metrics are always included."
        ),
    )
    metrics_timeout_s: float = Field(
        3.0, gt=0, description="Timeout of one /metrics scrape for the pipeline page (seconds)."
    )
    update_interval_s: float = Field(
        1.0,
        gt=0,
        description=(
            "How often live updates are pushed to open consoles (seconds): device changes "
            "are gathered and sent once per period, however many predictions came in."
        ),
    )
    lag_groups: str = Field(
        "preprocess=harstream-preprocess:raw,inference=harstream-inference:windows,"
        "alerting=harstream-alerting:predictions",
        description=(
            "The pipeline page's consumer lag: comma-separated service=group:topic (topic "
            "by its logical name: raw, windows, predictions) whose committed offsets are "
            "compared with the topic's end."
        ),
    )
    raw_window_s: float = Field(
        40.0,
        gt=0,
        le=300,
        description=(
            "Seconds of raw signal before an alert shown on the device page (read back from "
            "the raw topic)."
        ),
    )

    @field_validator("metrics_urls")
    @classmethod
    def _pairs(cls, value: str) -> str:
        parse_metrics_urls(value)
        return value

    @field_validator("lag_groups")
    @classmethod
    def _groups(cls, value: str) -> str:
        parse_lag_groups(value)
        return value

    @property
    def metrics_url_map(self) -> dict[str, str]:
        return parse_metrics_urls(self.metrics_urls)

    @property
    def lag_group_map(self) -> dict[str, tuple[str, str]]:
        return parse_lag_groups(self.lag_groups)


def parse_metrics_urls(text: str) -> dict[str, str]:
    """``name=url,name=url`` → {name: url}; ValueError on a malformed entry."""
    out: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, eq, url = item.partition("=")
        name, url = name.strip(), url.strip()
        if not eq or not name or not url.startswith(("http://", "https://")):
            raise ValueError(f"metrics_urls entry {item!r} is not name=http(s)://...")
        out[name] = url
    return out


def parse_lag_groups(text: str) -> dict[str, tuple[str, str]]:
    """``service=group:topic,...`` → {service: (group, topic)}; ValueError if malformed."""
    out: dict[str, tuple[str, str]] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        service, eq, rest = item.partition("=")
        group, colon, topic = rest.partition(":")
        if not (eq and colon and service.strip() and group.strip() and topic.strip()):
            raise ValueError(f"lag_groups entry {item!r} is not service=group:topic")
        out[service.strip()] = (group.strip(), topic.strip())
    return out
