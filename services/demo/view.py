"""The demo's terminal view (rich): devices, current activity, alerts, pipeline figures."""

from __future__ import annotations

import time

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from services.demo.loadgen import LoadStats
from services.demo.tally import DemoTally

ALERT_STYLE = {"open": "bold red", "acknowledged": "yellow", "resolved": "green"}


def live_view(tally: DemoTally, load: LoadStats, max_rows: int = 24) -> Group:
    devices = Table(title="Devices", expand=True, title_justify="left")
    for column in ("device", "windows", "activity", "conf.", "truth", "accuracy", "alert"):
        devices.add_column(column, no_wrap=True)
    rows = sorted(tally.devices.values(), key=lambda d: d.device_id)
    for view in rows[:max_rows]:
        match = view.truth in ("-", "(transition)") or view.truth == view.label
        accuracy = f"{view.correct / view.scored:.1%}" if view.scored else "-"
        devices.add_row(
            view.device_id,
            str(view.windows),
            Text(view.label, style="bold" if match else "bold magenta"),
            f"{view.confidence:.2f}",
            view.truth,
            accuracy,
            Text(view.last_alert, style="red" if "open" in view.last_alert else ""),
        )
    if len(rows) > max_rows:
        devices.add_row(f"... {len(rows) - max_rows} more", "", "", "", "", "", "")

    alerts = Table(title="Alerts", expand=True, title_justify="left")
    for column in ("time", "device", "type", "state", "reason"):
        alerts.add_column(column)
    recent = sorted(tally.alerts.values(), key=lambda a: a.updated_at, reverse=True)[:8]
    for alert in recent:
        alerts.add_row(
            time.strftime("%H:%M:%S", time.localtime(alert.updated_at)),
            alert.device_id,
            alert.type.value,
            Text(alert.state.value, style=ALERT_STYLE.get(alert.state.value, "")),
            alert.reason,
        )

    report = tally.report()
    accuracy = f"{report.accuracy:.2%}" if report else "-"
    e2e = tally.latencies.percentiles().get("end_to_end")
    latency = f"p50 {e2e[0] * 1000:.0f} ms / p99 {e2e[1] * 1000:.0f} ms" if e2e else "-"
    stats = Text.assemble(
        ("packets ", "dim"),
        f"{load.packets_accepted:,}",
        ("  samples/s ", "dim"),
        f"{load.samples_accepted / max(load.elapsed_s, 1e-9):,.0f}",
        ("  predictions ", "dim"),
        f"{tally.predictions:,}",
        ("  streaming accuracy ", "dim"),
        accuracy,
        ("  end-to-end ", "dim"),
        latency,
        ("  devices done ", "dim"),
        f"{load.devices_done}/{len(tally.devices)}",
    )
    return Group(Panel(stats, title="harstream demo (Ctrl-C stops)"), devices, alerts)
