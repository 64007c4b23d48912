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
import sys
import unicodedata
import uuid
from collections.abc import Callable
from datetime import datetime
from email.headerregistry import (
    Address,
    AddressHeader,
    BaseHeader,
    DateHeader,
    HeaderRegistry,
    MessageIDHeader,
    UnstructuredHeader,
)
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import encode_rfc2231, format_datetime, parsedate_to_datetime, quote
from typing import Any

from adapters.bundle_view import BundleView, DocumentView, PatientView
from adapters.mssante.texts import NOTICE_EXPECTED, clinical_facts, notice_text, party_name, when
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


#: headers whose values come from code or configuration (see `_HeaderFactory`)
_FIXED = frozenset({"mime-version", "content-type", "content-transfer-encoding"})
_FIXED |= {"content-disposition", "from"}
#: printable ASCII words separated by single spaces
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")
_DOT_ATOM = r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
_PLAIN_MSG_ID = re.compile(f"<{_DOT_ATOM}@{_DOT_ATOM}>")
_PLAIN_ADDRESS = re.compile(f"{_DOT_ATOM}@{_DOT_ATOM}")


def _fixed(name: str, value: str) -> bool:
    """A value written by code or configuration, which mails share (multipart
    Content-Types excepted: their boundary is per mail)."""
    return name.lower() in _FIXED and not value.lower().startswith("multipart/")


class _HeaderFactory(HeaderRegistry):
    """The stdlib header registry, with two memos.

    - `HeaderRegistry.__getitem__` builds a new class with `type()` for every header
      set or read (a fifth of a mail's build time); the class depends only on the name.
    - `_fixed` headers take a few values (`1.0`, `base64`, `text/plain; charset="utf-8"`,
      an attachment's type and LOINC-derived file name, the sender) that the content
      manager and the generator set and read again several times per mail: each is
      parsed once. Header objects are immutable, so mails can share them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}
        self._fixed = functools.lru_cache(maxsize=256)(super().__call__)

    def map_to_type(self, name: str, cls: type[BaseHeader]) -> None:
        super().map_to_type(name, cls)
        self._classes.clear()
        self._fixed.cache_clear()

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(key)
        return cls

    def __call__(self, name: str, value: Any) -> BaseHeader:
        if isinstance(value, str) and _fixed(name, value):
            return self._fixed(name, value)  # type: ignore[no-any-return]
        return super().__call__(name, value)


class _MailPolicy(EmailPolicy):
    """`policy.default`, storing verbatim the values whose fold is `Name: value`.

    Such a value is kept as the parser keeps a received header (parsed if read) rather
    than parsed now and refolded by every flatten (most of the generator's time). A
    value qualifies when it is one line of printable ASCII words separated by single
    spaces, without `=?`, and either
    - its header is unstructured (X-…, References…): folding gives the value itself;
    - it is a bare address or a Message-ID (`dot-atom@dot-atom`, `<…>`), or a Date in
      the canonical form `format_datetime` writes: the very text these headers fold;
    - it is a `_fixed` value whose fold was checked once to be exactly that line.
    Anything else, CR/LF refusal included, is `EmailPolicy`'s own handling.
    """

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if isinstance(value, str) and self._verbatim(name, value):
            return (name, value)
        return super().header_store_parse(name, value)  # type: ignore[no-any-return]

    def _verbatim(self, name: str, value: str) -> bool:
        if (
            len(name) + 2 + len(value) > (self.max_line_length or sys.maxsize)
            or "=?" in value
            or not _PLAIN.fullmatch(value)
        ):
            return False
        if self._grammar(name)(value):
            return True
        return _fixed(name, value) and self._folds_verbatim(name, value)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one module-level policy, never freed
    def _grammar(self, name: str) -> Callable[[str], bool]:
        """Which plain values of this header fold to themselves, by its class."""
        kind = self.header_factory[name]  # type: ignore[index]
        if issubclass(kind, UnstructuredHeader):
            return bool
        if issubclass(kind, MessageIDHeader):
            return lambda value: bool(_PLAIN_MSG_ID.fullmatch(value))
        if issubclass(kind, AddressHeader):
            return lambda value: bool(_PLAIN_ADDRESS.fullmatch(value))
        if issubclass(kind, DateHeader):
            return _canonical_date
        return lambda value: False

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one module-level policy, never freed
    def _folds_verbatim(self, name: str, value: str) -> bool:
        header = super().header_store_parse(name, value)[1]
        return bool(header.fold(policy=self) == f"{name}: {value}{self.linesep}")


def _canonical_date(value: str) -> bool:
    try:
        return bool(format_datetime(parsedate_to_datetime(value)) == value)
    except (TypeError, ValueError):
        return False


#: `policy.default` (what `EmailMessage()` uses) with the above; mails built here carry it
_POLICY = _MailPolicy(header_factory=_HeaderFactory())


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
    # Address objects, not formatted strings: the header machinery quotes or encodes the
    # display name itself, so specials in a name (";", ",", "<") can never split it.
    msg["From"] = _mailbox(clean_header(sender_name, max_length=80), mail_address(sender))
    to_name = clean_header(item.recipient.display, max_length=80)
    to_addr = mail_address(item.recipient.address)
    # without a name, the bare addr-spec (what the Address would write) may be stored as is
    msg["To"] = Address(to_name, addr_spec=to_addr) if to_name else to_addr
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


def _born(patient: PatientView) -> str:
    word = {"female": "née", "male": "né"}.get(patient.gender, "né(e)")
    if not patient.birth_date:
        return ""
    y, _, rest = patient.birth_date.partition("-")
    m, _, d = rest.partition("-")
    return f", {word} le {d}/{m}/{y}" if d else f", {word} en {y}"


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
    what, expected = clinical_facts(event, view)
    due = when(item.due)
    lines = [
        f"Bonjour {clean_header(item.recipient.display, max_length=80)},".replace(" ,", ","),
        "",
        f"{EVENT_DISPLAY[event]}{' (URGENT)' if urgent else ''} — message de "
        f"{party_name(view.sender)} transmis par CareBus.",
        "",
    ]
    if patient is not None:
        ins = f" — INS {patient.ins}" if patient.ins else " — INS non transmise"
        label = "Patiente" if patient.gender == "female" else "Patient"
        lines.append(f"{label} : {patient.display}{_born(patient)}{ins}")
    lines += [f"Dossier : {ref}", "", what, ""]
    lines.append(f"Attendu de votre part : {expected}" + (f", avant le {due}" if due else "") + ".")
    if docs:
        lines += ["", "Pièces jointes :"]
        lines += [f" - {d.title} ({n})" for d, n in zip(docs, names, strict=True)]
        if xdm is not None:
            lines.append(
                f" - {XDM_ATTACHMENT_NAME} : les mêmes documents avec leurs métadonnées "
                "(INS, type, auteur) pour intégration dans votre logiciel."
            )
    lines += [
        "",
        "-- ",
        "Message envoyé par CareBus (coordination des soins) pour le compte de "
        "l'émetteur. Un accusé de lecture est demandé.",
        f"Réf. technique : {item_id}",
    ]
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
    expected = NOTICE_EXPECTED.get(event, "pour information")
    lines = [
        "Bonjour,",
        "",
        f"{EVENT_DISPLAY[event]} — alerte CareBus.",
        "",
        notice_text(view),
        "",
        f"Dossier : {ref}",
        f"Attendu : {expected}" + (f", avant le {deadline}" if deadline else "") + ".",
        "",
        "-- ",
        "Alerte automatique CareBus. Le détail du dossier est dans votre logiciel ou le "
        "tableau de bord de la coordination.",
        f"Réf. technique : {item.id}",
    ]
    msg.set_content("\n".join(clean_body_line(x) for x in lines) + "\n", charset="utf-8")
    return msg
