"""harstream's one edge to Kafka: every service produces, consumes and retries through it.

* :mod:`.clients`: the options of every client library (kafka-python, aiokafka, faust),
  security included, and the settings that depend on the broker (``kafka_profile``): the
  one place that knows the local broker's quirks.
* :mod:`.send`: produce records and await every acknowledgement, retrying what is
  retriable, dead letters too large for the broker sent again without their value.
* :mod:`.dead_letters`: building a dead letter and fitting it under the size limits.
* :mod:`.backoff`: the one backoff policy (exponential with jitter), pure.
* :mod:`.topics`: creating harstream's topics.
* :mod:`.admin`: kafka-python's admin client, without the thread it leaks when it cannot
  bootstrap.
* :mod:`.errors`: the edge's errors and which Kafka errors are worth retrying.

Nothing is re-exported here: importing :mod:`.backoff` (the load generator does, many
times over) must not load the Kafka client libraries the other modules need.
"""
