"""The fault-injection suite of issue 8 (``harstream faults``, tests/faults): the real local
pipeline under kill -9, pauses, rebalances and a webhook outage, counted from its topics."""
