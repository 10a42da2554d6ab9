"""Evaluation of an exported model (the artefact TF Serving will serve) on a split."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from services.training.export import (
    FINGERPRINT_KEY,
    INPUT_KEY,
    PROBABILITIES_KEY,
    SIGNATURE_NAME,
    read_model_card,
    version_dirs,
)
from shared.activities import ACTIVITIES
from shared.classification import ClassificationReport, classification_report
from shared.errors import HarstreamError

logger = logging.getLogger(__name__)


class ModelNotFoundError(HarstreamError):
    """No SavedModel at the given path."""


def resolve_version_dir(path: Path) -> Path:
    """``models/har`` (newest version), ``models/har/3`` or any SavedModel directory."""
    if (path / "saved_model.pb").is_file():
        return path
    versions = version_dirs(path)
    if versions:
        return versions[-1][1]
    raise ModelNotFoundError(f"no SavedModel at {path} (nor numbered versions under it)")


class SavedModelPredictor:
    """Runs the ``serving_default`` signature in process, in batches."""

    def __init__(self, version_dir: Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self.version_dir = version_dir
        loaded = tf.saved_model.load(str(version_dir))
        self._loaded = loaded  # keep the variables alive
        self._signature = loaded.signatures[SIGNATURE_NAME]

    def predict_proba(self, windows: np.ndarray, batch_size: int = 256) -> np.ndarray:
        outputs = [
            self._signature(**{INPUT_KEY: self._tf.constant(windows[i : i + batch_size])})[
                PROBABILITIES_KEY
            ].numpy()
            for i in range(0, len(windows), batch_size)
        ]
        return np.concatenate(outputs) if outputs else np.zeros((0, len(ACTIVITIES)))

    def fingerprint(self) -> str:
        out = self._signature(**{INPUT_KEY: self._tf.zeros((1, 128, 9))})
        return str(out[FINGERPRINT_KEY].numpy()[0].decode())


def evaluate_windows(probabilities: np.ndarray, y_true: np.ndarray) -> ClassificationReport:
    return classification_report(y_true, probabilities.argmax(axis=1), ACTIVITIES)


def plot_confusion_matrix(report: ClassificationReport, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = report.confusion
    recall = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=110)
    ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{recall[i, j]:.1%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if recall[i, j] > 0.6 else "black",
            )
    names = [a.replace("WALKING_", "WALK_").title() for a in report.labels]
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\naccuracy {report.accuracy:.2%}, macro-F1 {report.macro.f1:.2%}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_training_curves(history: dict[str, list[float]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for key, style in (("loss", "-"), ("val_loss", "--")):
        left.plot(epochs, history[key], style, label=key)
    for key, style in (("accuracy", "-"), ("val_accuracy", "--")):
        right.plot(epochs, history[key], style, label=key)
    best = int(np.argmin(history["val_loss"])) + 1
    for ax in (left, right):
        ax.axvline(best, color="grey", lw=0.8, ls=":", label=f"kept (epoch {best})")
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    left.set_ylabel("cross-entropy")
    right.set_ylabel("accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_reports(
    report: ClassificationReport, version_dir: Path, split: str, reports_dir: Path
) -> list[Path]:
    """Confusion-matrix PNG, and training-curve PNG from the history next to the model."""
    card = read_model_card(version_dir) if (version_dir / "model_card.json").is_file() else {}
    name = f"{card.get('name', 'har')}-v{card.get('version', version_dir.name)}"
    written = [reports_dir / f"confusion_{name}_{split}.png"]
    plot_confusion_matrix(report, f"{name} on {split} subjects", written[0])
    history_path = version_dir / "history.json"
    if history_path.is_file():
        written.append(reports_dir / f"training_curves_{name}.png")
        plot_training_curves(json.loads(history_path.read_text()), name, written[1])
    return written


def evaluation_summary(
    report: ClassificationReport, version_dir: Path, split: str, seconds: float
) -> dict[str, Any]:
    return {
        "model": str(version_dir),
        "split": split,
        "windows": int(report.confusion.sum()),
        "seconds": round(seconds, 2),
        **report.to_dict(),
    }
