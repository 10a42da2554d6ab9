"""Label moves of a rollout as successive TF Serving model configs (pure).

The labels: ``stable`` (what the inference workers serve), ``canary`` (the candidate a
canary share or shadow mode sends windows to) and ``previous`` (the stable version before
the last promotion: what :func:`rollback` returns to). The version policy is always
``specific`` and holds exactly the labelled versions, so a version loses its memory once no
label names it, and a labelled version is always one the server is asked to load.

TF Serving refuses a config whose labels name a version that is not AVAILABLE (and
applies nothing of it), so moving a label onto a version that is not served yet takes two
configs: the first adds the version to the policy with the labels unchanged, the second,
once the version is AVAILABLE, moves the labels. :func:`promote` returns both when needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.modelserver.config import ModelConfig, VersionPolicy
from shared.errors import HarstreamError

STABLE = "stable"
CANARY = "canary"
PREVIOUS = "previous"
#: The labels ``harstream models`` moves; others in a config are kept as they are.
LABELS = (STABLE, CANARY)


class RolloutError(HarstreamError):
    """A promotion or rollback that cannot be made (e.g. nothing to roll back to)."""


@dataclass(frozen=True)
class Step:
    """One config to apply; ``loads``: the version it adds to the policy, to wait for
    (AVAILABLE) before the next step, or None."""

    config: ModelConfig
    loads: int | None = None


def policy_versions(config: ModelConfig) -> frozenset[int]:
    """Versions the policy names (a ``latest``/``all`` policy names none in particular)."""
    return config.policy.versions if config.policy.kind == "specific" else frozenset()


def _final(config: ModelConfig, labels: Mapping[str, int]) -> ModelConfig:
    return ModelConfig(
        config.name,
        config.base_path,
        config.platform,
        VersionPolicy.specific(labels.values()),
        dict(labels),
    )


def _steps(config: ModelConfig, labels: dict[str, int], version: int) -> list[Step]:
    if labels == dict(config.labels):
        return []
    final = _final(config, labels)
    if version in policy_versions(config):
        return [Step(final)]
    load = config.with_policy(
        VersionPolicy.specific({*policy_versions(config), *config.labels.values(), version})
    )
    return [Step(load, loads=version), Step(final)]


def promote(config: ModelConfig, version: int, label: str = STABLE) -> list[Step]:
    """The configs that make ``label`` name ``version``, in order (empty: it already does).

    Promoting to ``stable`` keeps the version it replaces as ``previous`` (what
    :func:`rollback` returns to); the other labels stay where they are.
    """
    if label not in LABELS:
        raise RolloutError(f"label {label!r} is not one of {', '.join(LABELS)}")
    if version < 1:
        raise RolloutError(f"version {version} is not a model version (1, 2, ...)")
    labels = dict(config.labels)
    old = labels.get(label)
    labels[label] = version
    if label == STABLE and old is not None and old != version:
        labels[PREVIOUS] = old
    return _steps(config, labels, version)


def rollback(config: ModelConfig, label: str = STABLE) -> list[Step]:
    """Undo: ``stable`` goes back to ``previous`` (which is dropped), or ``canary`` back to
    the stable version (no candidate any more). One step: the version returned to is
    labelled, hence in the policy and loaded."""
    labels = dict(config.labels)
    if label == STABLE:
        if PREVIOUS not in labels:
            raise RolloutError(
                "nothing to roll back to: the config has no 'previous' label (set by a "
                "promotion to stable)"
            )
        labels[STABLE] = labels.pop(PREVIOUS)
        return _steps(config, labels, labels[STABLE])
    if label == CANARY:
        if STABLE not in labels:
            raise RolloutError("the config has no 'stable' label to bring the canary back to")
        labels[CANARY] = labels[STABLE]
        return _steps(config, labels, labels[CANARY])
    raise RolloutError(f"label {label!r} is not one of {', '.join(LABELS)}")


def describe_labels(labels: Mapping[str, int]) -> str:
    order = {name: i for i, name in enumerate((STABLE, CANARY, PREVIOUS))}
    items = sorted(labels.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    return ", ".join(f"{k}={v}" for k, v in items) or "none"


__all__ = [
    "CANARY",
    "LABELS",
    "PREVIOUS",
    "STABLE",
    "RolloutError",
    "Step",
    "describe_labels",
    "policy_versions",
    "promote",
    "rollback",
]
