"""The pipeline page's figures, from the services' own Prometheus metrics. Pure: the text of
each ``/metrics`` scrape comes in, figures go out.

Rates and latency percentiles are taken between two scrapes (the previous one is kept by
the caller), so they describe the last few seconds, not the process's whole life; the
first scrape gives totals only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

#: Counters that measure each stage's throughput (summed over labels), per second.
THROUGHPUT = {
    "harstream_ingest_packets_total": "packets accepted",
    "harstream_ingest_samples_total": "samples accepted",
    "harstream_windows_emitted_total": "windows emitted",
    "harstream_predictions_total": "predictions",
    "harstream_alerting_predictions_total": "predictions judged",
}
LATENCY = "harstream_end_to_end_latency_seconds"
DEAD_LETTERS = "harstream_dead_letters_total"
#: Seconds by which predictions trail device traffic (alerting's view of consumer lag).
PIPELINE_DELAY = "harstream_alerting_pipeline_delay_seconds"
PARTITIONS = (
    "harstream_inference_partitions_assigned",
    "harstream_alerting_partitions_assigned",
)


@dataclass(frozen=True)
class Scrape:
    """One service's samples: name → [(labels, value)], and when it was taken."""

    at: float
    samples: dict[str, list[tuple[dict[str, str], float]]]
    #: Metric families present, with or without samples (a labelled counter that never
    #: counted has none: zero, not unknown).
    families: frozenset[str] = frozenset()

    def total(self, name: str) -> float | None:
        rows = self.samples.get(name)
        return None if rows is None else sum(v for _, v in rows)


def parse(text: str, at: float) -> Scrape:
    """A scrape of Prometheus text; ValueError if it is not that format."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return Scrape(at, samples, frozenset(families))


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of cumulative histogram ``buckets`` [(le, count)], interpolated
    linearly within a bucket (what PromQL's histogram_quantile does)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return None


def _buckets(scrape: Scrape, name: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for labels, value in scrape.samples.get(f"{name}_bucket", []):
        le = float(labels.get("le", "nan"))
        out[le] = out.get(le, 0.0) + value
    return out


def latency(current: Scrape, previous: Scrape | None) -> dict[str, Any] | None:
    """p50/p99 of the end-to-end latency histogram since ``previous`` (or since start)."""
    now = _buckets(current, LATENCY)
    if not now:
        return None
    before = _buckets(previous, LATENCY) if previous is not None else {}
    delta = [(le, count - before.get(le, 0.0)) for le, count in now.items()]
    window = "since the last refresh"
    if not delta or max(c for _, c in delta) <= 0:
        delta, window = list(now.items()), "since start"
    return {
        "p50_s": _quantile(delta, 0.5),
        "p99_s": _quantile(delta, 0.99),
        "count": max(c for _, c in delta),
        "window": window,
    }


def summarize(name: str, current: Scrape, previous: Scrape | None) -> dict[str, Any]:
    """The figures of one service's scrape."""
    dt = current.at - previous.at if previous is not None else 0.0
    throughput = {}
    for metric, label in THROUGHPUT.items():
        total = current.total(metric)
        if total is None:
            continue
        rate = None
        if previous is not None and dt > 0:
            before = previous.total(metric)
            if before is not None and total >= before:
                rate = (total - before) / dt
        throughput[label] = {"total": total, "per_s": rate}
    versions = {
        labels.get("model") or labels.get("version") or metric: value
        for metric, rows in current.samples.items()
        if metric.endswith("model_version")
        for labels, value in rows
    }
    delay = current.total(PIPELINE_DELAY)
    partitions = next((v for m in PARTITIONS if (v := current.total(m)) is not None), None)
    return {
        "service": name,
        "up": True,
        "throughput": throughput,
        "latency": latency(current, previous),
        "dead_letters": _dead_letters(current),
        "model_versions": {k: int(v) for k, v in versions.items()},
        "pipeline_delay_s": delay,
        "partitions_assigned": partitions,
    }


def _dead_letters(scrape: Scrape) -> float | None:
    """Dead letters sent by the service; None if it has no dead-letter counter at all."""
    total = scrape.total(DEAD_LETTERS)
    if total is None and DEAD_LETTERS.removesuffix("_total") in scrape.families:
        return 0.0
    return total


def unreachable(name: str, reason: str) -> dict[str, Any]:
    return {"service": name, "up": False, "error": reason}
