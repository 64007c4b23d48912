"""Read receipts and bounces from the bus's MSSanté mailbox → delivery.read / delivery.failed.

Mail is the one channel whose outcome arrives later, as mail: a read receipt (MDN,
RFC 8098: multipart/report; report-type=disposition-notification) when the professional
opened it, or a bounce (DSN, RFC 3464: report-type=delivery-status) when a relay gave
up after having accepted it. Both become events on care.delivery.status, where the SLA
processing counts a read as the acknowledgement it waits for.

- Parsing is pure (`adapters.mssante.reports`, tested without sockets). The item is found by
  `X-CareBus-Item` in the returned headers, else by the `<item-id@carebus.mssante.fr>`
  Original-Message-ID; the case it belongs to by the sender's `SentIndex`, else by
  the `X-CareBus-Case`/`X-CareBus-Event` headers a bounce quotes.
- Idempotent: the event id is derived from the report's own Message-ID, so a receipt
  seen twice (crash after publishing, before deleting) is one event to every consumer.
- At least once: the event is acknowledged by the broker *before* the mail is flagged
  `\\Seen \\Deleted` and expunged. Mail that is not a receipt, or a receipt for mail the
  bus did not send, is left for humans, marked with the `$CareBusSkipped` keyword so
  it is not fetched again.
- IMAP over implicit TLS only (aioimaplib has no STARTTLS), server verified and client
  certificate presented, like SMTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from aioimaplib import IMAP4_SSL
from pydantic import SecretStr

from adapters.mssante.reports import Receipt, ReceiptKind, item_of, parse_report
from adapters.mssante.sent_index import SentIndex, SentRef
from adapters.mssante.tls import mssante_client_context
from bus.producer import EventProducer
from bus.settings import Settings
from schemas.cases import case_ref
from schemas.envelope import Envelope, child_traceparent
from schemas.events import build_event
from schemas.model import BusNoticeInfo
from schemas.topics import DELIVERY_STATUS

__all__ = [
    "PollResult",
    "Receipt",
    "ReceiptKind",
    "ReceiptPoller",
    "item_of",
    "parse_report",
    "receipt_event",
    "resolve",
]

log = logging.getLogger("carebus.receipts")

SKIPPED = "$CareBusSkipped"


def resolve(receipt: Receipt, index: SentIndex | None) -> SentRef | None:
    """The sent mail a receipt is about: the index first, the quoted headers second."""
    if receipt.item_id and index is not None:
        ref = index.lookup(receipt.item_id)
        if ref is not None:
            return ref
    if receipt.case and receipt.event_id:
        return SentRef(
            item_id=receipt.item_id,
            event_id=receipt.event_id,
            event_type="",
            subject=receipt.case,
            correlation_id=receipt.case,
            traceparent="",
            address=receipt.recipient,
        )
    return None


def receipt_event(receipt: Receipt, ref: SentRef, *, now: datetime | None = None) -> Envelope:
    """delivery.read / delivery.failed for a receipt, caused by the routed event."""
    etype = receipt.event_type
    address = receipt.recipient or ref.address
    info = BusNoticeInfo(
        about=case_ref(ref.subject),
        text=f"mssante → {ref.role or ref.recipient_kind or address}: {receipt.detail}"[:500],
        channel="mssante",
        address=address,
        about_event=ref.event_id or None,
        recipient_id=ref.recipient_id or None,  # whose SLA deadline a read acknowledges
    )
    event_id = receipt.status_event_id
    bundle = build_event(etype, info, event_id=event_id, timestamp=now or datetime.now(UTC))
    return Envelope(
        id=event_id,
        type=etype.value,
        source="urn:carebus:bus",
        subject=ref.subject,
        data=orjson.dumps(bundle),
        correlation_id=ref.correlation_id or ref.subject,
        causation_id=ref.event_id or event_id,
        traceparent=child_traceparent(ref.traceparent or None),
    )


@dataclass(slots=True)
class PollResult:
    published: list[Envelope] = field(default_factory=list)
    skipped: int = 0  # mails left in place (not receipts, or not about our mail)


class ReceiptPoller:
    """Poll the bus's mailbox over IMAPS and publish what its receipts say."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls_context: ssl.SSLContext,
        username: str,
        password: SecretStr,
        producer: EventProducer,
        index: SentIndex | None = None,
        folder: str = "INBOX",
        timeout_s: float = 30.0,
        topic: str = DELIVERY_STATUS.name,
    ) -> None:
        self.host, self.port, self.tls_context = host, port, tls_context
        self.username, self.password = username, password
        self.producer, self.index = producer, index
        self.folder, self.timeout_s, self.topic = folder, timeout_s, topic

    @classmethod
    def from_settings(cls, settings: Settings, producer: EventProducer) -> ReceiptPoller:
        ms = settings.mssante
        if not ms.imap_host or ms.password is None:
            raise ValueError("receipt polling needs mssante.imap_host and mssante.password")
        return cls(
            host=ms.imap_host,
            port=ms.imap_port,
            tls_context=mssante_client_context(settings),
            username=ms.username or ms.sender,
            password=ms.password,
            producer=producer,
            index=SentIndex(settings.data_dir),
            folder=ms.imap_folder,
            timeout_s=ms.timeout_s,
        )

    async def _ok(self, what: str, coro: object) -> list:
        resp = await coro  # type: ignore[misc]
        if resp.result != "OK":
            raise RuntimeError(f"IMAP {what} refused: {resp.result} {resp.lines[-1:]!r}")
        return list(resp.lines)

    async def poll_once(self) -> PollResult:
        """One pass over the folder; raises on connection/protocol errors."""
        result = PollResult()
        client = IMAP4_SSL(
            host=self.host, port=self.port, timeout=self.timeout_s, ssl_context=self.tls_context
        )
        try:
            await client.wait_hello_from_server()
            await self._ok("LOGIN", client.login(self.username, self.password.get_secret_value()))
            await self._ok("SELECT", client.select(self.folder))
            lines = await self._ok(
                "SEARCH", client.uid_search("UNDELETED", "UNKEYWORD", SKIPPED, charset=None)
            )
            uids = [u for line in lines[:-1] for u in bytes(line).decode().split() if u.isdigit()]
            deleted = False
            for uid in uids:
                lines = await self._ok("FETCH", client.uid("fetch", uid, "(BODY.PEEK[])"))
                raw = next((bytes(x) for x in lines if isinstance(x, bytearray)), b"")
                envs = self._events(raw)
                if envs is None:
                    result.skipped += 1
                    await self._ok("STORE", client.uid("store", uid, "+FLAGS", f"({SKIPPED})"))
                    continue
                await self.producer.publish_many((self.topic, e) for e in envs)
                result.published.extend(envs)
                await self._ok("STORE", client.uid("store", uid, "+FLAGS", r"(\Seen \Deleted)"))
                deleted = True
            if deleted:
                await self._ok("EXPUNGE", client.expunge())
        finally:
            with contextlib.suppress(Exception):
                await client.logout()
        return result

    def _events(self, raw: bytes) -> list[Envelope] | None:
        """Events for one mail, or None to leave it (not a receipt / not ours)."""
        try:
            receipts = parse_report(raw)
        except Exception:
            log.warning("unparseable mail in the bus mailbox left in place", exc_info=True)
            return None
        envs = []
        for r in receipts:
            ref = resolve(r, self.index)
            if ref is None:
                log.warning("receipt %s names no mail sent by the bus; left", r.receipt_id)
                continue
            try:
                envs.append(receipt_event(r, ref))
            except ValueError as exc:
                log.warning("receipt %s: cannot build event: %s", r.receipt_id, exc)
        return envs or None

    async def run(self, stop: asyncio.Event, interval_s: float = 60.0) -> None:
        """Poll until `stop` is set; failures are logged and retried next round."""
        while not stop.is_set():
            try:
                res = await self.poll_once()
                if res.published:
                    log.info("receipts: %d event(s) published", len(res.published))
            except Exception:
                log.exception("receipt polling failed; next try in %.0fs", interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
