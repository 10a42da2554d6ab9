"""XDG base directories (https://specifications.freedesktop.org/basedir-spec/) for
harstream's defaults: the one environment read outside the settings classes, because it only
chooses a default path and pydantic-settings cannot express it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

_HOMES = {
    "data": ("XDG_DATA_HOME", (".local", "share")),
    "state": ("XDG_STATE_HOME", (".local", "state")),
    "cache": ("XDG_CACHE_HOME", (".cache",)),
}


def harstream_dir(kind: Literal["data", "state", "cache"]) -> Path:
    """``$XDG_<KIND>_HOME/harstream`` (default ``~/.local/share``, ``~/.local/state``,
    ``~/.cache``)."""
    variable, fallback = _HOMES[kind]
    base = os.environ.get(variable) or str(Path.home().joinpath(*fallback))
    return Path(base) / "harstream"
