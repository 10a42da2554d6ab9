"""``harstream faults``: the fault-injection suite as a command (the full run of issue 8)."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from services.faults.counting import ScenarioResult
from services.faults.report import RunInfo, render
from services.faults.runner import SuiteSettings, run_scenario, stall_rule_available
from services.faults.schedule import ScenarioPlan, full_schedule, select, short_schedule
from shared.data.cache import HaptCache, default_cache_dir
from shared.data.splits import TEST_SUBJECTS

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPORT = REPO_ROOT / "reports" / "reliability.md"


@click.command()
@click.option(
    "--report", is_flag=True, help="Write the Markdown report (see --out) besides printing it."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPORT,
    show_default=True,
    help="Where --report writes.",
)
@click.option("--seed", type=int, default=None, help="Seed of every random moment [default: new].")
@click.option("--short", is_flag=True, help="Only the CI form (one replay, ~3 min).")
@click.option(
    "--scenario",
    "names",
    multiple=True,
    help="Run only this scenario (repeatable), e.g. kill-alerting, pause-broker.",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Logs and state of every scenario [default: a new temp dir].",
)
@click.pass_context
def faults(
    ctx: click.Context,
    report: bool,
    out: Path,
    seed: int | None,
    short: bool,
    names: tuple[str, ...],
    workdir: Path | None,
) -> None:
    """Kill, pause and rebalance the real local pipeline while >= 20 devices stream at real
    time; count packets, windows, alerts and notifications from the topics and a webhook
    receiver; print the table (and write reports/reliability.md with --report). Exits 1 if
    any scenario fails. The full run takes ~40 min on 2 cores."""
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per webhook POST
    seed = random.SystemRandom().randrange(1, 1_000_000) if seed is None else seed
    plans = select(short_schedule(seed) if short else full_schedule(seed), names)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="harstream-faults-"))
    click.echo(f"harstream faults: seed {seed}, {len(plans)} scenarios, work dir {workdir}")
    obj = ctx.find_root().obj or {}
    cache = obj.get("cache") or HaptCache(default_cache_dir())
    cache.ensure()
    recordings = cache.load(subjects=sorted(TEST_SUBJECTS))
    settings = SuiteSettings()
    started = datetime.now(UTC)
    t0 = time.monotonic()
    results: list[ScenarioResult] = []
    for plan in plans:
        result, _ = run_scenario(plan, seed, recordings, workdir / plan.name, settings)
        results.append(result)
        click.echo(
            f"{plan.name}: {'pass' if result.passed else 'FAIL'} ("
            + (", ".join(c.name for c in result.failed) or "all checks")
            + f"; {result.wall_s:.0f} s)"
        )
    command = "harstream faults" + (" --short" if short else "") + f" --seed {seed}"
    command += "".join(f" --scenario {n}" for n in names)
    text = render(
        results,
        plans,
        RunInfo(
            seed=seed,
            command=command + (" --report" if report else ""),
            started=started.strftime("%Y-%m-%d %H:%M UTC"),
            wall_s=time.monotonic() - t0,
            setup=_setup(settings, len(recordings), plans),
        ),
    )
    click.echo(text)
    if report:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"wrote {out}")
    click.echo(f"logs: {workdir}")
    if not all(r.passed for r in results):
        sys.exit(1)


def _setup(settings: SuiteSettings, recordings: int, plans: list[ScenarioPlan]) -> list[str]:
    stall = (
        f"PIPELINE_STALLED after {settings.pipeline_stall_s:g} s"
        if stall_rule_available()
        else "no PIPELINE_STALLED rule in this alerting version"
    )
    return [
        "Pipeline per scenario: embedded Tansu broker, dev model server (TF Serving API), "
        "ingest, preprocess, inference and alerting each in its own process "
        f"(`services/demo/pipeline.py`), {settings.partitions} partitions, tansu client profile.",
        f"Devices: {recordings} HAPT test recordings plus each scenario's fall and silent "
        "devices, replayed at real time (one 50-sample packet per device per second); "
        f"{min(p.scripted_devices for p in plans) + recordings}+ devices per scenario.",
        f"Alerting: DEVICE_OFFLINE after {settings.offline_after_s:g} s (wall clock), fall "
        f"confirmation 30 s (default), {stall}; webhooks to the suite's receiver with the "
        "default retry policy.",
        f"Code: {_revision()}; machine: {os.cpu_count()} cores, shared.",
    ]


def _revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"commit {head}" + (
        " with uncommitted changes (other engineers' work in progress)" if dirty else ""
    )
