"""harstream modelserver service."""
