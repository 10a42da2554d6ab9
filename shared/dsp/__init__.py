"""The streaming signal-processing core shared by the training-set builder and the workers."""

from shared.dsp.config import CHANNELS, INPUT_CHANNELS, PreprocessingConfig
from shared.dsp.preprocessor import StreamingPreprocessor, Windows
from shared.dsp.state import DeviceState

__all__ = [
    "CHANNELS",
    "INPUT_CHANNELS",
    "DeviceState",
    "PreprocessingConfig",
    "StreamingPreprocessor",
    "Windows",
]
