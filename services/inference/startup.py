"""Start-up checks against the model server, through :class:`ModelIO` (no gRPC here).

1. ``GetModelStatus`` until a version is AVAILABLE (retrying while the server is
   unreachable or loading, up to a timeout);
2. ``GetModelMetadata``: the signature takes and returns what the worker sends and reads.
   The version the worker's model spec selects may not be AVAILABLE yet even though another
   one is: TF Serving loads versions in any order, and GetModelStatus cannot resolve a
   version label (``stable`` may name v1 while v2 loaded first). So NOT_FOUND is waited
   out, within the same timeout, while some version is still loading;
3. one ``Predict`` of a zero window: the model was trained on this pipeline's preprocessing
   (same fingerprint), else the worker refuses to start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from services.inference.errors import ModelResponseError, ModelServerError, StartupError
from services.inference.model import (
    NUM_CHANNELS,
    WINDOW_SIZE,
    ModelIO,
    Signature,
    VersionStatus,
    available_version,
    check_output,
    check_signature,
    describe_statuses,
    loading_versions,
)

logger = logging.getLogger(__name__)


async def wait_until_available(
    model: ModelIO,
    model_name: str,
    timeout_s: float,
    poll_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """The newest AVAILABLE version, waiting up to ``timeout_s`` for one.

    NOT_FOUND (the server does not know the model, or the pinned version) fails at once: a
    misconfigured name does not cure itself, and failing fast makes it obvious.
    """
    deadline = clock() + timeout_s
    last = "no answer yet"
    while True:
        statuses: list[VersionStatus] = []
        try:
            statuses = await model.model_status()
        except ModelServerError as exc:
            if exc.code == "NOT_FOUND":
                raise StartupError(
                    f"model server {model.target} does not serve model {model_name!r} "
                    f"(or the requested version): {exc}"
                ) from exc
            if not exc.retriable:
                raise StartupError(
                    f"GetModelStatus of {model_name!r} on {model.target} failed: {exc}"
                ) from exc
            last = str(exc)
        else:
            version = available_version(statuses)
            if version is not None:
                return version
            last = describe_statuses(statuses)
        if clock() >= deadline:
            raise StartupError(
                f"model {model_name!r} not AVAILABLE on {model.target} within "
                f"{timeout_s:.0f} s (last: {last})"
            )
        logger.info("waiting for model %s on %s: %s", model_name, model.target, last)
        await asyncio.sleep(poll_s)


async def served_signature(
    model: ModelIO,
    model_name: str,
    deadline: float,
    poll_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> Signature:
    """The signature of the version the worker's spec selects, waiting until ``deadline``
    while that version is not served yet (NOT_FOUND) but some version is still loading, or
    while the server is unreachable. NOT_FOUND with nothing left loading fails at once: the
    pinned version or the label's version will not come."""
    while True:
        try:
            return await model.signature()
        except ModelResponseError as exc:
            raise StartupError(f"cannot read the signature of {model_name!r}: {exc}") from exc
        except ModelServerError as exc:
            waiting_for = await _why_wait(model, exc)
            if waiting_for is None or clock() >= deadline:
                raise StartupError(f"cannot read the signature of {model_name!r}: {exc}") from exc
        logger.info("waiting for the signature of %s: %s", model_name, waiting_for)
        await asyncio.sleep(poll_s)


async def _why_wait(model: ModelIO, failure: ModelServerError) -> str | None:
    """Why a failed GetModelMetadata may yet succeed, or None if it will not."""
    if failure.retriable:
        return str(failure)
    if failure.code != "NOT_FOUND":
        return None
    try:
        loading = loading_versions(await model.model_status())
    except ModelServerError as exc:
        return str(exc) if exc.retriable else None
    if not loading:
        return None
    return f"{failure} (still loading: {', '.join(f'v{v}' for v in loading)})"


async def check_model(
    model: ModelIO,
    model_name: str,
    expected_fingerprint: str,
    timeout_s: float,
    poll_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run the start-up checks; return the version that answered the probe Predict.

    Raises:
        StartupError: with a message naming what is wrong; the worker must exit non-zero.
    """
    deadline = clock() + timeout_s
    await wait_until_available(model, model_name, timeout_s, poll_s, clock)
    check_signature(await served_signature(model, model_name, deadline, poll_s, clock))
    try:
        output = await model.predict(np.zeros((1, WINDOW_SIZE, NUM_CHANNELS), dtype=np.float32))
        check_output(output, 1)
    except (ModelServerError, ModelResponseError) as exc:
        raise StartupError(f"probe Predict of {model_name!r} failed: {exc}") from exc
    served = output.fingerprints[0]
    if served != expected_fingerprint:
        raise StartupError(
            f"model {model_name!r} v{output.version} on {model.target} was trained on "
            f"preprocessing fingerprint {served!r}, but this pipeline's windows carry "
            f"{expected_fingerprint!r}: refusing to start (retrain/export the model for this "
            "preprocessing, or serve the matching version)"
        )
    return output.version
