"""Judging and counting fuzz answers. Pure.

The invariants checked for every request, whatever it was:

- no 5xx answer;
- every refusal (4xx) is ``application/problem+json`` whose ``status`` matches the answer
  and whose ``reason`` is a non-empty string;
- a 202 names the device and seq it accepted (they are matched against the raw topic);
- an answer is given unless the client hung up on purpose.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from services.fuzz.rawhttp import RawResponse

PROBLEM = "application/problem+json"
#: How many failing requests are kept as examples for the report.
MAX_EXAMPLES = 10


@dataclass(frozen=True)
class Outcome:
    category: str
    #: None: no answer (the connection closed or timed out first).
    status: int | None
    #: Why the answer breaks an invariant, or None.
    failure: str | None = None
    #: (device_id, seq) of an accepted packet.
    accepted: tuple[str, int] | None = None
    #: The problem document's reason, for refusals.
    reason: str | None = None


def judge(  # noqa: PLR0911 - one return per verdict
    category: str, response: RawResponse | None, expects_response: bool
) -> Outcome:
    """Check one answer against the invariants."""
    if response is None:
        return Outcome(category, None, "no answer" if expects_response else None)
    status = response.status
    if status >= 500:
        return Outcome(category, status, f"server error {status}: {response.body[:200]!r}")
    if status == 202:
        try:
            body = json.loads(response.body)
            accepted = (str(body["device_id"]), int(body["seq"]))
        except (ValueError, KeyError, TypeError):
            return Outcome(category, status, f"202 without device_id/seq: {response.body[:200]!r}")
        return Outcome(category, status, accepted=accepted)
    if status < 400:
        return Outcome(category, status)
    if response.content_type != PROBLEM:
        return Outcome(
            category, status, f"{status} as {response.content_type or 'no content type'}, "
            f"not {PROBLEM}: {response.body[:120]!r}"
        )  # fmt: skip
    try:
        problem = json.loads(response.body)
        reason = problem["reason"]
        same_status = problem["status"] == status
    except (ValueError, KeyError, TypeError):
        return Outcome(
            category, status, f"{status} problem document unreadable: {response.body[:120]!r}"
        )
    if not isinstance(reason, str) or not reason or not same_status:
        return Outcome(category, status, f"{status} problem without a reason or status: {problem}")
    return Outcome(category, status, reason=reason)


@dataclass
class CategoryCount:
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    failures: int = 0


@dataclass
class Tally:
    """Everything counted over a fuzz run's requests."""

    categories: dict[str, CategoryCount] = field(default_factory=dict)
    accepted: Counter[tuple[str, int]] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    _non_problem: int = 0

    def add(self, outcome: Outcome, request: bytes = b"") -> None:
        count = self.categories.setdefault(outcome.category, CategoryCount())
        count.requests += 1
        count.statuses["no answer" if outcome.status is None else str(outcome.status)] += 1
        if outcome.reason:
            count.reasons[outcome.reason] += 1
        if outcome.accepted is not None:
            self.accepted[outcome.accepted] += 1
        if outcome.failure is not None:
            count.failures += 1
            if outcome.status is not None and 400 <= outcome.status < 500:
                self._non_problem += 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append(f"[{outcome.category}] {outcome.failure} <- {request[:160]!r}")

    @property
    def requests(self) -> int:
        return sum(c.requests for c in self.categories.values())

    @property
    def failures(self) -> int:
        return sum(c.failures for c in self.categories.values())

    def status_totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for count in self.categories.values():
            total.update(count.statuses)
        return total

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.status_totals().items() if s.isdigit() and int(s) >= 500)

    @property
    def refusals(self) -> int:
        return sum(n for s, n in self.status_totals().items() if s.isdigit() and int(s) >= 400)

    @property
    def non_problem_refusals(self) -> int:
        """4xx answers that were not a valid problem document with a reason."""
        return self._non_problem

    @property
    def no_answer(self) -> int:
        return self.status_totals()["no answer"]


def kafka_mismatch(
    accepted: Counter[tuple[str, int]], on_topic: Counter[tuple[str, int]]
) -> tuple[int, int]:
    """(records on the topic that no 202 accounts for, 202s whose record is missing), both
    as multisets: a packet accepted twice (a replay) must be there twice."""
    extra = on_topic - accepted
    missing = accepted - on_topic
    return sum(extra.values()), sum(missing.values())
