"""The ``harstream`` command line."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import click

from shared.data.cache import HaptCache, default_cache_dir
from shared.errors import HarstreamError

logger = logging.getLogger("harstream")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_BASE = REPO_ROOT / "models" / "har"
DEFAULT_REPORTS = REPO_ROOT / "reports"
DEFAULT_RUNS = REPO_ROOT / "runs"


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# Service commands live beside their services and are imported only when invoked, so
# `harstream devices list` does not pay for TensorFlow or faust imports.
_SERVICE_COMMANDS = {
    "demo": "services.demo.cli:demo",
    "simulate": "services.demo.cli:simulate",
    "faults": "services.faults.cli:faults",
    "fuzz": "services.fuzz.cli:fuzz",
    "ingest": "services.ingest.cli:ingest",
    "devices": "services.ingest.cli:devices",
    "gateways": "services.ingest.gateways_cli:gateways",
    "preprocess": "services.preprocess.cli:preprocess",
    "inference": "services.inference.cli:inference",
    "modelserver": "services.modelserver.cli:modelserver",
    "models": "services.models.cli:models",
    "alerting": "services.alerting.cli:alerting",
    "operators": "services.alerting.operators_cli:operators",
    "history": "services.history.cli:history",
    "mqtt-bridge": "services.mqtt_bridge.cli:mqtt_bridge",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_SERVICE_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _SERVICE_COMMANDS:
            import importlib

            module_name, attr = _SERVICE_COMMANDS[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module_name), attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="HAPT cache directory [env HARSTREAM_DATA_DIR, default ~/.cache/harstream/hapt].",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool, data_dir: Path | None) -> None:
    """harstream: real-time human activity recognition for fleets of wearables."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # Kafka clients log every connection at INFO; services' own logs stay at INFO.
        for noisy in ("kafka", "aiokafka"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = {"cache": HaptCache(data_dir or default_cache_dir())}


@cli.command()
@click.option("--rebuild", is_flag=True, help="Rewrite the cache even if it exists.")
@click.pass_obj
def data(obj: dict[str, HaptCache], rebuild: bool) -> None:
    """Cache the HAPT recordings and print the window counts per split."""
    from shared.data.splits import TEST_SUBJECTS, TRAIN_SUBJECTS, VALIDATION_SUBJECTS
    from shared.dataset import UCI_HAR_WINDOW_COUNTS, build_window_sets

    cache = obj["cache"]
    if rebuild or not cache.exists():
        cache.build()
    recordings = cache.load()
    sets = build_window_sets(recordings)
    click.echo(
        f"cache: {cache.directory} ({len(recordings)} recordings, "
        f"{sum(len(r) for r in recordings):,} samples)"
    )
    click.echo(
        f"subjects: train {sorted(TRAIN_SUBJECTS)}\n          validation "
        f"{sorted(VALIDATION_SUBJECTS)}\n          test {sorted(TEST_SUBJECTS)}"
    )
    click.echo(f"{'split':<22}{'windows':>9}{'UCI HAR':>9}")
    train_total = len(sets["train"]) + len(sets["validation"])
    for split in ("train", "validation"):
        click.echo(f"{split:<22}{len(sets[split]):>9}")
    click.echo(f"{'train + validation':<22}{train_total:>9}{UCI_HAR_WINDOW_COUNTS['train']:>9}")
    click.echo(f"{'test':<22}{len(sets['test']):>9}{UCI_HAR_WINDOW_COUNTS['test']:>9}")
    for split, ws in sets.items():
        click.echo(f"  {split}: {ws.class_counts()}")


@cli.command()
@click.option(
    "--model", "kind", type=click.Choice(["paper", "lstm", "harstream", "cnn"]), required=True
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=None, help="Maximum epochs (default per model).")
@click.option(
    "--teachers",
    type=int,
    default=None,
    help="Distil from this many teachers of the same recipe (seeds 1000*seed+0..n-1; saved "
    "runs of them in --runs-dir are reused).",
)
@click.option(
    "--runs-dir", type=click.Path(path_type=Path), default=DEFAULT_RUNS, show_default=True
)
@click.option(
    "--export",
    "export_base",
    type=click.Path(path_type=Path),
    default=None,
    help="Also export as the next version under this TF Serving base path.",
)
@click.pass_obj
def train(
    obj: dict[str, HaptCache],
    kind: str,
    seed: int,
    epochs: int | None,
    teachers: int | None,
    runs_dir: Path,
    export_base: Path | None,
) -> None:
    """Train a model (early stopping on the validation subjects) and save its history."""
    _quiet_tensorflow()
    from services.training.pipeline import train_and_save

    command = (
        "harstream train " + shlex.join(sys.argv[sys.argv.index("train") + 1 :])
        if "train" in sys.argv
        else f"harstream train --model {kind} --seed {seed}"
    )
    summary = train_and_save(
        obj["cache"], kind, seed, epochs, runs_dir, export_base, command, teachers=teachers
    )
    click.echo(json.dumps(summary, indent=1))


@cli.command()
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="A training run directory, e.g. runs/harstream-seed0.",
)
@click.option(
    "--to",
    "export_base",
    type=click.Path(path_type=Path),
    default=DEFAULT_MODEL_BASE,
    show_default=True,
)
@click.pass_obj
def export(obj: dict[str, HaptCache], run_dir: Path, export_base: Path) -> None:
    """Export a saved training run as the next version of a TF Serving model base path."""
    _quiet_tensorflow()
    from services.training.pipeline import export_run

    summary = json.loads((run_dir / "run.json").read_text())
    config = summary["config"]
    command = f"harstream train --model {config['kind']} --seed {config['seed']}"
    if config.get("teachers"):
        command += f" --teachers {config['teachers']}"
    target = export_run(obj["cache"], run_dir, export_base, command)
    click.echo(f"exported {run_dir} as {target}")


@cli.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_MODEL_BASE,
    show_default=True,
    help="Model base path (newest version is used) or a SavedModel directory.",
)
@click.option(
    "--split", type=click.Choice(["train", "validation", "test"]), default="test", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option(
    "--reports-dir", type=click.Path(path_type=Path), default=DEFAULT_REPORTS, show_default=True
)
@click.pass_obj
def evaluate(
    obj: dict[str, HaptCache], model_path: Path, split: str, as_json: bool, reports_dir: Path
) -> None:
    """Evaluate an exported model on a split; write confusion-matrix and training-curve PNGs."""
    _quiet_tensorflow()
    from services.training.evaluate import (
        SavedModelPredictor,
        evaluate_windows,
        evaluation_summary,
        resolve_version_dir,
        write_reports,
    )
    from shared.dataset import build_window_sets

    version_dir = resolve_version_dir(model_path)
    sets = build_window_sets(obj["cache"].load())
    windows = sets[split]  # type: ignore[index]
    predictor = SavedModelPredictor(version_dir)
    started = time.perf_counter()
    report = evaluate_windows(predictor.predict_proba(windows.x), windows.y)
    summary = evaluation_summary(report, version_dir, split, time.perf_counter() - started)
    summary["reports"] = [str(p) for p in write_reports(report, version_dir, split, reports_dir)]
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(
        f"{version_dir} on {split}: {summary['windows']} windows, accuracy "
        f"{report.accuracy:.4f}, macro-F1 {report.macro.f1:.4f}"
    )
    for name, scores in report.per_class.items():
        click.echo(
            f"  {name:<20} P {scores.precision:.3f}  R {scores.recall:.3f}  "
            f"F1 {scores.f1:.3f}  n {scores.support}"
        )
    click.echo("\n".join(f"  wrote {p}" for p in summary["reports"]))


@cli.command()
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPORTS / "comparison.md",
    show_default=True,
)
@click.option(
    "--runs-dir", type=click.Path(path_type=Path), default=DEFAULT_RUNS, show_default=True
)
@click.option(
    "--saved-only",
    is_flag=True,
    help="Neural rows from the saved runs in --runs-dir only (no training).",
)
@click.pass_obj
def compare(
    obj: dict[str, HaptCache], seeds: str, out: Path, runs_dir: Path, saved_only: bool
) -> None:
    """Reproduce the paper's comparison table on our windows (takes ~30 min on 2 cores)."""
    _quiet_tensorflow()
    from services.training.comparison import run_comparison

    table = run_comparison(
        obj["cache"], [int(s) for s in seeds.split(",")], runs_dir, saved_only=saved_only
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    click.echo(table)
    click.echo(f"wrote {out}")


def main() -> None:
    try:
        cli(standalone_mode=True)
    except HarstreamError as exc:
        logger.error("%s", exc)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
