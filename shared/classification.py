"""Classification metrics in plain numpy: accuracy, per-class precision/recall/F1, macro and
weighted averages, confusion matrix. Used by offline evaluation and by the demo's
streaming-accuracy summary, so both report the same figures the same way."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationReport:
    """All figures as fractions in [0, 1]; ``confusion[i, j]`` counts true i predicted j."""

    labels: tuple[str, ...]
    accuracy: float
    per_class: dict[str, ClassScores]
    macro: ClassScores
    weighted: ClassScores
    confusion: npt.NDArray[np.int64]

    def to_dict(self) -> dict[str, object]:
        return {
            "labels": list(self.labels),
            "samples": int(self.confusion.sum()),
            "accuracy": self.accuracy,
            "per_class": {k: asdict(v) for k, v in self.per_class.items()},
            "macro_avg": asdict(self.macro),
            "weighted_avg": asdict(self.weighted),
            "confusion_matrix": self.confusion.tolist(),
        }


def confusion_matrix(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, num_classes: int
) -> npt.NDArray[np.int64]:
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"class indices must be in 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def classification_report(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, labels: tuple[str, ...]
) -> ClassificationReport:
    """Scores of predictions ``y_pred`` against ``y_true`` (class indices into ``labels``).

    A class never predicted has precision 0; never present, recall 0 (as scikit-learn with
    ``zero_division=0``).
    """
    cm = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = int(support.sum())
    weights = support / total if total else np.zeros_like(tp)
    per_class = {
        name: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(labels)
    }
    return ClassificationReport(
        labels=labels,
        accuracy=float(tp.sum() / total) if total else 0.0,
        per_class=per_class,
        macro=ClassScores(float(precision.mean()), float(recall.mean()), float(f1.mean()), total),
        weighted=ClassScores(
            float(precision @ weights), float(recall @ weights), float(f1 @ weights), total
        ),
        confusion=cm,
    )
