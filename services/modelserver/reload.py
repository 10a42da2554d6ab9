"""Reloading the model server config at run time, as TF Serving does: from
``--model_config_file`` every ``--model_config_file_poll_wait_seconds``, and by
``ModelService/HandleReloadConfigRequest``. No gRPC here: the servicer hands the request's
config over as parsed :class:`~services.modelserver.config.ModelConfig` values.

What TF Serving's ``ServerCore::ReloadConfig`` does and this follows:

- the version labels are checked before anything changes (each must name an AVAILABLE
  version, see :func:`~services.modelserver.versions.check_labels`); a refused config
  changes nothing, so moving a label to a new version takes two reloads: one that adds
  the version to the policy, and once it is AVAILABLE, one that moves the label;
- an accepted config takes effect at once for labels; versions are loaded and unloaded
  after it, without waiting (the next poll of the base path);
- the file is read again at every poll and wins: a config set by the RPC lasts until the
  file's differs from it, so a file and an RPC must carry the same config (``harstream
  models`` writes the file, then sends it).

This development server serves one model: a config naming another model, several, or
another base path is refused (UNIMPLEMENTED) rather than half applied.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from services.modelserver.config import ConfigError, ModelConfig, VersionPolicy, parse_config
from services.modelserver.errors import InvalidArgumentError, ServingError, UnimplementedError

logger = logging.getLogger(__name__)


class Reconfigurable(Protocol):
    """What a reload changes: :class:`~services.modelserver.manager.ModelManager`."""

    model_name: str
    base_path: Path

    def reconfigure(
        self, policy: VersionPolicy, labels: Mapping[str, int], allow_unavailable_labels: bool
    ) -> None: ...


class ConfigReloader:
    """The config of a :class:`ModelManager`, replaced by :meth:`reload` (thread-safe)."""

    def __init__(
        self,
        manager: Reconfigurable,
        allow_unavailable_labels: bool,
        current: ModelConfig | None = None,
        on_reload: Callable[[ModelConfig], None] | None = None,
    ) -> None:
        self._manager = manager
        self._allow_unavailable = allow_unavailable_labels
        self._on_reload = on_reload
        self._lock = threading.Lock()  # one reload at a time, as TF Serving's config_mu_
        self.current = current

    def reload(self, configs: list[ModelConfig] | None, only_if_changed: bool = False) -> bool:
        """Apply ``configs`` (a parsed ``ModelServerConfig``; None: no config set, which
        TF Serving takes as "no action"). Returns whether anything changed.

        An RPC is checked again even if it equals the served config (TF Serving checks its
        labels at every reload); the file watcher passes ``only_if_changed``.

        Raises:
            ServingError: the config is refused (FAILED_PRECONDITION for labels of versions
                not AVAILABLE, INVALID_ARGUMENT, UNIMPLEMENTED); nothing changed.
        """
        if configs is None:
            logger.info("taking no action for an empty config")
            return False
        with self._lock:
            config = self._the_model(configs)
            if only_if_changed and config == self.current:
                return False
            self._manager.reconfigure(config.policy, config.labels, self._allow_unavailable)
            changed = config != self.current
            self.current = config
        if not changed:
            return False
        if self._on_reload is not None:
            self._on_reload(config)
        logger.info(
            "model config of %s reloaded: versions %s, labels %s",
            config.name,
            config.policy.describe(),
            ", ".join(f"{k}={v}" for k, v in sorted(config.labels.items())) or "none",
        )
        return True

    def _the_model(self, configs: list[ModelConfig]) -> ModelConfig:
        manager = self._manager
        if len(configs) != 1 or configs[0].name != manager.model_name:
            names = ", ".join(c.name for c in configs) or "no model"
            raise UnimplementedError(
                f"this development server serves one model, {manager.model_name!r}, and "
                f"cannot switch to a config of {names}: restart it with that config"
            )
        (config,) = configs
        if Path(config.base_path) != manager.base_path:
            raise UnimplementedError(
                f"model {config.name} is served from {manager.base_path}; changing its "
                f"base_path to {config.base_path} needs a restart of this development server"
            )
        if config.platform != "tensorflow":
            raise InvalidArgumentError(
                f"Model {config.name} requests unsupported platform {config.platform}"
            )
        return config


def read_config_file(path: Path) -> list[ModelConfig] | None:
    """Parse a ``--model_config_file``; None for a file with no config in it.

    Raises:
        ConfigError: unreadable or invalid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Failed to read ModelServerConfig file {path}: {exc}") from exc
    configs = parse_config(text)
    return configs or None


class ConfigFileWatcher:
    """Reads the config file every ``interval_s`` and reloads it when it differs from what
    is served (TF Serving re-applies it at every poll; applying an unchanged config is a
    no-op, so only changes are applied here). A refused config is logged once per distinct
    content and error, not at every poll, and retried at every poll: a label waiting for
    its version to load takes effect once it has."""

    def __init__(self, path: Path, reloader: ConfigReloader, interval_s: float) -> None:
        self.path = path
        self.interval_s = interval_s
        self._reloader = reloader
        self._last_problem: str | None = None

    def poll_once(self) -> bool:
        """Read and apply the file once; returns whether the served config changed."""
        try:
            changed = self._reloader.reload(read_config_file(self.path), only_if_changed=True)
        except ServingError as exc:
            problem = f"{exc.code.value}: {exc.message}"
            if problem != self._last_problem:
                logger.error("config file %s not applied: %s", self.path, problem)
                self._last_problem = problem
            return False
        self._last_problem = None
        return changed

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                self.poll_once()
            except Exception:
                logger.exception("polling the config file %s failed", self.path)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(
            target=self.run, args=(stop,), name="modelserver-config-poll", daemon=True
        )
        thread.start()
        return thread


__all__ = ["ConfigFileWatcher", "ConfigReloader", "read_config_file"]
