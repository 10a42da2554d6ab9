"""Judging and counting fuzz answers. Pure.

The invariants checked for every request, whatever it was:

- no 5xx answer;
- every refusal (4xx) is ``application/problem+json`` whose ``status`` matches the answer
  and whose ``reason`` is a non-empty string;
- a 202 names the device and seq it accepted (they are matched against the raw topic);
- a batch answer (202 or 207 from ``POST /v1/packets:batch``) holds one result per packet
  in order, counts them right, and each result is either accepted (202, naming its device
  and seq: matched against the raw topic too) or a refusal with a problem document's
  members, never a 5xx;
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
    #: A batch answer: (device_id, seq) of each accepted packet, and each refused packet's
    #: reason.
    accepted_many: tuple[tuple[str, int], ...] = ()
    reasons: tuple[str, ...] = ()

    @property
    def accepted_any(self) -> bool:
        return self.accepted is not None or bool(self.accepted_many)


def judge(  # noqa: PLR0911 - one return per verdict
    category: str, response: RawResponse | None, expects_response: bool
) -> Outcome:
    """Check one answer against the invariants."""
    if response is None:
        return Outcome(category, None, "no answer" if expects_response else None)
    status = response.status
    if status >= 500:
        return Outcome(category, status, f"server error {status}: {response.body[:200]!r}")
    batch = _batch_answer(response.body) if status in (202, 207) else None
    if batch is not None or status == 207:
        return judge_batch(category, status, batch)
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


def _batch_answer(body: bytes) -> dict[str, object] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) and "results" in document else None


def judge_batch(  # noqa: PLR0911 - one return per verdict
    category: str, status: int, answer: dict[str, object] | None
) -> Outcome:
    """Check a batch answer (see the module docstring)."""
    if answer is None:
        return Outcome(category, status, f"{status} without a batch answer")
    results = answer["results"]
    if not isinstance(results, list):
        return Outcome(category, status, f"{status} results is not a list: {results!r:.120}")
    accepted: list[tuple[str, int]] = []
    reasons: list[str] = []
    for position, item in enumerate(results):
        if not isinstance(item, dict) or item.get("index") != position:
            return Outcome(category, status, f"result {position} out of order: {item!r:.120}")
        item_status = item.get("status")
        if item_status == 202:
            device_id, seq = item.get("device_id"), item.get("seq")
            if not isinstance(device_id, str) or type(seq) is not int:
                return Outcome(category, status, f"accepted result without device/seq: {item}")
            accepted.append((device_id, seq))
            continue
        if not isinstance(item_status, int) or not 400 <= item_status < 600:
            return Outcome(category, status, f"result {position} status {item_status!r}")
        if item_status >= 500:
            return Outcome(category, status, f"server error {item_status} for packet {position}")
        reason = item.get("reason")
        if (
            not isinstance(reason, str)
            or not reason
            or not all(isinstance(item.get(k), str) for k in ("type", "title", "detail"))
        ):
            return Outcome(category, status, f"result {position} is no problem: {item!r:.160}")
        reasons.append(reason)
    counts = (answer.get("accepted"), answer.get("refused"))
    if counts != (len(accepted), len(reasons)):
        return Outcome(category, status, f"counts {counts} for {len(results)} results")
    if (status == 202) != (not reasons):
        return Outcome(category, status, f"{status} with {len(reasons)} refused packets")
    return Outcome(category, status, accepted_many=tuple(accepted), reasons=tuple(reasons))


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
        for reason in outcome.reasons:
            count.reasons[reason] += 1
        if outcome.accepted is not None:
            self.accepted[outcome.accepted] += 1
        for accepted in outcome.accepted_many:
            self.accepted[accepted] += 1
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
