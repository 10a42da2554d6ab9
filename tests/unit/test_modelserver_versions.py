"""Version discovery, selection and the load/switch/unload policy (fake loader, no TF)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.modelserver.errors import Code, InvalidArgumentError, NotFoundError, ServingError
from services.modelserver.manager import ModelManager, State, VersionStatus
from services.modelserver.versions import (
    desired_versions,
    parse_version_labels,
    resolve_version,
    scan_versions,
)


def make_version(base: Path, name: str, content: bytes = b"model") -> Path:
    directory = base / name
    directory.mkdir(parents=True)
    (directory / "saved_model.pb").write_bytes(content)
    return directory


def test_scan_keeps_only_numeric_visible_directories(tmp_path: Path) -> None:
    for name in ("1", "12", ".3.partial", ".4", "tmp", "5a", "007"):
        make_version(tmp_path, name)
    (tmp_path / "9").write_text("a file, not a directory")
    assert scan_versions(tmp_path) == {1: tmp_path / "1", 12: tmp_path / "12", 7: tmp_path / "007"}
    assert scan_versions(tmp_path / "missing") == {}


def test_labels_parse_and_reject_garbage() -> None:
    assert parse_version_labels("") == {}
    assert parse_version_labels(" stable=1, canary=2 ,") == {"stable": 1, "canary": 2}
    for bad in ("stable", "stable=x", "=1", "a=1,a=2"):
        with pytest.raises(ValueError, match="label"):
            parse_version_labels(bad)


def test_desired_is_latest_plus_available_labels() -> None:
    assert desired_versions([], {"stable": 1}) == set()
    assert desired_versions([1, 2, 3], {}) == {3}
    assert desired_versions([1, 2, 3], {"stable": 1, "canary": 9}) == {1, 3}


def test_resolve_version_errors_like_tf_serving() -> None:
    labels = {"stable": 1}
    assert resolve_version("har", {1, 2}, labels, "har") == 2
    assert resolve_version("har", {1, 2}, labels, "har", version=1) == 1
    assert resolve_version("har", {1, 2}, labels, "har", label="stable") == 1
    with pytest.raises(NotFoundError, match=r"^Servable not found for request: Latest\(x\)$"):
        resolve_version("har", {1}, labels, "x")
    with pytest.raises(NotFoundError, match=r"Specific\(har, 3\)"):
        resolve_version("har", {1}, labels, "har", version=3)
    with pytest.raises(NotFoundError, match=r"Latest\(har\)"):
        resolve_version("har", set(), labels, "har")
    with pytest.raises(InvalidArgumentError, match="Unrecognized servable version label: beta"):
        resolve_version("har", {1}, labels, "har", label="beta")
    with pytest.raises(NotFoundError, match=r"Specific\(har, 1\)"):
        resolve_version("har", {2}, labels, "har", label="stable")


class FakeServable:
    def __init__(self, version: int, path: Path) -> None:
        if (path / "saved_model.pb").read_bytes() == b"broken":
            raise ServingError(f"cannot load {path}", Code.INVALID_ARGUMENT)
        self.version = version
        self.path = path


def manager(base: Path, labels: dict[str, int] | None = None) -> ModelManager[FakeServable]:
    return ModelManager("har", base, FakeServable, labels=labels)


def states(m: ModelManager[FakeServable]) -> dict[int, State]:
    return {s.version: s.state for s in m.statuses("har")}


def test_newest_version_is_served_and_a_new_one_replaces_it_after_it_settles(
    tmp_path: Path,
) -> None:
    make_version(tmp_path, "1")
    make_version(tmp_path, "2")
    m = manager(tmp_path)
    m.poll()
    assert set(m.serving) == {2}
    assert states(m) == {2: State.AVAILABLE}  # 1 was never loaded
    assert m.get("har").version == 2

    make_version(tmp_path, "3")
    m.poll()  # first sight: could still be being copied in
    assert set(m.serving) == {2}
    m.poll()  # unchanged since the last scan: load, switch, unload
    assert set(m.serving) == {3}
    assert states(m) == {3: State.AVAILABLE, 2: State.END}
    assert [s.version for s in m.statuses("har")] == [3, 2]
    with pytest.raises(NotFoundError):
        m.get("har", version=2)


def test_a_directory_still_changing_is_not_loaded(tmp_path: Path) -> None:
    make_version(tmp_path, "1")
    m = manager(tmp_path)
    m.poll()
    v2 = make_version(tmp_path, "2")
    m.poll()
    (v2 / "variables.data").write_bytes(b"more")
    m.poll()
    assert set(m.serving) == {1}
    m.poll()
    assert set(m.serving) == {2}


def test_failed_version_is_reported_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    make_version(tmp_path, "1")
    m = manager(tmp_path)
    m.poll()
    v2 = make_version(tmp_path, "2", b"broken")
    m.poll()
    m.poll()
    m.poll()  # not retried while unchanged
    assert set(m.serving) == {1}
    status = m.statuses("har", 2)[0]
    assert status == VersionStatus(2, State.END, "INVALID_ARGUMENT", f"cannot load {v2}")
    assert m.statuses("har", 1)[0].state == State.AVAILABLE

    (v2 / "saved_model.pb").write_bytes(b"fixed")
    os.utime(v2 / "saved_model.pb", ns=(1, 1))  # a different snapshot whatever the clock
    m.poll()
    m.poll()
    assert set(m.serving) == {2}
    assert m.statuses("har", 2)[0] == VersionStatus(2, State.AVAILABLE)


def test_labelled_versions_are_served_besides_the_newest(tmp_path: Path) -> None:
    for name in ("1", "2", "3"):
        make_version(tmp_path, name)
    m = manager(tmp_path, {"stable": 1})
    m.poll()
    assert set(m.serving) == {1, 3}
    assert m.get("har", label="stable").version == 1
    assert m.get("har").version == 3


def test_a_version_reported_available_is_served_while_the_next_one_loads(
    tmp_path: Path,
) -> None:
    """The inference worker starts once GetModelStatus says AVAILABLE and then asks for its
    label's version: that version must answer then, not only once every load finished."""
    for name in ("1", "2", "3"):
        make_version(tmp_path, name)
    seen_while_loading: dict[int, dict[int, int]] = {}

    def load(version: int, path: Path) -> FakeServable:
        seen_while_loading[version] = {v: m.get("har", version=v).version for v in m.available()}
        return FakeServable(version, path)

    m = ModelManager("har", tmp_path, load, labels={"stable": 1})
    m.poll()
    assert seen_while_loading == {1: {}, 3: {1: 1}}
    assert m.get("har", label="stable").version == 1


def test_removed_version_is_unloaded_and_unknown_models_are_not_found(tmp_path: Path) -> None:
    make_version(tmp_path, "1")
    m = manager(tmp_path)
    m.poll()
    (tmp_path / "1" / "saved_model.pb").unlink()
    (tmp_path / "1").rmdir()
    m.poll()
    assert m.serving == {}
    assert states(m) == {1: State.END}
    with pytest.raises(NotFoundError):
        m.get("har")
    with pytest.raises(NotFoundError):
        m.statuses("other")
    with pytest.raises(NotFoundError):
        m.statuses("har", 7)
