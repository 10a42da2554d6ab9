"""What the demo watches and reports: predictions scored against the recordings' labels,
latency per stage, throughput and alerts (pure; the orchestrator feeds it from Kafka).

Per model version too: live predictions (stable, or a canary share) and a candidate's
shadow predictions are each scored against the same labels, and the shadow's agreement
with the live prediction of the same window is counted: live accuracy where the labels are
known, which a deployment of real wearables never has."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from shared.activities import ACTIVITIES
from shared.classification import ClassificationReport, classification_report
from shared.dataset import window_labels
from shared.messages import Alert, Prediction

WINDOW_SIZE = 128


@dataclass
class DeviceView:
    """The live view's row for one device."""

    device_id: str
    windows: int = 0
    label: str = "-"
    confidence: float = 0.0
    truth: str = "-"
    correct: int = 0
    scored: int = 0
    last_alert: str = ""


@dataclass
class StageLatencies:
    """Seconds per stage for every prediction (wall clock, one machine)."""

    ingest_to_window: list[float] = field(default_factory=list)
    queue_wait: list[float] = field(default_factory=list)
    inference: list[float] = field(default_factory=list)
    end_to_end: list[float] = field(default_factory=list)

    def add(self, p: Prediction) -> None:
        self.ingest_to_window.append(p.window_emitted_at - p.ingested_at)
        self.queue_wait.append(p.queue_wait_s)
        self.inference.append(p.inference_s)
        self.end_to_end.append(p.end_to_end_s)

    def percentiles(self) -> dict[str, tuple[float, float]]:
        """``{stage: (p50, p99)}`` in seconds."""
        out = {}
        for name in ("ingest_to_window", "queue_wait", "inference", "end_to_end"):
            values = getattr(self, name)
            if values:
                p50, p99 = np.percentile(values, [50, 99])
                out[name] = (float(p50), float(p99))
        return out


@dataclass
class VersionScore:
    """Predictions of one model version, scored against the recordings' labels."""

    version: int
    label: str = ""
    predictions: int = 0
    scored: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None


@dataclass
class Agreement:
    """Windows classified by both a live and a shadow version, and on how many they agreed."""

    compared: int = 0
    agreed: int = 0

    @property
    def rate(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


class DemoTally:
    """Accumulates predictions and alerts; scores each prediction against the label of the
    recording samples its window covers (windows spanning two activities are not scored,
    exactly as in the offline evaluation)."""

    def __init__(self, truth: Mapping[str, npt.NDArray[np.integer]]) -> None:
        self._truth = truth
        self.devices: dict[str, DeviceView] = {d: DeviceView(d) for d in truth}
        self.seen_windows: set[str] = set()
        self.duplicates = 0
        self.other_devices = 0
        self.latencies = StageLatencies()
        self.y_true: list[int] = []
        self.y_pred: list[int] = []
        self.alerts: dict[str, Alert] = {}
        self.alert_events: Counter[tuple[str, str]] = Counter()
        self.first_prediction_at: float | None = None
        self.last_prediction_at: float | None = None
        self.model_versions: Counter[int] = Counter()
        #: Live predictions (predictions topic) and shadow ones, per model version.
        self.live_versions: dict[int, VersionScore] = {}
        self.shadow_versions: dict[int, VersionScore] = {}
        #: (live version, shadow version) → agreement on the windows both classified.
        self.agreement: dict[tuple[int, int], Agreement] = {}
        self._live_labels: dict[str, tuple[int, str]] = {}
        self._shadow_labels: dict[str, tuple[int, str]] = {}

    def _true_class(self, p: Prediction) -> int | None:
        """The window's activity in the recording; -1 for a window spanning two; None when
        the recording is unknown or shorter than the window."""
        labels = self._truth.get(p.device_id)
        if labels is None or p.start_index + WINDOW_SIZE > len(labels):
            return None
        return int(window_labels(labels, np.array([p.start_index]), WINDOW_SIZE)[0])

    def _score(
        self, scores: dict[int, VersionScore], p: Prediction, true_class: int | None
    ) -> None:
        score = scores.setdefault(p.model_version, VersionScore(p.model_version))
        score.label = score.label or p.model_label
        score.predictions += 1
        if true_class is not None and true_class >= 0:
            score.scored += 1
            score.correct += int(ACTIVITIES.index(p.label) == true_class)

    def _compare(self, window_id: str) -> None:
        live, shadow = self._live_labels.get(window_id), self._shadow_labels.get(window_id)
        if live is None or shadow is None:
            return
        pair = self.agreement.setdefault((live[0], shadow[0]), Agreement())
        pair.compared += 1
        pair.agreed += int(live[1] == shadow[1])

    def add_shadow(self, p: Prediction) -> None:
        """A candidate's shadow prediction (shadow-predictions topic): scored per version,
        compared with the live prediction of the same window; never shown as live."""
        if p.device_id not in self._truth or p.window_id in self._shadow_labels:
            return
        self._shadow_labels[p.window_id] = (p.model_version, p.label)
        self._score(self.shadow_versions, p, self._true_class(p))
        self._compare(p.window_id)

    def add_prediction(self, p: Prediction) -> None:
        if p.device_id not in self._truth:
            self.other_devices += 1  # another replay on the same topics
            return
        if p.window_id in self.seen_windows:
            self.duplicates += 1
            return
        self.seen_windows.add(p.window_id)
        self.latencies.add(p)
        self.model_versions[p.model_version] += 1
        self.first_prediction_at = min(self.first_prediction_at or p.produced_at, p.produced_at)
        self.last_prediction_at = max(self.last_prediction_at or 0.0, p.produced_at)
        view = self.devices.setdefault(p.device_id, DeviceView(p.device_id))
        view.windows += 1
        view.label, view.confidence = p.label, p.confidence
        true_class = self._true_class(p)
        self._score(self.live_versions, p, true_class)
        self._live_labels[p.window_id] = (p.model_version, p.label)
        self._compare(p.window_id)
        if true_class is None:
            view.truth = "-"
            return
        view.truth = ACTIVITIES[true_class] if true_class >= 0 else "(transition)"
        if true_class >= 0:
            predicted = ACTIVITIES.index(p.label)
            self.y_true.append(true_class)
            self.y_pred.append(predicted)
            view.scored += 1
            view.correct += int(predicted == true_class)

    def add_alert(self, alert: Alert) -> None:
        if alert.device_id not in self._truth:
            return
        self.alerts[alert.alert_id] = alert
        self.alert_events[(alert.type.value, alert.state.value)] += 1
        view = self.devices.setdefault(alert.device_id, DeviceView(alert.device_id))
        view.last_alert = f"{alert.type.value} ({alert.state.value})"

    @property
    def predictions(self) -> int:
        return len(self.seen_windows)

    def report(self) -> ClassificationReport | None:
        if not self.y_true:
            return None
        return classification_report(
            np.array(self.y_true), np.array(self.y_pred), labels=ACTIVITIES
        )
