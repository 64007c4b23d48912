"""The security settings map to the same connection options for aiokafka clients
(`KafkaSettings.client_options`) and for the faust processors (`faust_broker_options`)."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import SecretStr

from bus.settings import KafkaSettings
from processors.app import faust_broker_options

SECURITY_KEYS = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
)


def faust_view(kafka: KafkaSettings) -> dict:
    """What faust hands aiokafka for these settings (its own conversion function)."""
    return dict(credentials_to_aiokafka_auth(faust_broker_options(kafka).get("broker_credentials")))


def test_plaintext_is_the_default() -> None:
    k = KafkaSettings()
    opts = k.client_options()
    assert opts["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in opts and "sasl_mechanism" not in opts
    assert "broker_credentials" not in faust_broker_options(k)
    assert faust_view(k) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_sasl_mechanism_user_and_password_reach_both(mechanism: str, protocol: str) -> None:
    k = KafkaSettings(
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username="carebus-processors",
        sasl_password=SecretStr("s3cret"),
    )
    opts, fview = k.client_options(), faust_view(k)
    for key in SECURITY_KEYS:
        assert opts[key] == fview[key], key
    assert opts["sasl_mechanism"] == mechanism
    assert opts["sasl_plain_password"] == "s3cret"
    if protocol == "SASL_SSL":
        assert isinstance(opts["ssl_context"], ssl.SSLContext)
        assert isinstance(fview["ssl_context"], ssl.SSLContext)
        assert fview["ssl_context"].verify_mode == ssl.CERT_REQUIRED
        assert fview["ssl_context"].check_hostname
    else:
        assert "ssl_context" not in opts and fview["ssl_context"] is None
    assert "s3cret" not in repr(faust_broker_options(k)["broker_credentials"])
    assert "s3cret" not in repr(k)


def test_sasl_without_mechanism_means_plain() -> None:
    k = KafkaSettings(security_protocol="SASL_SSL", sasl_username="u", sasl_password="p")
    assert k.client_options()["sasl_mechanism"] == "PLAIN" == faust_view(k)["sasl_mechanism"]


def test_ssl_with_client_certificate(tmp_path: Path) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "carebus-adapters")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "c.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    k = KafkaSettings(
        security_protocol="SSL",
        ssl_cafile=tmp_path / "c.crt",
        ssl_certfile=tmp_path / "c.crt",
        ssl_keyfile=tmp_path / "c.key",
    )
    opts, fopts = k.client_options(), faust_broker_options(k)
    assert opts["security_protocol"] == "SSL" and "sasl_mechanism" not in opts
    assert isinstance(fopts["broker_credentials"], faust.SSLCredentials)
    fview = faust_view(k)
    assert fview["security_protocol"] == "SSL"
    # the CA from the settings is what both trust (and nothing weaker than verified TLS)
    for ctx in (opts["ssl_context"], fview["ssl_context"]):
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert [c["subject"] for c in ctx.get_ca_certs()] == [
            ((("commonName", "carebus-adapters"),),)
        ]


def test_client_id_reaches_faust() -> None:
    k = KafkaSettings(client_id="carebus-eu-west")
    assert faust_broker_options(k)["broker_client_id"] == "carebus-eu-west"
    assert k.client_options()["client_id"] == "carebus-eu-west"
