"""CareBus's Kafka clients over the security a production cluster uses, on a real broker.

A second Apache Kafka broker, from the same jars as the embedded one, with three listeners:
PLAINTEXT (its own readiness probe only), SASL_SSL offering PLAIN and SCRAM-SHA-512 (the
SCRAM credential created at `kafka-storage format --add-scram` time, as on KRaft), and SSL
with `ssl.client.auth=required` (mutual TLS). The certificates (a CA, the broker's with
127.0.0.1 as SAN, a client's, and one from another CA) are made here with `cryptography`;
the broker reads them as PEM key/trust stores.

Over each secured listener: topics provisioned with the admin client, an EventProducer →
EventConsumer round trip, and the faust processors joining their group and getting their
partitions. Then what must be refused is: wrong passwords, a SCRAM user trying PLAIN, no
client certificate, a client certificate from another CA, and a broker certificate the
client does not trust.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr

from bus.consumer import ConsumerConfig, EventConsumer
from bus.embedded import EmbeddedKafka, free_port
from bus.errors import BrokerUnavailable
from bus.producer import EventProducer
from bus.provisioning import apply_topics, list_state
from bus.settings import KafkaSettings, Settings
from processors.app import Processors
from processors.runner import run_processors
from processors.sla.policy import SlaPolicies
from schemas.envelope import Envelope, new_event_id
from schemas.topics import CATALOG, TopicSpec
from tests.integration.processors_support import Lookup

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PLAIN_USER, PLAIN_PASSWORD = "carebus-ingress", "plain-secret-1"
SCRAM_USER, SCRAM_PASSWORD = "carebus-processors", "scram-secret-2"


# --- a small PKI ----------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,  # what Kafka's PEM key store reads
        serialization.NoEncryption(),
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], cn: str, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


@dataclass
class Pki:
    ca: Path  # the CA clients and broker trust
    broker_store: Path  # broker key + certificate (PEM key store)
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path
    rogue_ca: Path


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    ca = _ca("CareBus test CA")
    other = _ca("Some other CA")
    broker_cert, broker_key = _leaf(ca, "kafka-0", server=True)
    client_cert, client_key = _leaf(ca, "carebus-adapters", server=False)
    rogue_cert, rogue_key = _leaf(other, "carebus-adapters", server=False)
    files = {
        "ca.pem": _pem(ca[0]),
        "other-ca.pem": _pem(other[0]),
        "broker.pem": _pem_key(broker_key) + _pem(broker_cert) + _pem(ca[0]),
        "client.crt": _pem(client_cert),
        "client.key": _pem_key(client_key),
        "rogue.crt": _pem(rogue_cert),
        "rogue.key": _pem_key(rogue_key),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
        (d / name).chmod(0o600)
    return Pki(
        ca=d / "ca.pem",
        broker_store=d / "broker.pem",
        client_cert=d / "client.crt",
        client_key=d / "client.key",
        rogue_cert=d / "rogue.crt",
        rogue_key=d / "rogue.key",
        rogue_ca=d / "other-ca.pem",
    )


# --- the secured broker ---------------------------------------------------------------


@dataclass
class SecureBroker:
    sasl_ssl: str  # SASL_SSL, PLAIN + SCRAM-SHA-512
    mtls: str  # SSL, client certificate required
    pki: Pki

    def plain(self, password: str = PLAIN_PASSWORD, user: str = PLAIN_USER) -> KafkaSettings:
        return KafkaSettings(
            bootstrap=self.sasl_ssl,
            security_protocol="SASL_SSL",
            sasl_mechanism="PLAIN",
            sasl_username=user,
            sasl_password=SecretStr(password),
            ssl_cafile=self.pki.ca,
            request_timeout_ms=5000,
        )

    def scram(self, password: str = SCRAM_PASSWORD) -> KafkaSettings:
        return KafkaSettings(
            bootstrap=self.sasl_ssl,
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=SCRAM_USER,
            sasl_password=SecretStr(password),
            ssl_cafile=self.pki.ca,
            request_timeout_ms=5000,
        )

    def tls(self, *, cert: bool = True, rogue: bool = False) -> KafkaSettings:
        return KafkaSettings(
            bootstrap=self.mtls,
            security_protocol="SSL",
            ssl_cafile=self.pki.ca,
            ssl_certfile=(self.pki.rogue_cert if rogue else self.pki.client_cert) if cert else None,
            ssl_keyfile=(self.pki.rogue_key if rogue else self.pki.client_key) if cert else None,
            request_timeout_ms=5000,
        )

    def variant(self, name: str) -> KafkaSettings:
        return {"sasl-plain": self.plain, "sasl-scram": self.scram, "mtls": self.tls}[name]()


def broker_security(pki: Pki) -> dict[str, str]:
    """server.properties of the two secured listeners (names as Kafka lower-cases them)."""
    props: dict[str, str] = {}
    for listener in ("saslssl", "mtls"):
        p = f"listener.name.{listener}."
        props |= {
            p + "ssl.keystore.type": "PEM",
            p + "ssl.keystore.location": str(pki.broker_store),
            p + "ssl.truststore.type": "PEM",
            p + "ssl.truststore.location": str(pki.ca),
            p + "ssl.endpoint.identification.algorithm": "",
        }
    props |= {
        "listener.name.mtls.ssl.client.auth": "required",
        "listener.name.saslssl.sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
        "listener.name.saslssl.plain.sasl.jaas.config": (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{PLAIN_USER}="{PLAIN_PASSWORD}";'
        ),
        "listener.name.saslssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
    }
    return props


@pytest.fixture(scope="module")
async def secure(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecureBroker]:
    root = tmp_path_factory.mktemp("kafka-security")
    pki = make_pki(root / "pki")
    settings = Settings(data_dir=root / "data", kafka=KafkaSettings(embedded_port=0))
    host = settings.kafka.embedded_host
    sasl_port, mtls_port = free_port(host), free_port(host)
    broker = EmbeddedKafka(
        settings,
        extra_listeners={"SASLSSL": ("SASL_SSL", sasl_port), "MTLS": ("SSL", mtls_port)},
        extra_config=broker_security(pki),
        format_args=(
            "--add-scram",
            f"SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]",
        ),
    )
    await broker.start()
    try:
        sb = SecureBroker(f"{host}:{sasl_port}", f"{host}:{mtls_port}", pki)
        # the catalog, provisioned by the admin client over mutual TLS
        await apply_topics(sb.mtls, sb.tls(), CATALOG)
        yield sb
    finally:
        await broker.stop()


VARIANTS = ("sasl-plain", "sasl-scram", "mtls")


@pytest.mark.parametrize("variant", VARIANTS)
async def test_event_round_trip(secure: SecureBroker, variant: str) -> None:
    kafka = secure.variant(variant)
    topic = f"test.security.{variant}.{uuid.uuid4().hex[:6]}"
    changes = await apply_topics(
        kafka.bootstrap, kafka, [TopicSpec(topic, "test", key="case", partitions=2)]
    )
    assert [c.action for c in changes] == ["created"]
    state = await list_state(kafka.bootstrap, kafka)
    assert state[topic].partitions == 2

    producer = EventProducer(kafka.bootstrap, kafka)
    await producer.start()
    received: list[Envelope] = []
    done = asyncio.Event()

    async def handle(env: Envelope, _record: object) -> None:
        received.append(env)
        if len(received) == 3:
            done.set()

    consumer = EventConsumer(
        kafka.bootstrap,
        kafka,
        ConsumerConfig(group_id=f"carebus-test-{variant}", topics=(topic,)),
        handle,
        producer,
    )
    sent = [
        Envelope(
            id=new_event_id(),
            type="referral.requested",
            source=f"urn:test:{variant}",
            subject=f"referral/urn:test|{i}",
            data=b'{"resourceType":"Bundle","n":%d}' % i,
        )
        for i in range(3)
    ]
    try:
        for env in sent:
            meta = await producer.publish(topic, env)
            assert meta.offset >= 0  # acknowledged by the broker
        await consumer.start()
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        try:
            await asyncio.wait_for(done.wait(), 30)
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
    finally:
        await consumer.stop()
        await producer.stop()
    assert sorted(e.id for e in received) == sorted(e.id for e in sent)
    assert {e.data for e in received} == {e.data for e in sent}


@pytest.mark.parametrize("variant", VARIANTS)
async def test_faust_processors_join_and_get_partitions(
    secure: SecureBroker, variant: str, tmp_path: Path
) -> None:
    kafka = secure.variant(variant)
    settings = Settings(data_dir=tmp_path, kafka=kafka)
    producer = EventProducer(kafka.bootstrap, kafka)
    await producer.start()
    ctx = Processors(producer=producer, lookup=Lookup(), policies=SlaPolicies())
    app_id = f"carebus-sec-{variant}-{uuid.uuid4().hex[:6]}"
    try:
        # run_processors returns only once faust's group gave it partitions and its
        # changelog tables are recovered: consumer, producer and admin all went through
        async with run_processors(settings, kafka.bootstrap, ctx, app_id=app_id) as app:
            assigned = {tp.topic for tp in app.consumer.assignment()}
            creds = app.conf.broker_credentials
    finally:
        await producer.stop()
    assert {"care.referral.events", "care.sla.ticks", f"{app_id}-sla-cases-changelog"} <= assigned
    expected = {"sasl-plain": "SASL_SSL", "sasl-scram": "SASL_SSL", "mtls": "SSL"}[variant]
    assert creds.protocol.value == expected
    if variant == "sasl-scram":
        assert creds.mechanism.value == "SCRAM-SHA-512"


def _refused_settings(secure: SecureBroker) -> dict[str, KafkaSettings]:
    return {
        "plain-wrong-password": secure.plain(password="not-the-password"),
        "plain-unknown-user": secure.plain(user="mallory"),
        "scram-wrong-password": secure.scram(password="not-the-password"),
        # a SCRAM-only user has no PLAIN credential
        "scram-user-over-plain": secure.plain(user=SCRAM_USER, password=SCRAM_PASSWORD),
        "mtls-no-client-cert": secure.tls(cert=False),
        "mtls-cert-from-other-ca": secure.tls(rogue=True),
        # the client must not trust a broker its CA did not sign
        "untrusted-broker": secure.tls().model_copy(update={"ssl_cafile": secure.pki.rogue_ca}),
    }


@pytest.mark.parametrize(
    "case",
    [
        "plain-wrong-password",
        "plain-unknown-user",
        "scram-wrong-password",
        "scram-user-over-plain",
        "mtls-no-client-cert",
        "mtls-cert-from-other-ca",
        "untrusted-broker",
    ],
)
async def test_refused(secure: SecureBroker, case: str) -> None:
    kafka = _refused_settings(secure)[case]
    producer = EventProducer(kafka.bootstrap, kafka, timeout_s=8)
    with pytest.raises(BrokerUnavailable):
        await producer.start()
        # a refusal that only shows at the first request still must not store anything
        await producer.send_raw("care.referral.events", b"k", b"v", [])
    await producer.stop()
