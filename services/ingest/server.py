"""What ingest's listeners answer themselves: the common server
(:mod:`services.common.http_server`: parser refusals, header/body/keep-alive deadlines, a
connection cap, the failed-authentication screen at accept) writes these documents, in the
format of ingest's handlers (:mod:`services.ingest.problems`)."""

from __future__ import annotations

from services.ingest.schemas import problem_fields


def problem_document(status: int, reason: str, detail: str) -> dict[str, object]:
    """Ingest's problem document for an answer the listener writes itself (no field
    errors: no handler has looked at the request)."""
    return problem_fields(status, reason, detail)
