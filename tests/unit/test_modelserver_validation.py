"""Predict request checks against a signature description (no TF)."""

from __future__ import annotations

import numpy as np
import pytest

from services.modelserver.errors import Code, InvalidArgumentError
from services.modelserver.validation import (
    SignatureSpec,
    TensorSpec,
    resolve_signature,
    select_outputs,
    validate_inputs,
)

SIGNATURE = SignatureSpec(
    "serving_default",
    {"window": TensorSpec("float32", (-1, 128, 9))},
    {
        "probabilities": TensorSpec("float32", (-1, 6)),
        "preprocessing_fingerprint": TensorSpec("string", (-1,)),
    },
)
TWO_INPUTS = SignatureSpec(
    "pair",
    {"a": TensorSpec("float32", (-1, 2)), "b": TensorSpec("string", (-1,))},
    {"out": TensorSpec("float32", (-1,))},
)


def window(batch: int = 2, dtype: type = np.float32) -> np.ndarray:
    return np.zeros((batch, 128, 9), dtype=dtype)


def test_valid_inputs_pass() -> None:
    validate_inputs(SIGNATURE, {"window": window(64)})
    validate_inputs(SIGNATURE, {"window": window(0)})
    strings = np.array([b"x", b"y"], dtype=object)
    validate_inputs(TWO_INPUTS, {"a": np.zeros((2, 2), np.float32), "b": strings})
    any_rank = SignatureSpec("any", {"x": TensorSpec("int64", None)}, {})
    validate_inputs(any_rank, {"x": np.zeros((3, 4, 5), np.int64)})


def test_missing_and_extra_names_are_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        validate_inputs(SIGNATURE, {"x": window()})
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert "Sent extra: {x}. Missing but required: {window}." in caught.value.message
    with pytest.raises(InvalidArgumentError, match=r"Sent extra: \{x\}"):
        validate_inputs(SIGNATURE, {"window": window(), "x": window()})
    with pytest.raises(InvalidArgumentError, match=r"Missing but required: \{window\}"):
        validate_inputs(SIGNATURE, {})


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (window(dtype=np.float64), "to be float32 but float64"),
        (np.array([[b"a"]], dtype=object), "to be float32 but string"),
        (np.zeros((2, 128, 8), np.float32), r"shape \[2, 128, 8\].*\[-1, 128, 9\]"),
        (np.zeros((128, 9), np.float32), r"shape \[128, 9\]"),
        (np.zeros((1, 1, 128, 9), np.float32), "expects"),
    ],
)
def test_wrong_dtype_or_shape_is_invalid_argument(array: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        validate_inputs(SIGNATURE, {"window": array})


def test_inputs_must_share_a_batch_size() -> None:
    with pytest.raises(InvalidArgumentError, match="batch sizes"):
        validate_inputs(
            TWO_INPUTS,
            {
                "a": np.zeros((3, 2), np.float32),
                "b": np.array([b"x"], dtype=object),
            },
        )


def test_output_filter() -> None:
    assert select_outputs(SIGNATURE, []) == ["preprocessing_fingerprint", "probabilities"]
    assert select_outputs(SIGNATURE, ["probabilities", "probabilities"]) == ["probabilities"]
    with pytest.raises(InvalidArgumentError, match=r"output tensor alias not found.*logits"):
        select_outputs(SIGNATURE, ["probabilities", "logits"])


def test_signature_resolution() -> None:
    signatures = {"serving_default": SIGNATURE, "pair": TWO_INPUTS}
    assert resolve_signature(signatures, "") is SIGNATURE
    assert resolve_signature(signatures, "pair") is TWO_INPUTS
    with pytest.raises(InvalidArgumentError, match='Serving signature name: "nope" not found'):
        resolve_signature(signatures, "nope")
