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
) -> Path:
    """Write ``model`` as ``<base>/<version>/`` (next free version by default)."""
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
    (staging / MODEL_CARD_JSON).write_text(json.dumps(card, indent=1))
    (staging / "MODEL_CARD.md").write_text(render_model_card(card))
    # TF Serving polls the base path: it must never see a half-written version
    staging.rename(target)
    logger.info("exported %s", target)
    return target


def read_model_card(version_dir: Path) -> dict[str, Any]:
    return dict(json.loads((version_dir / MODEL_CARD_JSON).read_text()))


def render_model_card(card: dict[str, Any]) -> str:
    pre = card["preprocessing"]
    lines = [
        f"# Model card: {card.get('name', 'har')} version {card['version']}",
        "",
        f"**Architecture:** {card.get('architecture', '?')}",
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
    for split, metrics in card.get("metrics", {}).items():
        lines.append(
            f"- {split}: accuracy {metrics['accuracy']:.4f}, macro-F1 "
            f"{metrics['macro_avg']['f1']:.4f} on {metrics['samples']} windows"
        )
    if "training" in card:
        lines += ["", "## Training", "```json", json.dumps(card["training"], indent=1), "```"]
    lines += ["", "## Limitations", card.get("limitations", ""), ""]
    return "\n".join(lines)
