"""Session fixtures shared by all test tiers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def hapt_cache(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The HAPT cache, built once per session from the installed dataset package."""
    from shared.data.cache import HaptCache

    cache = HaptCache(tmp_path_factory.mktemp("hapt"))
    cache.build()
    return cache


@pytest.fixture(scope="session")
def window_sets(hapt_cache):  # type: ignore[no-untyped-def]
    from shared.dataset import build_window_sets

    return build_window_sets(hapt_cache.load())
