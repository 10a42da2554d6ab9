"""Export a trained model for TensorFlow Serving, with its model card.

Layout (TF Serving's model base path): ``<base>/<version>/saved_model.pb`` + ``variables/``.
Signature ``serving_default`` (method ``tensorflow/serving/predict``):

- input ``window``: float32 ``(-1, 128, 9)``, channels as ``shared.dsp.CHANNELS``;
- output ``probabilities``: float32 ``(-1, 6)``, classes as ``shared.activities.ACTIVITIES``;
- output ``preprocessing_fingerprint``: string ``(-1,)``, the fingerprint of the
  preprocessing the model was trained on (one per row, because TF Serving's batching needs
  every output batched). The inference worker checks it against its own.

Beside the SavedModel: ``model_card.json`` (machine-readable) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from shared.activities import ACTIVITIES
from shared.dsp import CHANNELS, PreprocessingConfig

logger = logging.getLogger(__name__)

SIGNATURE_NAME = "serving_default"
INPUT_KEY = "window"
PROBABILITIES_KEY = "probabilities"
FINGERPRINT_KEY = "preprocessing_fingerprint"
MODEL_CARD_JSON = "model_card.json"


def version_dirs(base: Path) -> list[tuple[int, Path]]:
    """Numeric version directories under a model base path, oldest first."""
    if not base.is_dir():
        return []
    found = [(int(p.name), p) for p in base.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found)


def next_version(base: Path) -> int:
    versions = version_dirs(base)
    return versions[-1][0] + 1 if versions else 1


def export_saved_model(
    model: Any,
    base: Path,
    card: dict[str, Any],
    preprocessing: PreprocessingConfig,
    version: int | None = None,
    throughput_seconds: float | None = None,
) -> Path:
    """Write ``model`` as ``<base>/<version>/`` (next free version by default).

    ``throughput_seconds``: also measure the written signature's windows/s
    (:func:`services.training.throughput.measure_signature`, that many seconds per round)
    and put the figures in the model card.
    """
    import keras
    import tensorflow as tf

    version = version if version is not None else next_version(base)
    target = base / str(version)
    staging = base / f".{version}.partial"
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another version")
    shutil.rmtree(staging, ignore_errors=True)
    fingerprint = tf.constant(preprocessing.fingerprint)

    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(window: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = model(window, training=False)
        return {
            PROBABILITIES_KEY: probabilities,
            FINGERPRINT_KEY: tf.fill(tf.shape(window)[:1], fingerprint),
        }

    archive.add_endpoint(
        name=SIGNATURE_NAME,
        fn=serve,
        input_signature=[tf.TensorSpec((None, 128, len(CHANNELS)), tf.float32, name=INPUT_KEY)],
    )
    archive.write_out(str(staging), verbose=False)
    card = {
        **card,
        "version": version,
        "signature": {
            "name": SIGNATURE_NAME,
            "inputs": {
                INPUT_KEY: {
                    "dtype": "float32",
                    "shape": [-1, 128, len(CHANNELS)],
                    "channels": list(CHANNELS),
                }
            },
            "outputs": {
                PROBABILITIES_KEY: {
                    "dtype": "float32",
                    "shape": [-1, len(ACTIVITIES)],
                    "classes": list(ACTIVITIES),
                },
                FINGERPRINT_KEY: {"dtype": "string", "shape": [-1]},
            },
        },
        "preprocessing": {**preprocessing.to_dict(), "fingerprint": preprocessing.fingerprint},
    }
    if throughput_seconds:
        from services.training.throughput import measure_signature

        card["throughput"] = measure_signature(staging, seconds=throughput_seconds)
    (staging / MODEL_CARD_JSON).write_text(json.dumps(card, indent=1))
    (staging / "MODEL_CARD.md").write_text(render_model_card(card))
    # TF Serving polls the base path: it must never see a half-written version
    staging.rename(target)
    logger.info("exported %s", target)
    return target


def read_model_card(version_dir: Path) -> dict[str, Any]:
    return dict(json.loads((version_dir / MODEL_CARD_JSON).read_text()))


def _confusion_table(metrics: dict[str, Any]) -> list[str]:
    labels = metrics["labels"]
    short = [name.replace("WALKING_", "WALK_").title() for name in labels]
    lines = [
        "| true \\ predicted | " + " | ".join(short) + " | recall |",
        "|---|" + "---:|" * (len(labels) + 1),
    ]
    for name, label, row in zip(short, labels, metrics["confusion_matrix"], strict=True):
        recall = metrics["per_class"][label]["recall"]
        lines.append(f"| {name} | " + " | ".join(map(str, row)) + f" | {recall:.1%} |")
    return lines


def _per_class_table(metrics: dict[str, Any]) -> list[str]:
    lines = ["| class | precision | recall | F1 | windows |", "|---|---:|---:|---:|---:|"]
    for label, scores in metrics["per_class"].items():
        lines.append(
            f"| {label} | {scores['precision']:.2%} | {scores['recall']:.2%} | "
            f"{scores['f1']:.2%} | {scores['support']} |"
        )
    return lines


def describe_recipe(config: dict[str, Any]) -> str:
    """The training recipe of a run's config in words."""
    optimiser = (
        f"AdamW (weight decay {config['weight_decay']:g})"
        if config.get("weight_decay") or config.get("ema")
        else "Adam"
    )
    if config.get("ema"):
        optimiser += ", weights averaged (EMA 0.99) for validation and export"
    schedule = {
        "constant": f"constant learning rate {config['learning_rate']:g}",
        "plateau": f"learning rate {config['learning_rate']:g}, halved after 4 epochs "
        "without a better validation loss",
        "cosine": f"learning rate {config['learning_rate']:g} with {config['warmup_epochs']} "
        "warm-up epochs, cosine decay to 0",
    }[config.get("schedule", "constant")]
    selection = {
        "val_loss": "the epoch of lowest validation loss",
        "val_accuracy": "the epoch of highest validation accuracy (ties: lower loss)",
        "last": "the last epoch's",
    }[config.get("selection", "val_loss")]
    parts = [
        f"{optimiser}; {schedule}; batch {config['batch_size']}; at most "
        f"{config['epochs']} epochs"
        + (
            f", stopped after {config['patience']} without a better one"
            if config["patience"]
            else ""
        ),
        f"gradient clipping at global norm {config['clipnorm']:g}"
        if config.get("clipnorm")
        else "no gradient clipping",
        f"training windows every {config['train_step']} samples",
        f"weights kept: {selection}",
    ]
    if config.get("label_smoothing"):
        parts.append(f"label smoothing {config['label_smoothing']:g}")
    if config.get("mixup"):
        parts.append(f"mixup Beta({config['mixup']:g}, {config['mixup']:g})")
    if config.get("kind") in ("harstream", "cnn"):
        parts.append(f"random rotation ±{config['max_degrees']:g}° and scale ±10 % in training")
    if config.get("data_rotation"):
        parts.append(
            f"random rotation ±{config['data_rotation']:g}° and scale ±10 % of every training "
            "window"
        )
    if config.get("standardise"):
        parts.append(
            "inputs standardised per channel with the training set's mean and spread (a "
            "Normalization layer in front of the architecture, part of the exported model)"
        )
    if config.get("teachers"):
        parts.append(
            f"distilled from the averaged probabilities of {config['teachers']} teachers of "
            "the same recipe"
        )
    return "; ".join(parts) + f"; seed {config['seed']} (deterministic TensorFlow kernels)."


def render_model_card(card: dict[str, Any]) -> str:
    pre = card["preprocessing"]
    lines = [
        f"# Model card: {card.get('name', 'har')} version {card['version']}",
        "",
        f"**Architecture:** {card.get('architecture', '?')}",
        "",
        f"**Trained by:** `{card.get('training_command', '?')}`",
        "",
        "## Intended use",
        "Classifies 2.56 s windows of a waist-worn phone's IMU (50 Hz) into six activities:",
        ", ".join(ACTIVITIES) + ". Not a medical device: alerts built on it need human "
        "confirmation.",
        "",
        "## Data",
        card.get("data", ""),
        "",
        "## Preprocessing",
        f"Fingerprint `{pre['fingerprint']}` (scheme `{pre['scheme']}`): causal median filter "
        f"(kernel {pre['median_kernel']}), Butterworth low-pass {pre['noise_cutoff_hz']} Hz "
        f"(order {pre['noise_order']}) for noise, {pre['gravity_cutoff_hz']} Hz "
        f"(order {pre['gravity_order']}) for gravity; windows of {pre['window_size']} samples "
        f"every {pre['window_step']} at {pre['sample_rate_hz']} Hz.",
        "",
        "Input channels: " + ", ".join(CHANNELS) + " (g, rad/s).",
        "",
        "## Metrics",
    ]
    metrics = card.get("metrics", {})
    for split, figures in metrics.items():
        lines.append(
            f"- {split}: accuracy {figures['accuracy']:.2%}, macro-F1 "
            f"{figures['macro_avg']['f1']:.2%} on {figures['samples']} windows"
        )
    for split, figures in metrics.items():
        if "confusion_matrix" in figures:
            lines += ["", f"### {split.title()} subjects", "", *_per_class_table(figures), ""]
            lines += _confusion_table(figures)
    training = card.get("training")
    if training:
        lines += ["", "## Training"]
        if "config" in training:
            lines += ["", describe_recipe(training["config"])]
        if "train_seconds" in training:
            lines += [
                "",
                f"Kept epoch {training.get('best_epoch')} of {training.get('epochs_run')}; "
                f"{training['train_seconds']:.0f} s of training on "
                f"{training.get('train_windows')} windows.",
            ]
        lines += ["", "```json", json.dumps(training, indent=1), "```"]
    throughput = card.get("throughput")
    if throughput:
        lines += [
            "",
            "## Throughput",
            "",
            f"{throughput['method']}; {throughput['cpus']} CPUs ({throughput['machine']}), "
            f"load average {throughput['load_average_1min']} while measuring.",
            "",
            "| batch | windows/s | p50 ms/batch |",
            "|---:|---:|---:|",
        ]
        for batch, row in throughput["batches"].items():
            lines.append(
                f"| {batch} | {row['windows_per_second']:,} | {row['p50_ms_per_batch']:.2f} |"
            )
    lines += ["", "## Limitations", card.get("limitations", ""), ""]
    return "\n".join(lines)
