"""harstream demo service."""
