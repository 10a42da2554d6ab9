"""Checks a Predict request against a signature, the way TF Serving does (pure: numpy only).

A signature is described by :class:`SignatureSpec` (built from the SavedModel's SignatureDef
by the loader), so these checks run in unit tests without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np

from services.modelserver.errors import InvalidArgumentError

DEFAULT_SIGNATURE = "serving_default"
STRING = "string"  # the dtype name of DT_STRING tensors (numpy holds them as object arrays)


class TensorSpec(NamedTuple):
    """One input or output of a signature."""

    dtype: str
    """numpy dtype name (``"float32"``, ``"int64"``…) or ``"string"``."""
    shape: tuple[int, ...] | None
    """Dimensions with -1 for "any size"; ``None`` when even the rank is unknown."""


class SignatureSpec(NamedTuple):
    """Input and output names of one signature, with their dtypes and shapes."""

    name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]


def dtype_name(array: np.ndarray) -> str:
    """The :class:`TensorSpec` dtype name of an array (bytes/str/object arrays are strings)."""
    return STRING if array.dtype.kind in "OSU" else array.dtype.name


def shape_text(shape: Iterable[int] | None) -> str:
    return "<unknown rank>" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def shape_matches(actual: tuple[int, ...], expected: tuple[int, ...] | None) -> bool:
    if expected is None:
        return True
    if len(actual) != len(expected):
        return False
    return all(e < 0 or a == e for a, e in zip(actual, expected, strict=True))


def resolve_signature(signatures: Mapping[str, SignatureSpec], name: str) -> SignatureSpec:
    """The signature a request names; empty means ``serving_default`` (as TF Serving)."""
    key = name or DEFAULT_SIGNATURE
    try:
        return signatures[key]
    except KeyError:
        raise InvalidArgumentError(
            f'Serving signature name: "{key}" not found in signature def'
        ) from None


def validate_inputs(signature: SignatureSpec, inputs: Mapping[str, np.ndarray]) -> None:
    """Raise :class:`InvalidArgumentError` unless ``inputs`` has exactly the signature's input
    names, each with its dtype and a compatible shape, and all sharing one batch size."""
    sent, expected = set(inputs), set(signature.inputs)
    if sent != expected:
        raise InvalidArgumentError(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({_names(sent)}) != len({_names(expected)}). "
            f"Sent extra: {_names(sent - expected)}. "
            f"Missing but required: {_names(expected - sent)}."
        )
    batch_sizes: set[int] = set()
    for position, name in enumerate(sorted(expected)):
        spec, array = signature.inputs[name], inputs[name]
        actual_dtype = dtype_name(array)
        if actual_dtype != spec.dtype:
            raise InvalidArgumentError(
                f"Expects arg[{position}] ({name!r}) to be {spec.dtype} "
                f"but {actual_dtype} is provided"
            )
        if not shape_matches(array.shape, spec.shape):
            raise InvalidArgumentError(
                f"input {name!r} has shape {shape_text(array.shape)} but the signature "
                f"expects {shape_text(spec.shape)}"
            )
        if spec.shape and spec.shape[0] < 0 and array.ndim:
            batch_sizes.add(array.shape[0])
    if len(batch_sizes) > 1:
        raise InvalidArgumentError(
            f"inputs have different batch sizes {sorted(batch_sizes)}; all must agree"
        )


def select_outputs(signature: SignatureSpec, output_filter: Iterable[str]) -> list[str]:
    """Output names to return: the filter (in request order, duplicates dropped) or all."""
    wanted = list(dict.fromkeys(output_filter))
    if not wanted:
        return sorted(signature.outputs)
    for name in wanted:
        if name not in signature.outputs:
            raise InvalidArgumentError(
                f"output tensor alias not found in signature: {name} "
                f"Outputs expected to be in the set {_names(signature.outputs)}."
            )
    return wanted


def _names(names: Iterable[str]) -> str:
    return "{" + ",".join(sorted(names)) + "}"
