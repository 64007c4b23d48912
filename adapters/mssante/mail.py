"""The MSSanté message for one delivery work item (pure: builds, never sends).

What a recipient gets, and why:
- **Subject** `[CareBus] <event> — réf. <case>`: no patient name. Headers are seen by
  every relay and journal, the body only by the mailbox owner; the patient's name and
  INS belong in the body (MSSanté *is* the secure channel for them), never in a header,
  attachment file names included (they are built from the LOINC type, not from titles).
- **Body**, French plain text readable in ten seconds: who sends, which patient (name,
  birth date, INS), what happened, what is expected and by when (`item.due`), the case
  reference.
- **Attachments**: the event's documents (decoded, hash-checked) and `IHE_XDM.ZIP`
  (same documents + metadata with the INS) so practice software files them unaided.
- **Message-ID** `<work-item-id@carebus.mssante.fr>`: the work item id is derived from
  (event, channel, recipient), so a redelivery is recognisably the same message and the
  MDN (`Disposition-Notification-To`, RFC 8098) names the item it acknowledges.
- **MSSanté headers** (Référentiel socle MSSanté #2 v1.0.1, §3.8, exigences ECO.2.4.1-3,
  as quoted by the DevBox Santé "Entêtes spécifiques X-MSS" page and ANS-compliant
  clients): `X-MSS-NIL` (product reference from convergence.esante.gouv.fr, on every
  mail), `X-MSS-CODECDA` (document type codes, comma-separated) and `X-MSS-INS` (`O`
  when the archive carries a qualified INS, else `N`) when an IHE_XDM archive is joined.
  The référentiel words the last two for CDA documents; CareBus sets them for the
  documents of its XDM archive (same CI-SIS type codes) so operators count them alike.
  `X-MSS-MES: FIN` only concerns mail to patients (Mon Espace Santé): not sent here.
- **Header injection is impossible**: every value that comes from data goes through
  `clean_header` (no CR, LF or other control/format character survives) and addresses
  through `mail_address` (a bare addr-spec or a ValueError).
"""

from __future__ import annotations

import binascii
import functools
import re
import unicodedata
import uuid
from datetime import datetime
from email.headerregistry import (
    Address,
)
from email.message import EmailMessage
from email.utils import encode_rfc2231, format_datetime, quote

from adapters.bundle_view import BundleView, DocumentView
from adapters.mssante.mime import PLAIN_ADDRESS
from adapters.mssante.mime import POLICY as _POLICY
from adapters.mssante.texts import clinical_body, notice_body, when
from adapters.mssante.xdm import CAREBUS_SOURCE_OID, XDM_ATTACHMENT_NAME, build_xdm, safe_file_name
from schemas.cases import CaseIdError, case_id, parse_case_id
from schemas.codes import DOC_TYPE_DISPLAY, EVENT_DISPLAY, EventType
from schemas.workitem import WorkItem

MESSAGE_ID_DOMAIN = "carebus.mssante.fr"
MAILER = "CareBus"
H_NIL = "X-MSS-NIL"
H_INS = "X-MSS-INS"
H_CODECDA = "X-MSS-CODECDA"
H_ITEM = "X-CareBus-Item"
H_EVENT = "X-CareBus-Event"
_ADDR = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253})")
_MIME_TOKEN = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_EXT = {
    "text/plain": "txt",
    "application/pdf": "pdf",
    "text/xml": "xml",
    "application/xml": "xml",
    "text/html": "html",
    "image/jpeg": "jpg",
    "image/png": "png",
    "text/rtf": "rtf",
}
_CHARSET = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9._:-]{1,40})\"?", re.IGNORECASE)
_URGENT = frozenset({"urgent", "asap", "stat"})


@functools.lru_cache(maxsize=64)
def _mailbox(display: str, addr_spec: str) -> str:
    """A configured mailbox (From) as the header machinery writes an Address: it quotes
    the display name itself, so specials in it (";", ",", "<") can never split it."""
    return str(Address(display, addr_spec=addr_spec))


def _param(name: str, value: str) -> str:
    """`name="value"` exactly as `Message.set_param` writes it (RFC 2231 if not ASCII)."""
    if value.isascii():
        return f'{name}="{quote(value)}"'
    return f"{name}*={encode_rfc2231(value, 'utf-8', '')}"


def clean_header(value: object, *, max_length: int = 200) -> str:
    """One safe header line from untrusted text.

    Removes CR, LF and every other control or format character (Unicode categories
    Cc, Cf, Zl, Zp: U+2028/U+2029/NEL included), collapses whitespace and caps length,
    so no value can start a new header or a new MIME part.
    """
    text = str(value)
    if not text.isprintable():  # printable: no Cc, Cf, Zl or Zp character to replace
        text = "".join(
            " " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text
        )
    return " ".join(text.split())[:max_length].strip()


def mail_address(value: str) -> str:
    """A bare addr-spec (`name@domain`), or ValueError: never a display name, never two."""
    text = clean_header(value, max_length=320).strip("<>").strip()
    if not _ADDR.fullmatch(text) or ".." in text:
        raise ValueError(f"not a usable mailbox address: {text!r}")
    return text


def message_id(item_id: str, domain: str = MESSAGE_ID_DOMAIN) -> str:
    """`<item-id@domain>`: stable for a work item, so redeliveries are recognisable."""
    local = re.sub(r"[^A-Za-z0-9.-]", "", item_id)[:128]
    if not local:
        raise ValueError("work item id is empty")
    return f"<{local}@{domain}>"


def case_reference(item: WorkItem, view: BundleView) -> str:
    """The short business id of the case (ADR-2025-000123, the stay number…)."""
    for candidate in (item.event.subject, item.event.correlation_id):
        try:
            return clean_header(parse_case_id(candidate)[2], max_length=40)
        except ValueError:
            continue
    try:
        event = view.event
        if event is not None:
            return clean_header(parse_case_id(case_id(event, view.bundle))[2], max_length=40)
    except (CaseIdError, ValueError):
        pass
    return clean_header(item.event.subject, max_length=40) or item.id[:8]


def mail_subject(event: EventType, case_ref: str, *, urgent: bool = False) -> str:
    flag = "URGENT — " if urgent else ""
    return clean_header(f"[CareBus] {flag}{EVENT_DISPLAY[event]} — réf. {case_ref}")


def _event(item: WorkItem, view: BundleView) -> EventType:
    event = view.event
    if event is None:
        try:
            event = EventType(item.event.type)
        except ValueError as exc:
            raise ValueError(f"unknown event type {item.event.type!r}") from exc
    return event


def _new_message(
    item: WorkItem,
    *,
    sender: str,
    sender_name: str,
    now: datetime,
    subject: str,
    read_receipt_to: str | None,
    product_ref: str,
) -> EmailMessage:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (RFC 5322 Date)")
    if not item.recipient.address:
        raise ValueError("work item has no recipient mailbox")
    msg = EmailMessage(policy=_POLICY)
    # Names go through Address objects, never formatted by hand: the header machinery
    # quotes or encodes a display name itself, so ";", ",", "<" in it can never split it.
    msg["From"] = _mailbox(clean_header(sender_name, max_length=80), mail_address(sender))
    to_name = clean_header(item.recipient.display, max_length=80)
    to_addr = mail_address(item.recipient.address)
    # no name and a plain dot-atom address: the Address would write just the addr-spec,
    # which is then stored verbatim (the Address still vets anything less plain)
    plain = not to_name and PLAIN_ADDRESS.fullmatch(to_addr)
    msg["To"] = to_addr if plain else Address(to_name, addr_spec=to_addr)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    item_id = item.id  # a uuid5 computed on each access
    msg["Message-ID"] = message_id(item_id)
    case = item.event.correlation_id or item.event.subject
    if case:  # one thread per case in the recipient's mail client
        msg["References"] = message_id(str(uuid.uuid5(uuid.NAMESPACE_URL, case)))
    if read_receipt_to:
        msg["Disposition-Notification-To"] = mail_address(read_receipt_to)
    msg["X-Mailer"] = MAILER
    if product_ref:
        msg[H_NIL] = clean_header(product_ref, max_length=64)
    msg[H_ITEM] = clean_header(item_id, max_length=64)
    msg[H_EVENT] = clean_header(item.event.id, max_length=64)
    return msg


def attachment_name(doc: DocumentView, index: int, taken: set[str]) -> str:
    """File name from the LOINC type (never the free title: it may name the patient)."""
    label = DOC_TYPE_DISPLAY.get(doc.doc_type, "")  # type: ignore[call-overload]
    ext = _EXT.get(doc.mime_type, "bin")
    name = f"{safe_file_name(label or f'document-{index}', max_length=60)}.{ext}"
    n = 2
    while name.lower() in taken:
        name = f"{safe_file_name(label or 'document', max_length=56)}-{n}.{ext}"
        n += 1
    taken.add(name.lower())
    return name


def _attachment(data: bytes, content_type: str, filename: str) -> EmailMessage:
    """The part `EmailMessage.add_attachment(data, maintype, subtype, filename=…,
    params={"charset": …})` makes (same headers in the same order, same base64 lines),
    each header written once instead of set, re-parsed and rewritten by `set_param`."""
    maintype, _, subtype = content_type.split(";", 1)[0].strip().lower().partition("/")
    if not (_MIME_TOKEN.fullmatch(maintype) and _MIME_TOKEN.fullmatch(subtype)):
        maintype, subtype = "application", "octet-stream"
    if maintype in ("multipart", "message"):  # bytes cannot be a container part
        maintype, subtype = "application", "octet-stream"
    part = EmailMessage(policy=_POLICY)
    disposition = f"attachment; {_param('filename', filename)}"
    if maintype == "text":  # keep the producer's charset: the bytes are sent untouched
        found = _CHARSET.search(content_type)
        part["Content-Transfer-Encoding"] = "base64"
        part["Content-Disposition"] = disposition
        charset = _param("charset", found.group(1).lower() if found else "utf-8")
        part["Content-Type"] = f"text/{subtype}; {charset}"
    else:
        part["Content-Type"] = f"{maintype}/{subtype}"
        part["Content-Transfer-Encoding"] = "base64"
        part["Content-Disposition"] = disposition
    part["MIME-Version"] = "1.0"
    # 76-character lines, as the content manager writes them for a 78-column policy
    b64 = binascii.b2a_base64(data, newline=False).decode("ascii")
    part.set_payload("".join(f"{b64[i : i + 76]}\n" for i in range(0, len(b64), 76)))
    return part


def _mixed(msg: EmailMessage, item_id: str, text: str, parts: list[EmailMessage]) -> None:
    """Make `msg` the multipart/mixed of `text` then `parts`, as `set_content(text)` then
    `add_attachment(…)` for each part would, without moving and re-parsing headers.

    The boundary comes from the item id instead of randomness: same item, same MIME.
    """
    body = EmailMessage(policy=_POLICY)
    _POLICY.content_manager.set_content(body, text, charset="utf-8")
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = f'multipart/mixed; boundary="=_carebus_{item_id}_0"'
    msg.attach(body)
    for part in parts:
        msg.attach(part)


def build_mail(
    item: WorkItem,
    bundle: dict,
    *,
    sender: str,
    now: datetime,
    read_receipt_to: str,
    product_ref: str = "",
    sender_name: str = "CareBus",
    source_id: str = CAREBUS_SOURCE_OID,
) -> EmailMessage:
    """The MSSanté mail of a work item. Bus notices (sla.*, discharge.late-notice/
    followup-due, delivery.*) are delegated to `build_notice_mail`."""
    view = BundleView(bundle)
    event = _event(item, view)
    if not event.inbound:
        return build_notice_mail(
            item,
            bundle,
            sender=sender,
            now=now,
            read_receipt_to=read_receipt_to,
            product_ref=product_ref,
            sender_name=sender_name,
        )
    item_id = item.id  # a uuid5 computed on each access
    patient = view.patient()
    docs = view.documents()
    focus = view.focus
    urgent = str(focus.get("priority", "")) in _URGENT
    ref = case_reference(item, view)
    msg = _new_message(
        item,
        sender=sender,
        sender_name=sender_name,
        now=now,
        subject=mail_subject(event, ref, urgent=urgent),
        read_receipt_to=read_receipt_to,
        product_ref=product_ref,
    )
    xdm = None
    if docs and patient is not None and patient.ins:
        xdm = build_xdm(
            view,
            submission_key=item_id,
            source_id=source_id,
            recipients=(item.recipient,),
            documents=docs,
        )
        codes = ",".join(
            dict.fromkeys(clean_header(d.doc_type, max_length=20) for d in docs if d.doc_type)
        )
        if codes:
            msg[H_CODECDA] = codes
        msg[H_INS] = "O" if patient.ins_qualified else "N"
    taken: set[str] = {XDM_ATTACHMENT_NAME.lower()}
    names = [attachment_name(d, i, taken) for i, d in enumerate(docs, start=1)]
    lines = clinical_body(
        event,
        view,
        recipient=clean_header(item.recipient.display, max_length=80),
        urgent=urgent,
        case_ref=ref,
        due=when(item.due),
        attachments=[(d.title, n) for d, n in zip(docs, names, strict=True)],
        archive=XDM_ATTACHMENT_NAME if xdm is not None else None,
        item_id=item_id,
    )
    text = "\n".join(clean_body_line(x) for x in lines) + "\n"
    if not docs:
        msg.set_content(text, charset="utf-8")
        return msg
    parts = [_attachment(d.content, d.content_type, n) for d, n in zip(docs, names, strict=True)]
    if xdm is not None:
        parts.append(_attachment(xdm, "application/zip", XDM_ATTACHMENT_NAME))
    _mixed(msg, item_id, text, parts)
    return msg


def clean_body_line(text: str) -> str:
    """Body text may hold anything printable; only stray control characters go."""
    if text.isprintable():  # the usual case: no Cc or Cf character to drop
        return text
    return "".join(c for c in text if c in "\t" or unicodedata.category(c) not in ("Cc", "Cf"))


def build_notice_mail(
    item: WorkItem,
    bundle: dict,
    *,
    sender: str,
    now: datetime,
    read_receipt_to: str | None = None,
    product_ref: str = "",
    sender_name: str = "CareBus",
) -> EmailMessage:
    """A short alert for a bus notice: the bus's sentence, the case, the deadline, the
    expected action. Notices carry no patient data, so neither does this mail."""
    view = BundleView(bundle)
    event = _event(item, view)
    if event.inbound:
        raise ValueError(f"{event} is not a bus notice: use build_mail")
    ref = case_reference(item, view)
    msg = _new_message(
        item,
        sender=sender,
        sender_name=sender_name,
        now=now,
        subject=mail_subject(event, ref),
        read_receipt_to=read_receipt_to,
        product_ref=product_ref,
    )
    deadline = when(item.due) or when(view.deadline())
    lines = notice_body(event, view, case_ref=ref, deadline=deadline, item_id=item.id)
    msg.set_content("\n".join(clean_body_line(x) for x in lines) + "\n", charset="utf-8")
    return msg
