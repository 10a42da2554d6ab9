"""Mosquitto files for harstream's devices: hashes Mosquitto accepts, the ACL, merging."""

from __future__ import annotations

import base64
from pathlib import Path

from services.mqtt_bridge.config_cli import read_tokens
from services.mqtt_bridge.mosquitto import (
    BrokerOptions,
    merge_credentials,
    parse_password_file,
    password_hash,
    render_acl,
    render_conf,
    render_password_file,
    usable_username,
    verify_password,
)


def test_hash_is_mosquitto_passwds_format() -> None:
    # Written by `mosquitto_passwd -b pw dev1 secret` (mosquitto 2.0.11).
    entry = (
        "$7$101$7V5z2pUoWhWnqPCS$ZHsUOzJfivOENzPui02380R1a/kS6q0tNHJtRSm61/42oaGaSFyb9eXj/"
        "h7qhecvyDe1V3rfJ9AoF0VOIibQoQ=="
    )
    salt = base64.b64decode("7V5z2pUoWhWnqPCS")
    assert password_hash("secret", salt) == entry
    assert verify_password("secret", entry)
    assert not verify_password("Secret", entry)
    assert not verify_password("secret", "garbage")
    fresh = password_hash("token")
    assert fresh.startswith("$7$101$") and verify_password("token", fresh)
    assert fresh != password_hash("token")  # salted


def test_password_file_round_trip() -> None:
    entries = {"b": "$7$1$x$y", "a": "$7$1$z$w"}
    text = render_password_file(entries)
    assert text.splitlines()[0].startswith("a:")
    assert parse_password_file("# comment\n\n" + text) == entries


def test_acl_limits_devices_to_their_own_topic() -> None:
    acl = render_acl("harstream-bridge")
    assert "pattern write harstream/v1/devices/%u/packets\n" in acl
    assert "user harstream-bridge\ntopic read harstream/v1/devices/+/packets\n" in acl
    assert "readwrite" not in acl


def test_conf() -> None:
    conf = render_conf(BrokerOptions(port=1884, bind="127.0.0.1", config_dir="/c", data_dir=None))
    assert "listener 1884 127.0.0.1\n" in conf
    assert "allow_anonymous false\n" in conf
    assert "password_file /c/passwd\n" in conf and "acl_file /c/acl\n" in conf
    assert "persistence" not in conf


def test_merge_keeps_adds_and_drops() -> None:
    existing = {
        "kept": password_hash("t1"),
        "revoked": password_hash("t2"),
        "harstream-bridge": password_hash("b"),
    }
    entries, missing = merge_credentials(
        existing, ["kept", "new", "no-token", "a:b"], {"new": "t3"}, "harstream-bridge", None
    )
    assert entries["kept"] == existing["kept"]
    assert verify_password("t3", entries["new"])
    assert entries["harstream-bridge"] == existing["harstream-bridge"]
    assert "revoked" not in entries
    assert missing == ["no-token", "a:b"]
    again, _ = merge_credentials(entries, ["new"], {"new": "t3"}, "harstream-bridge", None)
    assert again["new"] == entries["new"]  # unchanged token: unchanged line


def test_usable_username() -> None:
    assert usable_username("dev-1.x_y")
    assert not usable_username("a:b") and not usable_username("")


def test_read_tokens_formats(tmp_path: Path) -> None:
    mapping = tmp_path / "m.json"
    mapping.write_text('{"a": "t1"}')
    lines = tmp_path / "l.json"
    lines.write_text('{"device_id": "a", "token": "t1"}\n{"device_id": "b", "token": "t2"}\n')
    array = tmp_path / "a.json"
    array.write_text('[{"device_id": "a", "token": "t1"}]')
    assert read_tokens(mapping) == {"a": "t1"}
    assert read_tokens(lines) == {"a": "t1", "b": "t2"}
    assert read_tokens(array) == {"a": "t1"}
