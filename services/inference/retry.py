"""Which model-server failures to retry. Pure: no gRPC import, codes are names. How long to
wait between retries is :class:`services.common.kafka.backoff.BackoffPolicy`."""

from __future__ import annotations

#: gRPC status codes (names) of a transient condition: the server is down, overloaded or
#: slow, a retry is expected to cure it.
RETRIABLE_CODES: frozenset[str] = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
)
#: The only status that can be caused by the windows of a Predict request: the batch is
#: bisected to find the bad windows, which go to the dead-letter topic. Every other status
#: (NOT_FOUND while a version is unloaded in a rollout, FAILED_PRECONDITION, INTERNAL,
#: UNKNOWN, CANCELLED, UNIMPLEMENTED, ...) concerns the model or server as a whole: dead-
#: lettering the windows would turn the stream into dead letters, so Predict retries them
#: with backoff like UNAVAILABLE (an operator must fix the server; nothing is lost).
REQUEST_CODES: frozenset[str] = frozenset({"INVALID_ARGUMENT"})


def is_retriable(code: str) -> bool:
    """Whether gRPC status ``code`` (name) is transient (the server is down, overloaded or
    slow). Start-up waits on these only; Predict retries every code that
    :func:`concerns_whole_model`."""
    return code in RETRIABLE_CODES


def concerns_whole_model(code: str) -> bool:
    """Whether a Predict that failed with gRPC status ``code`` (name) failed because of the
    model or server rather than the windows sent: retry the batch, do not dead-letter it."""
    return code not in REQUEST_CODES
