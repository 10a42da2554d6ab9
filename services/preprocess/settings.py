"""Configuration of the preprocess worker (env prefix ``HARSTREAM_PREPROCESS_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import StreamSettings
from shared.xdg import harstream_dir


def _default_data_dir() -> Path:
    # Per-machine state that survives restarts but is not config: XDG's state directory.
    return harstream_dir("state") / "preprocess"


class PreprocessSettings(StreamSettings):
    """Raw topic → per-device filters and windows (faust, RocksDB table) → windows topic."""

    model_config = SettingsConfigDict(
        env_prefix="HARSTREAM_PREPROCESS_", frozen=True, extra="ignore"
    )

    app_id: str = Field(
        "harstream-preprocess",
        description=(
            "Faust app id: the consumer group, the state table's changelog topic "
            "('<app_id>-device-streams-changelog') and the state directory name. Replicas "
            "share it; a new id starts every device from scratch."
        ),
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description=(
            "Directory of the local RocksDB copy of the device-state table, in a "
            "subdirectory per app_id (default $XDG_STATE_HOME/harstream/preprocess, i.e. "
            "~/.local/state/...). Two workers on one machine need two directories. Losing it "
            "only costs a replay of the changelog topic at start-up."
        ),
    )
    store: Literal["rocksdb://", "memory://"] = Field(
        "rocksdb://",
        description=(
            "Table store: 'rocksdb://' (on disk, fast restarts) or 'memory://' (rebuilt "
            "from the changelog topic at every start)."
        ),
    )
    batch_max_size: int = Field(
        500,
        ge=1,
        le=100_000,
        description=(
            "Most raw packets processed together (across devices, one vectorised filter "
            "call per batch)."
        ),
    )
    batch_max_wait_s: float = Field(
        0.05,
        gt=0,
        le=10,
        description=(
            "Longest a packet waits for its batch to fill before the batch is processed "
            "anyway (seconds); bounds the latency batching adds."
        ),
    )
    checkpoint_interval_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description=(
            "How often the changed device states, and the raw offsets they cover, are "
            "written to the state table and its changelog (seconds; 0: after every batch). "
            "A live device's state is ~4.7 KB: written once per interval instead of once "
            "per packet. After a crash the worker reads again from the last checkpoint, so "
            "up to this long of packets give their windows a second time (same ids); a "
            "clean stop or a rebalance writes a checkpoint first."
        ),
    )
    gap_threshold_s: float = Field(
        1.0,
        gt=0,
        description=(
            "Device-time jump between consecutive packets beyond which the device's filters "
            "are reset (seconds); smaller jitter is ignored."
        ),
    )
    reorder_max_packets: int = Field(
        4,
        ge=0,
        le=1000,
        description=(
            "Out-of-order packets held per device while waiting for a missing one; when "
            "more arrive, the missing packet is given up on (a gap)."
        ),
    )
    shutdown_timeout_s: float = Field(
        15.0,
        gt=0,
        description=(
            "Longest a stop (SIGTERM/SIGINT) may take before the worker exits with status 1 "
            "anyway (seconds); a stop can hang on a broker that is gone. A forced exit is "
            "a crash: the state is in RocksDB and the changelog, uncommitted packets are read "
            "again (at-least-once)."
        ),
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description=(
            "Bind address of the /metrics endpoint: loopback unless configured (it asks for no "
            "credential); 0.0.0.0 where Prometheus scrapes from another host or pod."
        ),
    )
    metrics_port: int = Field(
        9102, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0: off)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the worker (faust's own logs included)."
    )
