"""The MLLP listener over real TCP sockets, writing to the real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from adapters.hl7.framing import read_frame
from adapters.hl7.listener import MllpListener
from adapters.hl7.message import parse_message
from adapters.ingress import Ingress
from bus.deadletter import header_text
from bus.producer import EventProducer
from bus.settings import MllpSender, MllpSettings, Settings
from schemas.envelope import Envelope
from schemas.topics import REJECTED_INPUT, STAY_EVENTS

pytestmark = pytest.mark.kafka
DATA = Path(__file__).parents[1] / "data" / "hl7"
SB, EB = b"\x0b", b"\x1c\x0d"


def message(name: str, control_id: str | None = None) -> bytes:
    """A test message with a fresh MSH-10 (so each test has its own events)."""
    raw = (DATA / name).read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    first, sep, rest = raw.partition(b"\r")
    fields = first.split(b"|")
    fields[9] = (control_id or f"T-{uuid.uuid4().hex[:12]}").encode()
    return b"|".join(fields) + sep + rest


def frame(payload: bytes) -> bytes:
    return SB + payload + EB


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, *payloads: bytes) -> None:
        self.writer.write(b"".join(frame(p) for p in payloads))
        await self.writer.drain()

    async def ack(self) -> dict[str, str]:
        payload = await asyncio.wait_for(
            read_frame(self.reader, max_bytes=1 << 20, idle_timeout=20), 30
        )
        assert payload is not None, "connection closed without an ACK"
        msg = parse_message(payload)
        return {
            "code": msg.value("MSA", 1),
            "control": msg.value("MSA", 2),
            "err_location": msg.segment("ERR").raw(2) if msg.segment("ERR") else "",
            "err_text": msg.value("ERR", 8) if msg.segment("ERR") else "",
            "type": msg.value("MSH", 9, 1),
        }

    async def close(self) -> None:
        self.writer.close()


async def listener_for(bootstrap: str, settings: Settings, **mllp: object) -> MllpListener:
    producer = EventProducer(bootstrap, settings.kafka, timeout_s=3)
    cfg = MllpSettings(port=0, **mllp)  # type: ignore[arg-type]
    listener = MllpListener(Ingress(producer), cfg)
    await listener.start()
    return listener


@pytest.fixture
async def mllp(catalog_applied: str, settings: Settings) -> AsyncIterator[MllpListener]:
    listener = await listener_for(
        catalog_applied, settings, max_message_bytes=200_000, idle_timeout_s=5
    )
    yield listener
    await listener.stop()
    await listener.ingress.producer.stop()


async def connect(listener: MllpListener) -> Client:
    return Client(*await asyncio.open_connection("127.0.0.1", listener.port))


async def stay_records(bootstrap: str, event_ids: set[str], timeout: float = 15) -> list:
    consumer = AIOKafkaConsumer(
        STAY_EVENTS.name,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list = []
    try:
        end = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < end:
            batch = await consumer.getmany(timeout_ms=300)
            for rs in batch.values():
                for r in rs:
                    env = Envelope.decode(r.key, r.value, r.headers)
                    if env.id in event_ids:
                        found.append(env)
            if not batch and len({e.id for e in found}) >= len(event_ids):
                break
    finally:
        await consumer.stop()
    return found


def event_id(control: str) -> str:
    from adapters.hl7.to_fhir import event_id_for

    return event_id_for("030000178", control)


PAM = [
    ("adt_a01_utf8.hl7", "admission.notified"),
    ("adt_a01_8859-1.hl7", "admission.notified"),
    ("adt_a11_utf8.hl7", "admission.cancelled"),
    ("adt_a16_8859-1.hl7", "discharge.planned"),
    ("adt_a25_utf8.hl7", "discharge.cancelled"),
    ("adt_a03_8859-1.hl7", "discharge.completed"),
    ("adt_a13_utf8.hl7", "discharge.reverted"),
]


class TestMllpListener:
    @pytest.mark.parametrize(("name", "event_type"), PAM)
    async def test_each_pam_event_acked_after_write(
        self, mllp, catalog_applied, name, event_type
    ) -> None:
        control = f"T-{uuid.uuid4().hex[:10]}"
        client = await connect(mllp)
        await client.send(message(name, control))
        ack = await client.ack()
        await client.close()
        assert ack["code"] == "AA" and ack["control"] == control and ack["type"] == "ACK"
        (env,) = await stay_records(catalog_applied, {event_id(control)})
        assert env.type == event_type
        assert env.subject == "stay/urn:oid:1.2.250.1.211.12.1.2|2024000456"
        assert env.source.startswith("urn:carebus:hl7v2:030000178")

    async def test_unsupported_trigger_ar_with_err_and_kept(self, mllp, catalog_applied) -> None:
        control = f"T-{uuid.uuid4().hex[:10]}"
        raw = message("adt_a08_unsupported.hl7", control)
        client = await connect(mllp)
        await client.send(raw)
        ack = await client.ack()
        await client.close()
        assert ack["code"] == "AR" and ack["control"] == control
        assert ack["err_location"].startswith("MSH^1^9")
        rec = await rejected(catalog_applied, raw)
        assert header_text(rec.headers, "rejected_reply_id") == control
        assert "A08" in header_text(rec.headers, "rejected_reason")

    async def test_a16_without_date_names_pv2_9(self, mllp) -> None:
        client = await connect(mllp)
        await client.send(message("adt_a16_no_date.hl7"))
        ack = await client.ack()
        await client.close()
        assert ack["code"] == "AR" and ack["err_location"].startswith("PV2^1^9")

    async def test_pipelined_messages_answered_in_order(self, mllp, catalog_applied) -> None:
        controls = [f"P-{uuid.uuid4().hex[:8]}-{i}" for i in range(6)]
        names = ["adt_a01_utf8.hl7", "adt_a16_8859-1.hl7", "adt_a03_8859-1.hl7"] * 2
        client = await connect(mllp)
        await client.send(*(message(n, c) for n, c in zip(names, controls, strict=True)))
        acks = [await client.ack() for _ in controls]
        await client.close()
        assert [a["control"] for a in acks] == controls
        assert {a["code"] for a in acks} == {"AA"}
        found = await stay_records(catalog_applied, {event_id(c) for c in controls})
        assert len(found) == 6

    async def test_concurrent_connections(self, mllp) -> None:
        async def one(i: int) -> list[str]:
            client = await connect(mllp)
            codes = []
            for j in range(5):
                await client.send(message("adt_a01_utf8.hl7", f"C-{uuid.uuid4().hex[:6]}-{i}-{j}"))
                codes.append((await client.ack())["code"])
            await client.close()
            return codes

        results = await asyncio.gather(*(one(i) for i in range(25)))
        assert [c for r in results for c in r] == ["AA"] * 125

    async def test_retransmission_acked_again_but_one_event(self, mllp, catalog_applied) -> None:
        control = f"R-{uuid.uuid4().hex[:10]}"
        raw = message("adt_a16_8859-1.hl7", control)
        client = await connect(mllp)
        await client.send(raw)
        first = await client.ack()
        await client.send(raw)
        second = await client.ack()
        await client.close()
        # and on a new listener (e.g. after a restart) the event id is the same
        assert first["code"] == second["code"] == "AA"
        found = await stay_records(catalog_applied, {event_id(control)})
        assert len(found) == 1

    async def test_oversize_ar_and_connection_still_usable(self, mllp) -> None:
        big = message("adt_a01_utf8.hl7") + b"\rNTE|1||" + b"x" * 300_000
        client = await connect(mllp)
        await client.send(big)
        assert (await client.ack())["code"] == "AR"
        control = f"O-{uuid.uuid4().hex[:8]}"
        await client.send(message("adt_a01_utf8.hl7", control))
        ack = await client.ack()
        await client.close()
        assert ack["code"] == "AA" and ack["control"] == control

    async def test_garbage_gets_an_ar(self, mllp) -> None:
        client = await connect(mllp)
        await client.send(b"this is not HL7 at all")
        ack = await client.ack()
        await client.close()
        assert ack["code"] == "AR"

    async def test_idle_connection_is_closed(self, catalog_applied, settings) -> None:
        listener = await listener_for(catalog_applied, settings, idle_timeout_s=0.5)
        try:
            client = await connect(listener)
            data = await asyncio.wait_for(client.reader.read(10), 5)
            assert data == b""  # server closed the idle connection
        finally:
            await listener.stop()
            await listener.ingress.producer.stop()


async def rejected(bootstrap: str, raw: bytes, timeout: float = 15):
    consumer = AIOKafkaConsumer(
        REJECTED_INPUT.name,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        end = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < end:
            batch = await consumer.getmany(timeout_ms=300)
            for rs in batch.values():
                for r in rs:
                    if r.value == raw:
                        return r
    finally:
        await consumer.stop()
    raise AssertionError("no rejected-input record")


async def test_unknown_peer_refused(catalog_applied: str, settings: Settings) -> None:
    listener = await listener_for(
        catalog_applied, settings, senders=[MllpSender(id="chba", networks=["10.1.0.0/16"])]
    )
    try:
        client = await connect(listener)
        await client.send(message("adt_a01_utf8.hl7"))
        ack = await client.ack()
        await client.close()
        assert ack["code"] == "AR"
        assert "not a configured MLLP sender" in ack["err_text"]
    finally:
        await listener.stop()
        await listener.ingress.producer.stop()


async def test_hospital_cannot_send_for_another_finess(catalog_applied, settings) -> None:
    listener = await listener_for(
        catalog_applied,
        settings,
        senders=[MllpSender(id="other", networks=["127.0.0.0/8"], finess=["750712184"])],
    )
    try:
        client = await connect(listener)
        await client.send(message("adt_a16_8859-1.hl7"))
        ack = await client.ack()
        await client.close()
        assert ack["code"] == "AR" and ack["err_location"].startswith("MSH^1^4")
    finally:
        await listener.stop()
        await listener.ingress.producer.stop()


async def test_broker_down_answers_ae_never_aa(settings: Settings) -> None:
    listener = await listener_for("127.0.0.1:9", settings)
    try:
        client = await connect(listener)
        await client.send(message("adt_a16_8859-1.hl7"), b"garbage")
        first, second = await client.ack(), await client.ack()
        await client.close()
        assert first["code"] == "AE"  # valid but not stored: retry later
        assert second["code"] == "AE"  # invalid, but its rejection could not be kept either
    finally:
        await listener.stop()
        await listener.ingress.producer.stop()


@hsettings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.one_of(
        st.binary(max_size=2000),
        st.builds(
            lambda m, i, b: m[:i] + b + m[i + len(b) :],
            st.just((DATA / "adt_a16_8859-1.hl7").read_bytes()),
            st.integers(0, 800),
            st.binary(min_size=1, max_size=20),
        ),
    )
)
async def test_fuzzed_input_always_answered(mllp: MllpListener, payload: bytes) -> None:
    payload = payload.replace(SB, b"").replace(EB, b"")  # framing bytes are tested apart
    client = await connect(mllp)
    await client.send(payload)
    ack = await client.ack()
    await client.close()
    assert ack["code"] in {"AA", "AR", "AE"}
