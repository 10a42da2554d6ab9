"""Version discovery and selection over a TF Serving model base path (pure: file listing only).

Layout: ``<base>/<version>/saved_model.pb``, versions are all-digit directory names. Hidden
directories (``.2.partial``, the exporter's staging area) and anything else are ignored, so
a version becomes visible only when the exporter renames it into place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from services.modelserver.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

# A cheap fingerprint of a directory's contents: (relative path, size, mtime_ns) of every file.
Snapshot = tuple[tuple[str, int, int], ...]


def scan_versions(base_path: Path) -> dict[int, Path]:
    """All-digit, non-hidden subdirectories of ``base_path`` as ``{version: path}``.

    A missing base path yields ``{}`` (TF Serving keeps polling until it appears).
    """
    try:
        entries = list(base_path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {
        int(p.name): p
        for p in entries
        if p.name.isdigit() and p.is_dir() and not p.name.startswith(".")
    }


def has_saved_model(version_dir: Path) -> bool:
    return any((version_dir / name).is_file() for name in SAVED_MODEL_FILES)


def snapshot(directory: Path) -> Snapshot:
    """Names, sizes and mtimes of every file under ``directory`` (sorted).

    Used to see whether a version directory is still being written to (it is loaded only
    when two consecutive scans agree) and whether a failed version has since been replaced.
    """
    files: list[tuple[str, int, int]] = []
    try:
        for path in directory.rglob("*"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed while we looked: the next scan will differ
                continue
            if path.is_file():
                files.append((str(path.relative_to(directory)), stat.st_size, stat.st_mtime_ns))
    except FileNotFoundError:
        return ()
    return tuple(sorted(files))


def parse_version_labels(text: str) -> dict[str, int]:
    """``"stable=1,canary=2"`` → ``{"stable": 1, "canary": 2}``; empty text → ``{}``."""
    labels: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        label, sep, version = item.partition("=")
        label, version = label.strip(), version.strip()
        if not sep or not label or not version.isdigit():
            raise ValueError(f"version label {item!r} is not of the form name=<integer>")
        if label in labels:
            raise ValueError(f"version label {label!r} given twice")
        labels[label] = int(version)
    return labels


def desired_versions(available: Iterable[int], labels: Mapping[str, int]) -> set[int]:
    """Versions to serve: the newest available one (TF Serving's ``latest 1`` policy) plus
    every labelled version that is available."""
    present = set(available)
    if not present:
        return set()
    return {max(present)} | {v for v in labels.values() if v in present}


def request_description(model_name: str, version: int | None, label: str | None) -> str:
    """How TF Serving names a servable request in its errors: ``Latest(har)``,
    ``Specific(har, 2)``."""
    if version is not None:
        return f"Specific({model_name}, {version})"
    if label:
        return f"Labelled({model_name}, {label})"
    return f"Latest({model_name})"


def resolve_version(
    served_model: str,
    serving: Iterable[int],
    labels: Mapping[str, int],
    model_name: str,
    version: int | None = None,
    label: str | None = None,
) -> int:
    """The version a request's ``model_spec`` selects, or the error TF Serving would return.

    ``version`` wins over ``label``; neither means the newest version being served. As in
    TF Serving's ``ServerCore::ServableRequestFromModelSpec``, a label is looked up first
    (INVALID_ARGUMENT if the model has no such label) and then asked for as the specific
    version it names (NOT_FOUND while that version is not being served).
    """
    serving = set(serving)
    if version is None and label:
        if model_name != served_model or label not in labels:
            raise InvalidArgumentError(f"Unrecognized servable version label: {label}")
        version = labels[label]
    if model_name != served_model or not serving:
        raise NotFoundError(
            "Servable not found for request: " + request_description(model_name, version, None)
        )
    if version is None:
        return max(serving)
    if version not in serving:
        raise NotFoundError(
            "Servable not found for request: " + request_description(model_name, version, None)
        )
    return version


def check_labels(
    model_name: str,
    labels: Mapping[str, int],
    current: Mapping[str, int],
    available: Iterable[int],
    allow_unavailable: bool,
) -> None:
    """Refuse a label map as TF Serving's ``ServerCore::UpdateModelVersionLabelMap`` does.

    Every label must name a version that is AVAILABLE now. With
    ``--allow_version_labels_for_unavailable_models`` a label may also name a version that
    is not (yet) available, but only if the label is new or keeps its version: moving an
    existing label to a version that cannot answer is refused either way, so a label in use
    never points at nothing.

    Raises:
        FailedPreconditionError: with TF Serving's message.
    """
    ready = set(available)
    for label, version in labels.items():
        moved = label in current and current[label] != version
        if allow_unavailable and not moved:
            continue
        if version not in ready:
            raise FailedPreconditionError(
                f"Request to assign label to version {version} of model {model_name}, which "
                "is not currently available for inference"
            )
