"""Test doubles for the inference worker's unit tests: windows and a scripted fake model."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from services.inference.errors import ModelServerError
from services.inference.model import ModelOutput, Signature, TensorSpec, VersionStatus
from shared.dsp import PreprocessingConfig
from shared.features import motion_features
from shared.messages import WindowMessage

FINGERPRINT = PreprocessingConfig().fingerprint


def make_window(
    device: str = "dev-1",
    start_index: int = 0,
    fingerprint: str = FINGERPRINT,
    seed: int = 0,
    ingested_at: float = 1000.0,
) -> WindowMessage:
    data = np.random.default_rng(seed).normal(0, 0.1, (128, 9)).astype(np.float32)
    return WindowMessage(
        device_id=device,
        start_index=start_index,
        start_time=100.0 + start_index / 50,
        end_time=100.0 + (start_index + 128) / 50,
        fingerprint=fingerprint,
        ingested_at=ingested_at,
        emitted_at=ingested_at + 0.01,
        features=motion_features(data),
        data=data,
    )


def probabilities_of(windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A deterministic stand-in model: softmax of the first six channel means × 50."""
    logits = windows[:, :, :6].mean(axis=1) * 50
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


GOOD_SIGNATURE = Signature(
    name="serving_default",
    inputs={"window": TensorSpec("DT_FLOAT", (-1, 128, 9))},
    outputs={
        "probabilities": TensorSpec("DT_FLOAT", (-1, 6)),
        "preprocessing_fingerprint": TensorSpec("DT_STRING", (-1,)),
    },
)


class FakeModel:
    """A scripted ModelIO. ``predict_failures`` are raised by the first Predict calls;
    ``status_script`` gives successive GetModelStatus answers (the last one repeats);
    ``signature_failures`` are raised by the first GetModelMetadata calls;
    Predict fails with INVALID_ARGUMENT for any batch holding a window ``reject`` accepts."""

    def __init__(
        self,
        fingerprint: str = FINGERPRINT,
        version: int = 1,
        predict_failures: list[ModelServerError] | None = None,
        status_script: list[list[VersionStatus] | ModelServerError] | None = None,
        signature: Signature = GOOD_SIGNATURE,
        reject: Callable[[npt.NDArray[np.float32]], bool] | None = None,
        signature_failures: list[ModelServerError] | None = None,
    ) -> None:
        self.fingerprint = fingerprint
        self.version = version
        self.predict_failures = list(predict_failures or [])
        self.status_script = list(status_script or [[VersionStatus(version, "AVAILABLE")]])
        self._signature = signature
        self.reject = reject
        self.signature_failures = list(signature_failures or [])
        self.predict_batches: list[int] = []
        self.status_calls = 0

    @property
    def target(self) -> str:
        return "fake:8500"

    async def model_status(self) -> list[VersionStatus]:
        self.status_calls += 1
        step = self.status_script.pop(0) if len(self.status_script) > 1 else self.status_script[0]
        if isinstance(step, ModelServerError):
            raise step
        return step

    async def signature(self) -> Signature:
        if self.signature_failures:
            raise self.signature_failures.pop(0)
        return self._signature

    async def predict(self, windows: npt.NDArray[np.float32]) -> ModelOutput:
        self.predict_batches.append(len(windows))
        if self.predict_failures:
            raise self.predict_failures.pop(0)
        if self.reject is not None and any(self.reject(w) for w in windows):
            raise ModelServerError("INVALID_ARGUMENT", "bad window in batch", retriable=False)
        return ModelOutput(
            probabilities=probabilities_of(windows),
            fingerprints=(self.fingerprint,) * len(windows),
            version=self.version,
        )


def unavailable() -> ModelServerError:
    return ModelServerError("UNAVAILABLE", "connection refused", retriable=True)
