"""harstream preprocess service."""
