"""Fuzzing harstream: malformed HTTP requests against ingest, poison records on every topic."""
