"""Model I/O behind a small Protocol, and the pure checks made on what the model server says.

No gRPC or TensorFlow import here: :mod:`services.inference.tfserving` turns TF Serving's
protos into these types, :mod:`services.inference.client` does the calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from services.inference.errors import ModelResponseError, StartupError
from shared.activities import NUM_CLASSES

#: The signature's tensor names (see services/training/export.py, which writes them).
INPUT_KEY = "window"
PROBABILITIES_KEY = "probabilities"
FINGERPRINT_KEY = "preprocessing_fingerprint"
WINDOW_SIZE = 128
NUM_CHANNELS = 9

#: TF Serving's ``ModelVersionStatus.State`` value of a version that serves requests.
AVAILABLE = "AVAILABLE"
#: States of a version on its way to AVAILABLE.
LOADING_STATES = frozenset({"START", "LOADING"})


@dataclass(frozen=True)
class ModelOutput:
    """What one Predict call returned for a batch of B windows."""

    #: (B, 6) float32 class probabilities, ACTIVITIES order.
    probabilities: npt.NDArray[np.float32]
    #: (B,) preprocessing fingerprint the model was trained on, per row.
    fingerprints: tuple[str, ...]
    #: The version that answered (resolves "newest" and version labels).
    version: int


@dataclass(frozen=True)
class VersionStatus:
    """One version of the model as ``GetModelStatus`` reports it."""

    version: int
    #: State name: START, LOADING, AVAILABLE, UNLOADING, END.
    state: str
    #: The version's status message ("" when OK), e.g. why loading failed.
    message: str = ""


@dataclass(frozen=True)
class TensorSpec:
    """A signature input or output: dtype name (``DT_FLOAT``) and shape (-1 unknown, None: any
    rank)."""

    dtype: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class Signature:
    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


class ModelIO(Protocol):
    """The three model-server calls the worker needs; the gRPC client and test fakes implement
    it. Failures raise :class:`services.inference.errors.ModelServerError`."""

    @property
    def target(self) -> str:
        """Where the model server is, for messages."""
        ...

    async def model_status(self) -> list[VersionStatus]: ...

    async def signature(self) -> Signature: ...

    async def predict(self, windows: npt.NDArray[np.float32]) -> ModelOutput: ...


def available_version(statuses: Sequence[VersionStatus]) -> int | None:
    """The newest AVAILABLE version, or None while none is."""
    versions = [s.version for s in statuses if s.state == AVAILABLE]
    return max(versions) if versions else None


def loading_versions(statuses: Sequence[VersionStatus]) -> list[int]:
    """The versions still being loaded (they may yet become AVAILABLE)."""
    return sorted(s.version for s in statuses if s.state in LOADING_STATES)


def describe_statuses(statuses: Sequence[VersionStatus]) -> str:
    if not statuses:
        return "no versions"
    return ", ".join(
        f"v{s.version} {s.state}" + (f" ({s.message})" if s.message else "") for s in statuses
    )


def check_signature(signature: Signature) -> None:
    """Refuse a signature other than the one the worker sends and reads (see the module
    constants): input ``window`` float32 (-1, 128, 9); outputs ``probabilities`` float32
    (-1, 6) and ``preprocessing_fingerprint`` string (-1,)."""
    problems = []
    expected = {
        ("input", INPUT_KEY): TensorSpec("DT_FLOAT", (-1, WINDOW_SIZE, NUM_CHANNELS)),
        ("output", PROBABILITIES_KEY): TensorSpec("DT_FLOAT", (-1, NUM_CLASSES)),
        ("output", FINGERPRINT_KEY): TensorSpec("DT_STRING", (-1,)),
    }
    for (kind, key), want in expected.items():
        tensors = signature.inputs if kind == "input" else signature.outputs
        got = tensors.get(key)
        if got is None:
            problems.append(f"no {kind} {key!r} (has {sorted(tensors)})")
        elif got.dtype != want.dtype or got.shape != want.shape:
            problems.append(
                f"{kind} {key!r} is {got.dtype} {got.shape}, expected {want.dtype} {want.shape}"
            )
    if problems:
        raise StartupError(f"signature {signature.name!r} does not fit: " + "; ".join(problems))


def check_output(output: ModelOutput, batch: int) -> None:
    """Raise :class:`ModelResponseError` unless ``output`` has one row per window sent."""
    if output.probabilities.shape != (batch, NUM_CLASSES):
        raise ModelResponseError(
            f"probabilities of shape {output.probabilities.shape} for {batch} windows"
        )
    if len(output.fingerprints) != batch:
        raise ModelResponseError(f"{len(output.fingerprints)} fingerprints for {batch} windows")
