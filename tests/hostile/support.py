"""Helpers shared by the hostile-input tests: MLLP client, rejected-input reader, probes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from adapters.hl7.framing import read_frame
from adapters.hl7.listener import MllpListener
from adapters.hl7.message import parse_message
from adapters.ingress import Ingress
from bus.deadletter import header_text
from bus.producer import EventProducer
from bus.settings import IngressSettings, MllpSettings, Settings
from schemas.topics import REJECTED_INPUT

DATA = Path(__file__).parents[1] / "data" / "hl7"
SB, EB = b"\x0b", b"\x1c\x0d"


def hl7(name: str, control_id: str | None = None) -> bytes:
    """A sample message (CR segment ends) with a fresh MSH-10."""
    raw = (DATA / name).read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    first, sep, rest = raw.partition(b"\r")
    fields = first.split(b"|")
    fields[9] = (control_id or f"H-{uuid.uuid4().hex[:12]}").encode()
    return b"|".join(fields) + sep + rest


def good() -> tuple[bytes, str]:
    control = f"G-{uuid.uuid4().hex[:12]}"
    return hl7("adt_a01_utf8.hl7", control), control


def frame(payload: bytes) -> bytes:
    return SB + payload + EB


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def to(cls, listener: MllpListener) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", listener.port))

    async def send(self, *payloads: bytes) -> None:
        self.writer.write(b"".join(frame(p) for p in payloads))
        await self.writer.drain()

    async def ack(self, timeout: float = 30) -> dict[str, str]:
        payload = await asyncio.wait_for(
            read_frame(self.reader, max_bytes=1 << 20, idle_timeout=timeout), timeout + 5
        )
        assert payload is not None, "connection closed without an ACK"
        msg = parse_message(payload)
        errs = msg.all("ERR")
        return {
            "code": msg.value("MSA", 1),
            "control": msg.value("MSA", 2),
            "err_location": " ".join(e.raw(2) for e in errs),
            "err_text": " | ".join(e.value(8) for e in errs),
            "err_code": " ".join(e.value(3) for e in errs),
            "type": msg.value("MSH", 9, 1),
            "raw": payload.decode("latin-1"),
        }

    async def closed_by_peer(self, timeout: float) -> bool:
        """True when the server closes the connection within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        return True
        except (ConnectionError, OSError):
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def start_listener(
    bootstrap: str, settings: Settings, rules: IngressSettings | None = None, **mllp: object
) -> MllpListener:
    """A listener on the real broker; `rules` None: no clock rule (the samples are from 2024)."""
    producer = EventProducer(bootstrap, settings.kafka, timeout_s=5)
    ingress = Ingress(producer, rules=rules)
    listener = MllpListener(ingress, MllpSettings(port=0, **mllp))  # type: ignore[arg-type]
    await listener.start()
    return listener


async def stop_listener(listener: MllpListener) -> None:
    await listener.stop()
    await listener.ingress.producer.stop()


async def rejected_records(
    bootstrap: str, wanted: list[bytes], timeout: float = 20
) -> dict[bytes, object]:
    """The care.rejected-input records whose value is one of `wanted`, read by a real
    consumer from the beginning of the topic (first record per value)."""
    want = set(wanted)
    found: dict[bytes, object] = {}
    consumer = AIOKafkaConsumer(
        REJECTED_INPUT.name,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        end = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < end and want - found.keys():
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for rec in records:
                    if rec.value in want and rec.value not in found:
                        found[rec.value] = rec
    finally:
        await consumer.stop()
    return found


def reason(record: object) -> str:
    return header_text(record.headers, "rejected_reason")  # type: ignore[attr-defined]
