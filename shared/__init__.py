"""harstream's common library: schemas, settings, errors and the signal-processing core.

Nothing in this package imports Kafka, gRPC, TensorFlow or Prometheus: it is the pure core
that the services wire to I/O, and that the training-set builder uses offline.
"""

__version__ = "0.1.0"
