"""The Kafka client options built from StreamSettings, and their validation."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import certifi
import faust
import pytest
from pydantic import ValidationError

from services.common.kafka.clients import (
    aiokafka_kwargs,
    describe,
    faust_broker_urls,
    faust_credentials,
    kafka_python_kwargs,
)
from services.common.scram import ScramError, ScramServerSession, credential
from shared.settings import StreamSettings

SECRET = "s3cret-Value-xyz"


def _settings(**values: Any) -> StreamSettings:
    return StreamSettings(kafka_bootstrap_servers="k1:9093,k2:9093", **values)


@pytest.fixture
def ca() -> Path:
    # Any CA bundle the ssl module loads will do: certifi's comes with requests.
    return Path(certifi.where())


def test_plaintext_by_default_adds_only_the_servers() -> None:
    kwargs = kafka_python_kwargs(_settings(), client_id="x")
    assert kwargs == {
        "bootstrap_servers": ["k1:9093", "k2:9093"],
        "security_protocol": "PLAINTEXT",
        "client_id": "x",
    }
    assert faust_credentials(_settings()) is None
    assert faust_broker_urls(_settings()) == ["kafka://k1:9093", "kafka://k2:9093"]


def test_sasl_ssl_options_for_every_library(ca: Path) -> None:
    settings = _settings(
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_cafile=ca,
        kafka_sasl_username="harstream-ingest",
        kafka_sasl_password=SECRET,
    )
    for kwargs in (kafka_python_kwargs(settings), aiokafka_kwargs(settings)):
        assert kwargs["security_protocol"] == "SASL_SSL"
        assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
        assert kwargs["sasl_plain_username"] == "harstream-ingest"
        assert kwargs["sasl_plain_password"] == SECRET
        context = kwargs["ssl_context"]
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert SECRET not in repr(kwargs)
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.password == SECRET and SECRET not in repr(credentials)
    assert SECRET not in repr(settings) and SECRET not in describe(settings)


def test_ssl_only_and_sasl_plaintext(ca: Path) -> None:
    ssl_only = _settings(kafka_security_protocol="SSL", kafka_ssl_cafile=ca)
    assert "sasl_mechanism" not in aiokafka_kwargs(ssl_only)
    assert isinstance(faust_credentials(ssl_only), faust.SSLCredentials)
    local = _settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="u",
        kafka_sasl_password=SECRET,
    )
    assert "ssl_context" not in kafka_python_kwargs(local)
    credentials = faust_credentials(local)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_PLAINTEXT"


def test_the_password_file_is_read_when_clients_are_built(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("first\n")
    settings = _settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="u",
        kafka_sasl_password_file=secret,
    )
    assert kafka_python_kwargs(settings)["sasl_plain_password"] == "first"
    secret.write_text("rotated")
    assert aiokafka_kwargs(settings)["sasl_plain_password"] == "rotated"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_password": "p"}, "needs kafka_sasl_username"),  # noqa: E501
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"}, "needs kafka_sasl_password"),  # noqa: E501
        ({"kafka_sasl_username": "u", "kafka_sasl_password": "p"}, "kafka_security_protocol is PLAINTEXT"),  # noqa: E501
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"}, "not a readable file"),  # noqa: E501
        ({"kafka_ssl_cafile": "/etc/hostname"}, "TLS files are set"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/etc/hostname"}, "go together"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u",
             "kafka_sasl_password_file": "/nonexistent/pw"},
            "cannot read the SASL password file",
        ),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u",
             "kafka_sasl_password": "p", "kafka_sasl_password_file": "/etc/hostname"},
            "not both",
        ),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({"kafka_sasl_mechanism": "PLAIN"}, "kafka_sasl_mechanism"),
    ],
)  # fmt: skip
def test_inconsistent_security_settings_are_refused_clearly(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as error:
        _settings(**values)
    assert message in str(error.value)


def test_a_refused_setting_never_quotes_the_password() -> None:
    with pytest.raises(ValidationError) as error:
        _settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password=SECRET)
    assert SECRET not in str(error.value)


def _client_exchange(mechanism: str, user: str, password: str) -> tuple[ScramServerSession, bytes]:
    """A client's two SCRAM messages, computed with aiokafka's own client implementation."""
    from aiokafka.conn import ScramAuthenticator  # type: ignore[import-untyped]

    server = ScramServerSession(mechanism, {"alice": credential(mechanism, "right")})
    client = ScramAuthenticator(
        loop=None, sasl_plain_password=password, sasl_plain_username=user, sasl_mechanism=mechanism
    )
    first = client.first_message().encode()
    client.process_server_first_message(server.first(first).decode())
    return server, client.final_message().encode()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_server_accepts_the_right_password_only(mechanism: str) -> None:
    server, final = _client_exchange(mechanism, "alice", "right")
    assert server.final(final).startswith(b"v=") and server.username == "alice"
    for user, password in (("alice", "wrong"), ("mallory", "right")):
        server, final = _client_exchange(mechanism, user, password)
        with pytest.raises(ScramError, match="authentication failed"):
            server.final(final)
        assert server.username is None
