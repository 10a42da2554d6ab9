"""The HAPT raw recordings: reading them from their PyPI package, caching them, splitting them."""

from shared.data.cache import HaptCache, load_recordings
from shared.data.recording import Recording
from shared.data.splits import TEST_SUBJECTS, TRAIN_SUBJECTS, VALIDATION_SUBJECTS, split_of

__all__ = [
    "TEST_SUBJECTS",
    "TRAIN_SUBJECTS",
    "VALIDATION_SUBJECTS",
    "HaptCache",
    "Recording",
    "load_recordings",
    "split_of",
]
