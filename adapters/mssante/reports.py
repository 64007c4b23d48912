"""Delivery reports in mail, parsed (pure: bytes in, facts out, no I/O).

Two standards say what happened to a mail after it was accepted:
- MDN, RFC 8098: `multipart/report; report-type=disposition-notification`, whose
  `message/disposition-notification` part says `Disposition: …; displayed` when the
  recipient opened it (`deleted`, `processed`, `dispatched` are not reads);
- DSN, RFC 3464: `report-type=delivery-status`, a per-message block then one block per
  recipient with `Action: failed|delayed|delivered|relayed|expanded`, `Status` and
  `Diagnostic-Code`; only `failed` is final (a delay is the relay still trying).
The RFC 6533 `message/global-*` forms are read the same way. Which mail a report is
about comes from the returned headers (`X-CareBus-Item`, `X-CareBus-Case`,
`X-CareBus-Event`, `Message-ID`) or the MDN's `Original-Message-ID`; item ids are
accepted only in the form the bus makes them (a UUID in our Message-ID domain).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser, HeaderParser
from enum import StrEnum

from adapters.mssante.mail import H_EVENT, H_ITEM, MESSAGE_ID_DOMAIN
from adapters.mssante.sent_index import H_CASE, valid_item_id
from schemas.codes import EventType

_MDN_TYPES = ("message/disposition-notification", "message/global-disposition-notification")
_DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
_HEADER_TYPES = ("text/rfc822-headers", "message/rfc822", "message/global-headers")
_MSGID = re.compile(r"<([^<>@\s]+)@([^<>\s]+)>")


class ReceiptKind(StrEnum):
    READ = "read"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Receipt:
    """One actionable fact from a report: a recipient read, or never got, our mail."""

    kind: ReceiptKind
    receipt_id: str  # the report's Message-ID (or a hash of it): the idempotency key
    recipient: str
    detail: str
    original_message_id: str = ""
    item_id: str = ""  # "" when the report names no mail of ours
    case: str = ""  # X-CareBus-Case quoted by the report, if any
    event_id: str = ""  # X-CareBus-Event quoted by the report, if any

    @property
    def event_type(self) -> EventType:
        return (
            EventType.DELIVERY_READ if self.kind is ReceiptKind.READ else EventType.DELIVERY_FAILED
        )

    @property
    def status_event_id(self) -> str:
        return str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"carebus:receipt:{self.receipt_id}:{self.recipient}")
        )


def _clean(value: object) -> str:
    return " ".join(str(value).split())


def _fields(items: Iterable[tuple[str, object]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in items:
        out.setdefault(name.lower(), _clean(value))
    return out


def _text_blocks(text: str) -> list[dict[str, str]]:
    parser = HeaderParser(policy=policy.compat32)
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [f for f in (_fields(parser.parsestr(b + "\n").items()) for b in blocks) if f]


def _blocks(part: Message) -> list[dict[str, str]]:
    """The field blocks of a report part, however the parser shaped it."""
    payload = part.get_payload()
    if isinstance(payload, list):
        out: list[dict[str, str]] = []
        for sub in payload:
            if fields := _fields(sub.items()):
                out.append(fields)
            body = sub.get_payload()
            if isinstance(body, str) and body.strip():
                out.extend(_text_blocks(body))
        return out
    raw = part.get_payload(decode=True)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
    return _text_blocks(text)


def _original_headers(report: Message) -> dict[str, str]:
    for part in report.walk():
        ctype = part.get_content_type()
        if ctype not in _HEADER_TYPES:
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload:
            return _fields(payload[0].items())
        blocks = _blocks(part)
        if blocks:
            return blocks[0]
    return {}


def _typed(value: str) -> str:
    """`rfc822; name@domain` → `name@domain`, `smtp; 550 …` → `550 …`."""
    _, sep, rest = value.partition(";")
    return (rest if sep else value).strip()


def _address(value: str) -> str:
    return _typed(value).strip("<>").lower()


def item_of(message_id: str, quoted_item: str = "") -> str:
    """The work item a mail was for, from X-CareBus-Item or our Message-ID form."""
    if quoted_item and valid_item_id(quoted_item.strip().lower()):
        return quoted_item.strip().lower()
    m = _MSGID.search(message_id)
    if m and m.group(2).lower() == MESSAGE_ID_DOMAIN and valid_item_id(m.group(1).lower()):
        return m.group(1).lower()
    return ""


def _receipt_id(report: Message, raw: bytes | None) -> str:
    mid = _clean(report.get("Message-ID", ""))
    if mid:
        return mid
    basis = raw if raw is not None else report.as_bytes()
    return "sha256:" + hashlib.sha256(basis).hexdigest()


def parse_report(raw: bytes | Message) -> list[Receipt]:
    """The receipts an incoming mail carries: [] when it is not an MDN saying
    `displayed` nor a DSN with a `failed` recipient (delays, "deleted" MDNs, replies
    and spam are not delivery outcomes)."""
    if isinstance(raw, bytes | bytearray):
        data: bytes | None = bytes(raw)
        report: Message = BytesParser(policy=policy.default).parsebytes(data)
    else:
        data, report = None, raw
    if report.get_content_type() != "multipart/report":
        return []
    quoted = _original_headers(report)
    base = {
        "receipt_id": _receipt_id(report, data),
        "case": quoted.get(H_CASE.lower(), ""),
        "event_id": quoted.get(H_EVENT.lower(), ""),
    }
    out: list[Receipt] = []
    for part in report.walk():
        ctype = part.get_content_type()
        if ctype in _MDN_TYPES:
            out.extend(_mdn(_blocks(part), quoted, base))
        elif ctype in _DSN_TYPES:
            out.extend(_dsn(_blocks(part), quoted, base))
    return out


def _mdn(blocks: list[dict[str, str]], quoted: dict[str, str], base: dict) -> list[Receipt]:
    if not blocks:
        return []
    f = blocks[0]
    disposition = f.get("disposition", "")
    modes, _, kind = disposition.partition(";")
    dtype = kind.split("/")[0].strip().lower()
    if dtype != "displayed":
        return []
    original = f.get("original-message-id", "") or quoted.get("message-id", "")
    recipient = _address(f.get("final-recipient", "") or f.get("original-recipient", ""))
    return [
        Receipt(
            kind=ReceiptKind.READ,
            recipient=recipient,
            detail=f"lu ({dtype}, {modes.strip()})" if modes.strip() else f"lu ({dtype})",
            original_message_id=original,
            item_id=item_of(original, quoted.get(H_ITEM.lower(), "")),
            **base,
        )
    ]


def _dsn(blocks: list[dict[str, str]], quoted: dict[str, str], base: dict) -> list[Receipt]:
    original = quoted.get("message-id", "")
    item = item_of(original, quoted.get(H_ITEM.lower(), ""))
    out = []
    for f in blocks[1:] if len(blocks) > 1 else blocks:  # first block: per-message fields
        if f.get("action", "").lower() != "failed":
            continue
        recipient = _address(f.get("final-recipient", "") or f.get("original-recipient", ""))
        status = f.get("status", "")
        diagnostic = _typed(f.get("diagnostic-code", ""))
        detail = f"non distribué (statut {status}{': ' + diagnostic if diagnostic else ''})"
        out.append(
            Receipt(
                kind=ReceiptKind.FAILED,
                recipient=recipient,
                detail=detail[:300],
                original_message_id=original,
                item_id=item,
                **base,
            )
        )
    return out
