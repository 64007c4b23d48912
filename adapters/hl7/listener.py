"""The MLLP listener: HL7 v2 ADT from hospitals onto the bus, one truthful ACK per message.

asyncio, one task per connection, messages pipelined on a connection are answered in
order. The ACK is decided after the durable write:
- AA: the event is on the broker (acks=all), or it is a retransmission already there;
- AR + ERR: the message is invalid or unsupported; it was kept on care.rejected-input;
- AE: the broker did not acknowledge (the event or the rejection): the hospital keeps
  the message and retransmits later; the same MSH-10 yields the same event id, so the
  retry can never create a second event.
Logs carry control ids, facilities and event ids, never a patient's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

import orjson

from adapters.hl7.ack import build_ack
from adapters.hl7.adt import AdtEvent, map_adt
from adapters.hl7.framing import FrameError, FrameTooLarge, read_frame, write_frame
from adapters.hl7.message import Message, ParserSettings, parse_message
from adapters.hl7.senders import SenderRegistry, may_send_for
from adapters.hl7.to_fhir import source_for, to_bundle
from adapters.ingress import Ingress
from bus import metrics
from bus.errors import BrokerUnavailable
from bus.settings import MllpSender, MllpSettings
from schemas.outcome import Issue, IssueCode, ValidationFailed
from schemas.validate import validate_message

log = logging.getLogger("carebus.mllp")
HL7_MEDIA = "x-application/hl7-v2+er7"


class MllpListener:
    def __init__(self, ingress: Ingress, settings: MllpSettings) -> None:
        self.ingress = ingress
        self.settings = settings
        self.parser = ParserSettings(
            default_charset=settings.default_charset,
            max_bytes=settings.max_message_bytes,
            refuse_utf8_as_8859=True,
        )
        self.senders = SenderRegistry.from_settings(settings.senders)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._connection,
            self.settings.host,
            self.settings.port,
            limit=64 * 1024,
            reuse_address=True,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("MLLP listening on %s:%d", self.settings.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let in-flight messages finish their write and ACK, then close."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername") or ("?", 0)
        if len(self._connections) >= self.settings.max_connections:
            # refused at once (the peer sees the connection closed); counted, not logged
            # one by one: a flood must not become a log flood
            metrics.REJECTED.labels("mllp", "too-many-connections").inc()
            writer.close()
            return
        self._connections.add(task)
        metrics.OPEN_CONNECTIONS.inc()
        sender = self.senders.for_peer(str(peer[0]))
        try:
            while True:
                try:
                    frame = await read_frame(
                        reader,
                        max_bytes=self.settings.max_message_bytes,
                        idle_timeout=self.settings.idle_timeout_s,
                    )
                except FrameTooLarge as exc:
                    started = time.perf_counter()
                    issue = Issue(IssueCode.TOO_LONG, str(exc), "MSH")
                    ack = await self._refuse(exc.head, None, [issue], f"peer:{peer[0]}")
                    await self._answer(writer, ack, started)
                    continue
                except FrameError as exc:
                    log.info("MLLP connection from %s closed: %s", peer[0], type(exc).__name__)
                    return
                if frame is None:
                    return
                started = time.perf_counter()
                ack = await self.handle(frame, sender, str(peer[0]))
                await self._answer(writer, ack, started)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # stop(): end this connection quietly (asyncio's server callback would log a
            # cancelled task as an error); the message in flight, if any, got no ACK and
            # will be retransmitted by the hospital.
            return
        finally:
            self._connections.discard(task)
            metrics.OPEN_CONNECTIONS.dec()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, writer: asyncio.StreamWriter, ack: bytes, started: float) -> None:
        await write_frame(writer, ack)
        metrics.ACK_SECONDS.labels("mllp").observe(time.perf_counter() - started)

    async def handle(self, frame: bytes, sender: MllpSender | None, peer: str) -> bytes:
        """Decide the answer to one message (the whole pipeline but the socket)."""
        who = sender.id if sender else f"peer:{peer}"
        try:
            msg = parse_message(frame, self.parser)
        except ValidationFailed as exc:
            return await self._refuse(frame, None, list(exc.issues), who)
        if sender is None:
            issue = Issue(IssueCode.SECURITY, "this address is not a configured MLLP sender")
            return await self._refuse(frame, msg, [issue], who)
        try:
            adt = self._with_facility(map_adt(msg), sender)
            if not may_send_for(sender, adt.facility_finess):
                raise ValidationFailed(
                    [
                        Issue(
                            IssueCode.FORBIDDEN,
                            f"sender {sender.id} may not send for FINESS {adt.facility_finess}",
                            "MSH-4",
                        )
                    ]
                )
            raw = orjson.dumps(to_bundle(adt))
            validated = validate_message(raw, structural=False)
            dated = self.ingress.check_clock(validated, where="MSH-7")
            if dated is not None:
                raise ValidationFailed([dated])
            reused = self.ingress.check_reuse(validated)
            if reused is not None:
                raise ValidationFailed([dataclasses.replace(reused, expression="MSH-10")])
        except ValidationFailed as exc:
            return await self._refuse(frame, msg, list(exc.issues), who)
        try:
            accepted = await self.ingress.accept(validated, channel="mllp", source=source_for(adt))
        except BrokerUnavailable:
            return build_ack(
                msg, [Issue(IssueCode.TRANSIENT, "bus unavailable, retry later")], code="AE"
            )
        log.info(
            "MLLP %s control=%s facility=%s → %s%s",
            adt.trigger,
            adt.control_id,
            adt.facility_finess,
            accepted.event_id,
            " (retransmission)" if accepted.duplicate else "",
        )
        return build_ack(msg, code="AA")

    @staticmethod
    def _with_facility(adt: AdtEvent, sender: MllpSender) -> AdtEvent:
        if adt.facility_finess or not sender.default_finess:
            return adt
        return dataclasses.replace(adt, facility_finess=sender.default_finess)

    async def _refuse(
        self, frame: bytes, msg: Message | None, issues: list[Issue], who: str
    ) -> bytes:
        """AR after the refusal is kept; AE if it cannot be kept (the sender retries)."""
        incoming: Message | bytes = msg if msg is not None else frame
        try:
            await self.ingress.reject(
                frame,
                channel="mllp",
                sender=who,
                issues=issues,
                content_type=HL7_MEDIA,
                reply_id=msg.control_id if msg is not None else "",
            )
        except BrokerUnavailable:
            return build_ack(
                incoming, [Issue(IssueCode.TRANSIENT, "bus unavailable, retry later")], code="AE"
            )
        return build_ack(incoming, issues, code="AR")
