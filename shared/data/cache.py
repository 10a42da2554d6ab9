"""A compact on-disk cache of the HAPT recordings: one .npz per recording and a manifest.

The pickle takes seconds to unpickle and cannot be memory-mapped; the cache loads in a
fraction of that and every file is checked against the manifest's SHA-256.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.data.hapt_pickle import (
    DATASET_PACKAGE,
    dataset_pickle_path,
    file_sha256,
    read_hapt_pickle,
)
from shared.data.recording import Recording
from shared.errors import CorruptCacheError
from shared.xdg import harstream_dir

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


def default_cache_dir() -> Path:
    """``$HARSTREAM_DATA_DIR`` or ``$XDG_CACHE_HOME/harstream/hapt`` (``~/.cache/...``).

    Only called from command-line entry points, so the environment is read once at start-up.
    """
    if explicit := os.environ.get("HARSTREAM_DATA_DIR"):
        return Path(explicit)
    return harstream_dir("cache") / "hapt"


@dataclass(frozen=True)
class HaptCache:
    """The cache directory; :meth:`ensure` builds it from the PyPI package when missing."""

    directory: Path

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_NAME

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def build(self, recordings: Iterable[Recording] | None = None) -> dict[str, object]:
        """(Re)write the cache from the dataset package, atomically per file."""
        source = dataset_pickle_path()
        self.directory.mkdir(parents=True, exist_ok=True)
        entries = []
        for rec in recordings if recordings is not None else read_hapt_pickle(source):
            target = self.directory / f"{rec.name}.npz"
            _atomic_savez(target, samples=rec.samples, labels=rec.labels)
            entries.append(
                {
                    "file": target.name,
                    "subject": rec.subject,
                    "experiment": rec.experiment,
                    "samples": len(rec),
                    "sha256": file_sha256(target),
                }
            )
        manifest: dict[str, object] = {
            "format_version": CACHE_FORMAT_VERSION,
            "source_package": DATASET_PACKAGE,
            "source_sha256": file_sha256(source),
            "sample_rate_hz": 50.0,
            "columns": [
                "acc_x_g",
                "acc_y_g",
                "acc_z_g",
                "gyro_x_rad_s",
                "gyro_y_rad_s",
                "gyro_z_rad_s",
            ],
            "recordings": entries,
        }
        _atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1))
        logger.info("cached %d recordings in %s", len(entries), self.directory)
        return manifest

    def ensure(self) -> None:
        """Build the cache on first need."""
        if not self.exists():
            logger.info("no HAPT cache in %s yet: building it", self.directory)
            self.build()

    def manifest(self) -> dict[str, object]:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise CorruptCacheError(
                f"{self.manifest_path}: unreadable manifest ({exc}); delete {self.directory} "
                "or run `harstream data --rebuild`"
            ) from exc
        if manifest.get("format_version") != CACHE_FORMAT_VERSION:
            raise CorruptCacheError(
                f"{self.manifest_path}: cache format {manifest.get('format_version')!r}, expected "
                f"{CACHE_FORMAT_VERSION}; run `harstream data --rebuild`"
            )
        return dict(manifest)

    def load(self, subjects: Iterable[int] | None = None, verify: bool = True) -> list[Recording]:
        """Load recordings (all, or of the given subjects), checking each file's checksum."""
        self.ensure()
        wanted = set(subjects) if subjects is not None else None
        recordings = []
        entries = self.manifest()["recordings"]
        assert isinstance(entries, list)
        for entry in entries:
            if wanted is not None and entry["subject"] not in wanted:
                continue
            path = self.directory / entry["file"]
            if verify and (not path.is_file() or file_sha256(path) != entry["sha256"]):
                raise CorruptCacheError(
                    f"{path}: missing or checksum differs from the manifest; run "
                    "`harstream data --rebuild`"
                )
            try:
                with np.load(path) as npz:
                    samples, labels = npz["samples"], npz["labels"]
            except (OSError, ValueError, KeyError) as exc:
                raise CorruptCacheError(f"{path}: cannot be read ({exc})") from exc
            if samples.shape != (entry["samples"], 6) or labels.shape != (entry["samples"],):
                raise CorruptCacheError(f"{path}: shapes differ from the manifest")
            recordings.append(
                Recording(
                    subject=int(entry["subject"]),
                    experiment=int(entry["experiment"]),
                    samples=samples.astype(np.float64, copy=False),
                    labels=labels.astype(np.int16, copy=False),
                )
            )
        return recordings


def load_recordings(cache_dir: Path, subjects: Iterable[int] | None = None) -> list[Recording]:
    """The recordings of ``subjects`` (default: all 30), from the cache, built on first need."""
    return HaptCache(cache_dir).load(subjects)


def _atomic_savez(target: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
