"""harstream alerting service."""
