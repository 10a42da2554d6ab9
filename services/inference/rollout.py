"""Canary and shadow rollout of a candidate model version beside the stable one. Pure: the
models are :class:`~services.inference.model.ModelIO`, measurements go to a
:class:`RolloutObserver`, time is injected.

Two TF Serving version labels are addressed: the stable one (``model_version_label``, e.g.
``stable``) and the candidate (``candidate_version_label``, ``canary``). Which version a
label names is the model server's business: ``harstream models promote`` moves a label and
the next Predict follows it, without restarting the worker.

- **Canary share**: a fixed fraction of devices gets its live predictions from the
  candidate. A device is in the canary when :func:`canary_bucket` of its id (the first 8
  bytes of its SHA-256 as a fraction of 2⁶⁴) is below the share: the same device always
  lands on the same side, on every worker and after every restart, and raising the share
  only adds devices (none flips back).
- **Shadow**: every batch is also sent to the candidate; its predictions go to the shadow
  topic and to metrics, never to the predictions topic, so alerting never sees them.

The stable model predicts every window of every batch, canary devices' too: it is the
baseline the candidate is compared with (agreement per window, same window, same moment)
and the fallback of a canary device when the candidate fails. So the candidate costs extra
Predict work equal to the canary share (100 % in shadow mode), never a stall:

- the candidate's Predict runs concurrently with the stable one, bounded by its own
  deadline, and is not retried;
- if it fails (any gRPC status, a deadline, an answer of the wrong shape, a preprocessing
  fingerprint other than the windows'), canary devices keep the stable predictions of this
  batch (counted as fallbacks: a canary device's alerts never depend on the candidate being
  healthy) and shadow predictions are skipped (counted);
- after ``failures_to_pause`` failures in a row the candidate is not called for
  ``pause_s`` seconds (then tried again), so a hanging candidate costs at most a few
  deadlines, not one per batch.

This is what KServe and Seldon users get from a canary split and a mirror, with one
difference: a KServe canary that fails returns errors to its share of clients until the
rollout is reverted, while a stream has no client to return them to; falling back keeps
every device's predictions (and fall alerts) flowing, and the fallback counter is the
signal to roll back (``harstream models rollback``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from services.inference.batching import Queued
from services.inference.errors import InferenceError, ModelResponseError, ModelServerError
from services.inference.model import ModelIO, ModelOutput, check_output
from services.inference.processing import BatchProcessor, BatchResult, Consumed
from services.inference.results import batch_predictions
from shared.messages import Prediction

logger = logging.getLogger(__name__)

#: Routes of a prediction, the ``route`` label of the per-version metrics.
STABLE, CANARY, FALLBACK, SHADOW = "stable", "canary", "fallback", "shadow"


def canary_bucket(device_id: str) -> float:
    """Where a device falls in [0, 1): the first 8 bytes of SHA-256(device id, UTF-8) read
    big-endian, over 2⁶⁴. Stable across processes and Python versions (no ``hash()`` seed),
    and uniform enough that the share of devices below ``s`` is ``s`` within sampling noise."""
    digest = hashlib.sha256(device_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def in_canary(device_id: str, share: float) -> bool:
    """Whether ``device_id`` belongs to a canary of ``share`` (0: none, 1: all)."""
    return share > 0.0 and canary_bucket(device_id) < share


@dataclass(frozen=True)
class RolloutPlan:
    """What the candidate does: serve a share of devices, shadow every batch, or both."""

    #: The candidate's TF Serving version label.
    candidate_label: str = "canary"
    #: Fraction of devices (0..1) whose live predictions come from the candidate.
    canary_share: float = 0.0
    #: Send every batch to the candidate too; its predictions go to the shadow topic.
    shadow: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.canary_share <= 1.0:
            raise ValueError(f"canary_share must be within [0, 1], got {self.canary_share}")

    @property
    def enabled(self) -> bool:
        return self.shadow or self.canary_share > 0.0

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        parts = []
        if self.canary_share > 0.0:
            parts.append(f"canary {self.canary_share:.0%} of devices")
        if self.shadow:
            parts.append("shadow of every batch")
        return f"{' + '.join(parts)} on label {self.candidate_label!r}"


class CandidateBreaker:
    """Stops calling a failing candidate for a while: after ``failures_to_pause``
    consecutive failures it is skipped for ``pause_s`` seconds; then one batch tries it
    again (a failure pauses it again at once, a success closes the breaker)."""

    def __init__(
        self, failures_to_pause: int, pause_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures_to_pause < 1:
            raise ValueError("failures_to_pause must be >= 1")
        self._threshold = failures_to_pause
        self._pause_s = pause_s
        self._clock = clock
        self._consecutive = 0
        self._paused_until: float | None = None

    @property
    def paused(self) -> bool:
        return self._paused_until is not None and self._clock() < self._paused_until

    def allow(self) -> bool:
        return not self.paused

    def record(self, ok: bool) -> None:
        if ok:
            self._consecutive = 0
            self._paused_until = None
            return
        self._consecutive += 1
        if self._consecutive >= self._threshold:
            self._paused_until = self._clock() + self._pause_s


class RolloutObserver(Protocol):
    """Per-version measurements (Prometheus in the worker, lists in tests)."""

    def routed(self, prediction: Prediction, route: str) -> None:
        """A prediction was made on ``route`` (stable, canary, fallback or shadow)."""
        ...

    def compared(self, mode: str, stable_version: int, candidate_version: int, agree: bool) -> None:
        """The stable and candidate versions classified one window (``mode``: canary or
        shadow); ``agree``: the same activity."""
        ...

    def candidate_failed(self, mode: str, reason: str, windows: int) -> None:
        """The candidate was not used for ``windows`` windows of ``mode``: ``reason`` is a
        gRPC status name, ``deadline``, ``response``, ``fingerprint`` or ``paused``."""
        ...


@dataclass(frozen=True)
class _CandidateAnswer:
    output: ModelOutput | None
    seconds: float
    reason: str = ""


class RolloutProcessor:
    """A :class:`BatchProcessor` (the stable model, with its retries and dead letters) plus
    the candidate per :class:`RolloutPlan`; :meth:`process` returns the batch's live
    predictions (stable, canary or fallback) and its shadow predictions."""

    def __init__(
        self,
        stable: BatchProcessor,
        candidate: ModelIO | None,
        plan: RolloutPlan,
        model_name: str,
        observer: RolloutObserver,
        breaker: CandidateBreaker,
        deadline_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if plan.enabled and candidate is None:
            raise ValueError("a rollout plan needs a candidate model")
        self._stable = stable
        self._candidate = candidate
        self._plan = plan
        self._model_name = model_name
        self._observer = observer
        self._breaker = breaker
        self._deadline_s = deadline_s
        self._clock = clock
        self._wall = wall_clock

    @property
    def plan(self) -> RolloutPlan:
        return self._plan

    def request_stop(self) -> None:
        self._stable.request_stop()

    async def process(self, batch: Sequence[Queued[Consumed]]) -> BatchResult:
        plan = self._plan
        taken_at = self._clock()
        canary = {
            q.item.window.window_id
            for q in batch
            if q.item.window is not None and in_canary(q.item.window.device_id, plan.canary_share)
        }
        targets = [
            q
            for q in batch
            if q.item.window is not None and (plan.shadow or q.item.window.window_id in canary)
        ]
        task: asyncio.Future[_CandidateAnswer] | None = None
        if targets and self._breaker.allow():
            task = asyncio.ensure_future(self._ask_candidate(targets))
        try:
            result = await self._stable.process(batch)
        except BaseException:
            if task is not None:
                task.cancel()
            raise
        answer = (
            await task
            if task is not None
            else _CandidateAnswer(None, 0.0, "paused" if targets else "")
        )
        candidate = self._candidate_predictions(targets, answer, taken_at)
        self._merge(result, candidate, canary, answer.reason)
        return result

    async def _ask_candidate(self, targets: Sequence[Queued[Consumed]]) -> _CandidateAnswer:
        assert self._candidate is not None
        windows = np.stack([q.item.window.data for q in targets if q.item.window is not None])
        started = self._clock()
        reason = ""
        output: ModelOutput | None = None
        try:
            # The gRPC deadline bounds the call already; this bounds any ModelIO.
            output = await asyncio.wait_for(
                self._candidate.predict(windows.astype(np.float32)), self._deadline_s
            )
            check_output(output, len(targets))
            # Trained on other preprocessing: none of its answers is worth using or
            # comparing (and it counts as a failure, so the breaker pauses it).
            expected = [q.item.window.fingerprint for q in targets if q.item.window is not None]
            if list(output.fingerprints) != expected:
                reason = "fingerprint"
        except TimeoutError:
            reason = "DEADLINE_EXCEEDED"
        except ModelServerError as exc:
            reason = exc.code
        except (ModelResponseError, InferenceError):
            reason = "response"
        except Exception:
            # Whatever goes wrong with the candidate must not end the worker.
            logger.exception("candidate %r Predict raised", self._plan.candidate_label)
            reason = "error"
        seconds = self._clock() - started
        if reason:
            output = None
            logger.warning(
                "candidate %r Predict of %d windows failed (%s): canary devices stay on "
                "stable, shadows skipped",
                self._plan.candidate_label,
                len(targets),
                reason,
            )
        self._breaker.record(not reason)
        return _CandidateAnswer(output, seconds, reason)

    def _candidate_predictions(
        self, targets: Sequence[Queued[Consumed]], answer: _CandidateAnswer, taken_at: float
    ) -> dict[str, Prediction]:
        """Window id → the candidate's prediction; empty if it failed."""
        if answer.output is None:
            return {}
        windows = [q.item.window for q in targets if q.item.window is not None]
        outcomes = batch_predictions(
            windows,
            [taken_at - q.enqueued_at for q in targets],
            answer.output,
            self._model_name,
            self._wall(),
            answer.seconds,
        )
        label = self._plan.candidate_label
        return {
            o.window_id: replace(o, model_label=label)
            for o in outcomes
            if isinstance(o, Prediction)
        }

    def _merge(
        self,
        result: BatchResult,
        candidate: dict[str, Prediction],
        canary: set[str],
        reason: str,
    ) -> None:
        """Canary windows take the candidate's prediction (else they keep stable's: a
        fallback); shadowed windows add the candidate's to ``result.shadow``; every window
        both classified is compared."""
        observer = self._observer
        failed = {CANARY: 0, SHADOW: 0}
        for index, (entry, stable) in enumerate(result.predictions):
            mode = CANARY if stable.window_id in canary else SHADOW
            if mode == SHADOW and not self._plan.shadow:
                observer.routed(stable, STABLE)
                continue
            mine = candidate.get(stable.window_id)
            if mine is None:
                failed[mode] += 1
                observer.routed(stable, FALLBACK if mode == CANARY else STABLE)
                continue
            observer.compared(
                mode, stable.model_version, mine.model_version, mine.label == stable.label
            )
            if mode == CANARY:
                result.predictions[index] = (entry, mine)
                observer.routed(mine, CANARY)
            else:
                observer.routed(stable, STABLE)
                result.shadow.append(mine)
                observer.routed(mine, SHADOW)
        for mode, windows in failed.items():
            if windows:
                observer.candidate_failed(mode, reason or "missing", windows)


__all__ = [
    "CANARY",
    "FALLBACK",
    "SHADOW",
    "STABLE",
    "CandidateBreaker",
    "RolloutObserver",
    "RolloutPlan",
    "RolloutProcessor",
    "canary_bucket",
    "in_canary",
]
