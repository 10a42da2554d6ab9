"""harstream ingest service."""
