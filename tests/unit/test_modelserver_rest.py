"""Request parsing of the development model server's REST API (pure parts)."""

from __future__ import annotations

import pytest

from services.modelserver.errors import InvalidArgumentError
from services.modelserver.rest import MODEL_PATH, content_length, json_input


@pytest.mark.parametrize(("header", "expected"), [(None, 0), ("0", 0), ("42", 42), (" 7 ", 7)])
def test_content_length_accepted(header: str | None, expected: int) -> None:
    assert content_length(header) == expected


@pytest.mark.parametrize("header", ["", "abc", "-1", "+5", "1_0", "4.0", "²", "9" * 19])
def test_content_length_refused(header: str) -> None:
    # int() raised on some (dropping the connection) and accepted "-1" (read to EOF).
    assert content_length(header) is None


@pytest.mark.parametrize(
    ("value", "dtype"), [(10**400, "float32"), ([[10**400]], "float32"), ([2**40], "int32")]
)
def test_json_input_out_of_range_is_invalid_argument(value: object, dtype: str) -> None:
    with pytest.raises(InvalidArgumentError, match="tensor"):
        json_input(value, dtype, "window")


def test_version_beyond_int64_is_not_a_model_path() -> None:
    assert MODEL_PATH.match("/v1/models/har/versions/123456789012345678")
    assert MODEL_PATH.match("/v1/models/har/versions/" + "9" * 19) is None
    assert MODEL_PATH.match("/v1/models/har/versions/\u0663") is None  # Arabic-Indic 3
