"""The fuzz run's figures as a console table and as ``reports/fuzz.md``. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from services.fuzz.poison import by_topic_and_kind
from services.fuzz.runner import HttpResult, TopicsResult


@dataclass(frozen=True)
class RunInfo:
    command: str
    seed: int
    started_at: str
    seconds: float


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _status_class(statuses: dict[str, int], low: int, high: int) -> int:
    return sum(n for s, n in statuses.items() if s.isdigit() and low <= int(s) < high)


def http_section(result: HttpResult) -> list[str]:
    tally = result.tally
    rows = []
    for name, count in tally.categories.items():
        statuses = dict(count.statuses)
        top = ", ".join(f"{s}×{n}" for s, n in count.statuses.most_common(4))
        rows.append(
            [
                name,
                str(count.requests),
                str(_status_class(statuses, 200, 300)),
                str(_status_class(statuses, 400, 500)),
                str(_status_class(statuses, 500, 600)),
                str(statuses.get("no answer", 0)),
                str(count.failures),
                top,
            ]
        )
    lines = [
        "## HTTP requests against ingest",
        "",
        f"{tally.requests} requests in {result.seconds:.0f} s.",
        "",
        *_table(
            ["category", "requests", "2xx", "4xx", "5xx", "no answer", "failures", "statuses"],
            rows,
        ),
        "",
        *_table(
            ["invariant", "count"],
            [
                ["responses 5xx", str(tally.server_errors)],
                [
                    "refusals not application/problem+json with a reason",
                    str(tally.non_problem_refusals),
                ],
                [
                    "requests without an answer (client did not hang up)",
                    str(_unexpected_silence(result)),
                ],
                ["Kafka records for refused requests", str(result.refused_records)],
                ["accepted (202) packets missing from Kafka", str(result.missing_records)],
                ["schemathesis check failures", str(sum(result.schemathesis_failures.values()))],
            ],
        ),
        "",
        "Status codes: " + ", ".join(f"{s} ×{n}" for s, n in sorted(tally.status_totals().items())),
        "",
        f"Accepted packets (202): {sum(tally.accepted.values())}, raw-topic records of them: "
        f"{sum(result.on_topic.values())} (a replayed packet accepted again is written again; "
        "the preprocess worker drops the duplicate by seq).",
        "",
        f"schemathesis (from ingest's /openapi.json, positive and negative cases): "
        f"{result.schemathesis_cases} sent, {result.schemathesis_unsendable} the HTTP client "
        f"refused to send; failed checks: {dict(result.schemathesis_failures) or 'none'}.",
        "",
        "Health after the run: "
        + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in result.health.items()),
    ]
    if tally.examples:
        lines += ["", "Failing requests (first ones):", ""]
        lines += [f"- `{example}`" for example in tally.examples]
    return lines


def _unexpected_silence(result: HttpResult) -> int:
    return sum(
        count.statuses.get("no answer", 0)
        for name, count in result.tally.categories.items()
        if name != "disconnect"
    )


def topics_section(result: TopicsResult) -> list[str]:
    rows = []
    for topic, kind, produced, dead in by_topic_and_kind(result.deliveries):
        services = sorted(
            {s for d in result.deliveries if d.record.topic == topic and d.record.kind == kind
             for s, _ in d.dead_letters}
        )  # fmt: skip
        rows.append([topic, kind, str(produced), str(dead), ", ".join(services) or "-"])
    lines = [
        "## Poison records on the workers' topics",
        "",
        f"{len(result.deliveries)} records produced in {result.seconds:.0f} s (with the valid "
        "traffic before and after).",
        "",
        *_table(["topic", "kind", "produced", "dead-lettered", "by"], rows),
        "",
        "Dead letters on the DLQ topic by source topic (the whole run): "
        + (", ".join(f"{t} ×{n}" for t, n in sorted(result.dlq_by_topic.items())) or "none"),
        "",
        *[
            f"Workers running after the {stage} stage: "
            + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in alive.items())
            for stage, alive in result.workers_alive.items()
        ],
        "",
        f"Valid traffic: predictions for a device sent before the poison: "
        f"{result.predictions_before}; for a device sent after it: {result.predictions_after}.",
    ]
    if result.unproduced:
        lines += [
            "",
            f"Not produced (the broker or client refused them): {dict(result.unproduced)}",
        ]
    if result.missing:
        lines += ["", "Not dead-lettered:", ""]
        lines += [
            f"- {d.record.topic} {d.record.kind} @{d.partition}:{d.offset} key={d.record.key!r:.40}"
            for d in result.missing[:20]
        ]
    return lines


def markdown(info: RunInfo, http: HttpResult | None, topics: TopicsResult | None) -> str:
    verdict = all(r.ok for r in (http, topics) if r is not None)
    lines = [
        "# Fuzz run",
        "",
        f"`{info.command}` (seed {info.seed}), started {info.started_at}, "
        f"{info.seconds:.0f} s: **{'all invariants held' if verdict else 'FAILURES'}**.",
        "",
        "Against the whole local pipeline (`services/demo/pipeline.py`: Tansu, model server, "
        "ingest, preprocess, inference, alerting as processes), ingest with its production "
        "limits except the per-address limit on failed authentications, lifted so that "
        "hostile requests reach the parser and validators (that limit answers 429 and is "
        "tested in `tests/integration/test_security_listeners.py`). "
        "Regenerate with `harstream fuzz`.",
        "",
    ]
    if http is not None:
        lines += [*http_section(http), ""]
    if topics is not None:
        lines += [*topics_section(topics), ""]
    return "\n".join(lines)
