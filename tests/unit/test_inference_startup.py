"""Start-up checks against a fake model server."""

from __future__ import annotations

import asyncio

import pytest

from services.inference.errors import ModelServerError, StartupError
from services.inference.model import Signature, TensorSpec, VersionStatus, check_signature
from services.inference.startup import check_model, wait_until_available
from tests.unit.inference_helpers import FINGERPRINT, GOOD_SIGNATURE, FakeModel, unavailable


def _check(model: FakeModel, timeout_s: float = 5.0) -> int:
    return asyncio.run(check_model(model, "har", FINGERPRINT, timeout_s, poll_s=0.001))


def test_waits_while_unreachable_and_loading_then_passes() -> None:
    model = FakeModel(
        version=2,
        status_script=[
            unavailable(),
            [VersionStatus(2, "LOADING")],
            [VersionStatus(1, "AVAILABLE"), VersionStatus(2, "AVAILABLE")],
        ],
    )
    assert _check(model) == 2
    assert model.status_calls == 3
    assert model.predict_batches == [1]  # the probe


def test_newest_available_version_wins() -> None:
    statuses = [
        VersionStatus(1, "AVAILABLE"),
        VersionStatus(3, "AVAILABLE"),
        VersionStatus(4, "LOADING"),
    ]
    assert asyncio.run(wait_until_available(FakeModel(status_script=[statuses]), "har", 1.0)) == 3


def test_unknown_model_fails_at_once_with_a_clear_message() -> None:
    missing = ModelServerError("NOT_FOUND", "Could not find any versions of model nope", False)
    model = FakeModel(status_script=[missing])
    with pytest.raises(StartupError, match=r"fake:8500 does not serve model 'har'"):
        _check(model, timeout_s=60)
    assert model.status_calls == 1


def test_gives_up_after_the_timeout() -> None:
    model = FakeModel(status_script=[[VersionStatus(1, "LOADING", "loading variables")]])
    with pytest.raises(StartupError, match=r"not AVAILABLE .* v1 LOADING \(loading variables\)"):
        _check(model, timeout_s=0.05)
    assert model.status_calls >= 2


def stable_not_served() -> ModelServerError:
    return ModelServerError("NOT_FOUND", "Servable not found for request: Specific(har, 1)", False)


def test_waits_while_the_labelled_version_loads_after_a_newer_one() -> None:
    """TF Serving loads versions in any order and GetModelStatus cannot resolve a label:
    the worker labelled ``stable`` (v1) sees v2 AVAILABLE first, and waits for v1."""
    model = FakeModel(
        version=1,
        status_script=[
            [VersionStatus(1, "LOADING"), VersionStatus(2, "AVAILABLE")],
            [VersionStatus(1, "LOADING"), VersionStatus(2, "AVAILABLE")],
            [VersionStatus(1, "AVAILABLE"), VersionStatus(2, "AVAILABLE")],
        ],
        signature_failures=[stable_not_served(), unavailable()],
    )
    assert _check(model) == 1
    assert model.status_calls == 2  # the start-up wait, then one look after the NOT_FOUND
    assert model.signature_failures == []


def test_a_version_that_will_not_come_fails_at_once() -> None:
    """NOT_FOUND with nothing left loading: the label names a version that failed to load
    or is not on disk; waiting would only hide it for the whole start-up timeout."""
    model = FakeModel(
        status_script=[[VersionStatus(1, "END", "cannot load"), VersionStatus(2, "AVAILABLE")]],
        signature_failures=[stable_not_served()],
    )
    with pytest.raises(StartupError, match=r"cannot read the signature .*Specific\(har, 1\)"):
        _check(model, timeout_s=60)
    assert model.status_calls == 2


def test_gives_up_on_the_labelled_version_after_the_timeout() -> None:
    model = FakeModel(
        status_script=[[VersionStatus(1, "LOADING"), VersionStatus(2, "AVAILABLE")]],
        signature_failures=[stable_not_served()] * 1000,
    )
    with pytest.raises(StartupError, match=r"cannot read the signature"):
        _check(model, timeout_s=0.05)
    assert model.status_calls >= 3


def test_refuses_a_model_trained_on_other_preprocessing() -> None:
    with pytest.raises(StartupError) as info:
        _check(FakeModel(fingerprint="0123456789abcdef"))
    assert "'0123456789abcdef'" in str(info.value) and repr(FINGERPRINT) in str(info.value)


def test_refuses_a_signature_that_does_not_fit() -> None:
    wrong = Signature(
        "serving_default",
        inputs={"keras_tensor": TensorSpec("DT_FLOAT", (-1, 128, 9))},
        outputs={"output_0": TensorSpec("DT_FLOAT", (-1, 6))},
    )
    with pytest.raises(StartupError, match="no input 'window'"):
        _check(FakeModel(signature=wrong))


def test_check_signature_compares_dtype_and_shape() -> None:
    check_signature(GOOD_SIGNATURE)
    bad = Signature(
        "serving_default",
        inputs={"window": TensorSpec("DT_FLOAT", (-1, 64, 9))},
        outputs={
            "probabilities": TensorSpec("DT_FLOAT", (-1, 5)),
            "preprocessing_fingerprint": TensorSpec("DT_STRING", (-1,)),
        },
    )
    with pytest.raises(
        StartupError, match=r"input 'window' is DT_FLOAT \(-1, 64, 9\).*'probabilities'"
    ):
        check_signature(bad)
