"""Which versions are loaded and served, and their lifecycle states (pure: the loader is
injected, so the policy is unit-tested with fakes and no TensorFlow).

The policy follows TF Serving's availability-preserving one: a new version is loaded, then
requests switch to it, then the old one is unloaded (UNLOADING → END). A version that fails
to load is reported END with its error and retried only once its files change; what was
serving keeps serving. A version directory is loaded only once two consecutive scans see
the same files, so a directory still being copied in is never loaded half-written.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from enum import IntEnum
from pathlib import Path
from typing import Generic, NamedTuple, Protocol, TypeVar

from services.modelserver.config import VersionPolicy
from services.modelserver.errors import ModelLoadError, NotFoundError, ServingError
from services.modelserver.versions import (
    Snapshot,
    check_labels,
    desired_versions,
    has_saved_model,
    resolve_version,
    scan_versions,
    snapshot,
)

logger = logging.getLogger(__name__)


class State(IntEnum):
    """``ModelVersionStatus.State`` values of TF Serving's get_model_status.proto."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


class VersionStatus(NamedTuple):
    """One entry of GetModelStatus."""

    version: int
    state: State
    error_code: str = "OK"
    """``tensorflow.error.Code`` name."""
    error_message: str = ""


class Loadable(Protocol):
    version: int


S = TypeVar("S", bound=Loadable)


class ModelManager(Generic[S]):
    """Keeps the served versions of one model in sync with its base path.

    ``loader(version, path)`` returns a servable or raises; any exception counts as a failed
    load. Lookups (:meth:`get`) are lock-free reads of immutable mappings (served versions,
    labels) that the poller and :meth:`reconfigure` replace whole, so they never wait for a
    load or a reload.

    ``policy`` is the config's ``model_version_policy``; None is the shortcut of the
    ``version_labels`` setting: the newest version plus every labelled one.
    """

    def __init__(
        self,
        model_name: str,
        base_path: Path,
        loader: Callable[[int, Path], S],
        labels: Mapping[str, int] | None = None,
        on_change: Callable[[Mapping[int, S]], None] | None = None,
        policy: VersionPolicy | None = None,
    ) -> None:
        self.model_name = model_name
        self.base_path = base_path
        self.labels: Mapping[str, int] = dict(labels or {})
        self.policy = policy
        self._loader = loader
        self._on_change = on_change
        self._serving: Mapping[int, S] = {}
        self._status: dict[int, VersionStatus] = {}
        self._seen: dict[int, Snapshot] = {}
        self._failed: dict[int, Snapshot] = {}
        self._polls = 0
        self._poll_lock = threading.Lock()  # one poll at a time
        self._wake = threading.Event()  # poll now rather than after the interval
        # guards _status only, so GetModelStatus answers (LOADING...) while a load runs
        self._status_lock = threading.Lock()

    @property
    def serving(self) -> Mapping[int, S]:
        return self._serving

    def get(self, model_name: str, version: int | None = None, label: str | None = None) -> S:
        """The servable a request's model_spec selects; raises :class:`ServingError`."""
        serving = self._serving
        chosen = resolve_version(self.model_name, serving, self.labels, model_name, version, label)
        return serving[chosen]

    def statuses(self, model_name: str, version: int | None = None) -> list[VersionStatus]:
        """GetModelStatus: every version this process has seen, newest first."""
        if model_name != self.model_name:
            raise NotFoundError(f"Could not find any versions of model {model_name}")
        with self._status_lock:
            found = sorted(self._status.values(), key=lambda s: -s.version)
        if version is not None:
            found = [s for s in found if s.version == version]
            if not found:
                raise NotFoundError(f"Could not find version {version} of model {model_name}")
        elif not found:
            raise NotFoundError(f"Could not find any versions of model {model_name}")
        return found

    def available(self) -> set[int]:
        """Versions whose state is AVAILABLE now."""
        with self._status_lock:
            return {v for v, s in self._status.items() if s.state == State.AVAILABLE}

    def reconfigure(
        self, policy: VersionPolicy, labels: Mapping[str, int], allow_unavailable_labels: bool
    ) -> None:
        """Apply a new version policy and label map, as TF Serving's ``ReloadConfig``: the
        labels are checked first (:func:`check_labels`) and nothing changes if they are
        refused; else they take effect at once and the next poll (started now) loads and
        unloads versions to match the policy.

        Raises:
            FailedPreconditionError: a label names a version that is not AVAILABLE.
        """
        check_labels(
            self.model_name, labels, self.labels, self.available(), allow_unavailable_labels
        )
        self.labels = dict(labels)
        self.policy = policy
        self._wake.set()

    def request_poll(self) -> None:
        """Wake the polling thread (a reload, or a stop)."""
        self._wake.set()

    def _desired(self, candidates: set[int]) -> set[int]:
        if self.policy is None:
            return desired_versions(candidates, self.labels)
        return self.policy.select(candidates)

    def poll(self) -> None:
        """Scan the base path once and load/unload versions to match the policy."""
        with self._poll_lock:
            self._poll_locked()

    def _poll_locked(self) -> None:
        first = self._polls == 0
        self._polls += 1
        found = scan_versions(self.base_path)
        snapshots = {v: snapshot(p) for v, p in found.items()}
        # Loadable: a complete-looking directory whose files did not change since last scan
        # (at start-up we trust what is already there) and that did not fail as it is now.
        ready = {
            v
            for v, p in found.items()
            if has_saved_model(p)
            and (first or self._seen.get(v) == snapshots[v])
            and self._failed.get(v) != snapshots[v]
        }
        for v in [v for v in self._failed if self._failed[v] != snapshots.get(v)]:
            del self._failed[v]  # replaced or removed: worth another try when ready
        self._seen = snapshots
        # Versions no longer on disk are not candidates; those that are but are still being
        # written keep serving if they already do.
        candidates = ready | (set(self._serving) & set(found))
        target = self._desired(candidates)
        serving = dict(self._serving)
        while not target <= set(serving):
            for version in sorted(target - set(serving)):
                loaded = self._load(version, found[version], snapshots[version])
                if loaded is None:
                    candidates.discard(version)
                    continue
                # Served before it is reported AVAILABLE, as in TF Serving: a client that
                # saw AVAILABLE (the inference worker's start-up) must be able to use it.
                serving[version] = loaded
                self._publish(serving)
                self._set(version, State.AVAILABLE)
                logger.info("serving %s version %d", self.model_name, version)
            target = self._desired(candidates)
        if serving != self._serving:
            self._publish(serving)  # switch before unloading: no request sees a gap
        for version in sorted(set(serving) - target):
            self._set(version, State.UNLOADING)
            del serving[version]
            self._publish(serving)
            self._set(version, State.END)
            logger.info("unloaded %s version %d", self.model_name, version)

    def _load(self, version: int, path: Path, files: Snapshot) -> S | None:
        self._set(version, State.LOADING)
        logger.info("loading %s version %d from %s", self.model_name, version, path)
        try:
            servable = self._loader(version, path)
        except Exception as exc:
            code = exc.code.value if isinstance(exc, ServingError) else "UNKNOWN"
            if not isinstance(exc, ModelLoadError):
                logger.exception("loading %s version %d failed", self.model_name, version)
            else:
                logger.error("loading %s version %d failed: %s", self.model_name, version, exc)
            self._failed[version] = files
            self._set(version, State.END, code, str(exc))
            return None
        return servable

    def _set(self, version: int, state: State, code: str = "OK", message: str = "") -> None:
        with self._status_lock:
            self._status[version] = VersionStatus(version, state, code, message)

    def _publish(self, serving: Mapping[int, S]) -> None:
        self._serving = dict(serving)
        if self._on_change is not None:
            self._on_change(self._serving)

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Poll until ``stop`` is set; errors of one poll are logged and polling goes on."""
        while not stop.is_set():
            try:
                self.poll()
            except Exception:
                logger.exception("polling %s failed", self.base_path)
            self._wake.wait(interval_s)
            self._wake.clear()

    def start(self, stop: threading.Event, interval_s: float) -> threading.Thread:
        thread = threading.Thread(
            target=self.run, args=(stop, interval_s), name="modelserver-poll", daemon=True
        )
        thread.start()
        return thread


__all__ = ["Loadable", "ModelManager", "State", "VersionStatus"]
