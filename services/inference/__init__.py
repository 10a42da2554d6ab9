"""harstream inference service."""
