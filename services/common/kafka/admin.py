"""kafka-python's admin client, without the I/O thread it leaks when it cannot bootstrap.

``KafkaAdminClient.__init__`` (kafka-python 3.0.12, the pinned version) starts its I/O
thread and then bootstraps; when the broker does not answer in time the constructor raises
and the started thread is left behind, unreachable, for the life of the process. Whoever
retries while Kafka is down leaks one thread per attempt: ingest's readiness probe makes a
new client after every failed probe (15 threads after one 32 s broker pause, measured in
``tests/integration/test_ingest_producer_health.py``), and :func:`.topics.create_topics`
one per 0.5 s while it waits for the broker at start-up.
"""

from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaAdminClient  # type: ignore[import-untyped]

logger = logging.getLogger(__name__)

#: How long a failed constructor waits for its I/O thread to stop.
STOP_TIMEOUT_MS = 2_000


class AdminClient(KafkaAdminClient):  # type: ignore[misc]
    """``KafkaAdminClient`` whose constructor, when it fails, stops what it had started."""

    def __init__(self, **configs: Any) -> None:
        try:
            super().__init__(**configs)
        except BaseException:
            self._stop_partial()
            raise

    def _stop_partial(self) -> None:
        # The same steps as close(), on whatever the constructor got to create.
        client = getattr(self, "_client", None)
        net = getattr(self, "_net", None)
        try:
            if client is not None:
                client.close()
            if net is not None:
                net.stop(timeout_ms=STOP_TIMEOUT_MS)
        except Exception:
            logger.warning("cleaning up an admin client that did not start", exc_info=True)
