"""Model outputs + window messages + timings → :class:`Prediction` s. Pure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from services.inference.errors import FingerprintMismatchError, InvalidWindowError
from services.inference.model import NUM_CHANNELS, WINDOW_SIZE, ModelOutput
from shared.activities import ACTIVITIES
from shared.messages import Prediction, WindowMessage


def validate_window(window: WindowMessage) -> None:
    """Raise :class:`InvalidWindowError` for a window the model must not see: another shape
    than (128, 9), or NaN/inf (the model would answer NaN, and argmax of NaN is a lie)."""
    if window.data.shape != (WINDOW_SIZE, NUM_CHANNELS):
        raise InvalidWindowError(
            f"window {window.window_id} has shape {window.data.shape}, the model takes "
            f"({WINDOW_SIZE}, {NUM_CHANNELS})"
        )
    if not np.isfinite(window.data).all():
        raise InvalidWindowError(f"window {window.window_id} has non-finite values")


def build_prediction(
    window: WindowMessage,
    probabilities: npt.NDArray[np.floating],
    model_name: str,
    model_version: int,
    produced_at: float,
    queue_wait_s: float,
    inference_s: float,
    model_label: str = "",
) -> Prediction:
    """The prediction of one window: label = ACTIVITIES[argmax], features copied for alerting.

    Args:
        probabilities: (6,) class probabilities in ACTIVITIES order.
        produced_at: wall-clock time (Unix seconds).
        queue_wait_s: seconds the window waited in the batcher.
        inference_s: seconds the Predict call that classified it took.
        model_label: the TF Serving version label the model was addressed by ("" if none).
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.shape != (len(ACTIVITIES),):
        raise ValueError(f"{probs.shape} probabilities for {len(ACTIVITIES)} classes")
    return Prediction(
        window_id=window.window_id,
        device_id=window.device_id,
        start_index=window.start_index,
        start_time=window.start_time,
        end_time=window.end_time,
        label=ACTIVITIES[int(np.argmax(probs))],
        probabilities=tuple(float(p) for p in probs),
        model_name=model_name,
        model_version=model_version,
        features=window.features,
        ingested_at=window.ingested_at,
        window_emitted_at=window.emitted_at,
        produced_at=produced_at,
        queue_wait_s=queue_wait_s,
        inference_s=inference_s,
        model_label=model_label,
    )


def batch_predictions(
    windows: Sequence[WindowMessage],
    queue_waits_s: Sequence[float],
    output: ModelOutput,
    model_name: str,
    produced_at: float,
    inference_s: float,
    model_label: str = "",
) -> list[Prediction | FingerprintMismatchError]:
    """One entry per window, in order: its prediction, or why it must not get one (its
    preprocessing fingerprint is not the one the answering model was trained on)."""
    results: list[Prediction | FingerprintMismatchError] = []
    for row, (window, wait) in enumerate(zip(windows, queue_waits_s, strict=True)):
        served = output.fingerprints[row]
        if window.fingerprint != served:
            results.append(
                FingerprintMismatchError(
                    f"window {window.window_id} was preprocessed with fingerprint "
                    f"{window.fingerprint!r}, but the served model {model_name} "
                    f"v{output.version} expects {served!r}"
                )
            )
            continue
        results.append(
            build_prediction(
                window,
                output.probabilities[row],
                model_name,
                output.version,
                produced_at,
                wait,
                inference_s,
                model_label,
            )
        )
    return results
