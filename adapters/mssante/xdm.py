"""The `IHE_XDM.ZIP` attachment of an MSSanté mail (IHE ITI-32 XDM, CI-SIS usage).

Layout (IHE ITI TF-2b §3.32, the ANS "Guide d'intégration MSSanté / DMP dans un LPS"):

    README.TXT                      who made the archive, with what
    INDEX.HTM                       human index of the content
    IHE_XDM/SUBSET01/METADATA.XML   ebRIM SubmitObjectsRequest (see `adapters.mssante.ebrim`)
    IHE_XDM/SUBSET01/DOC0001.TXT    the documents, named in 8.3 upper case as XDM asks

Why deterministic: a work item may be delivered twice (at-least-once). Every byte here
comes from the event (document creation time, event timestamp) and the work item id,
never from the clock or randomness, and every zip member carries the same fixed
timestamp and attributes, so a redelivery builds the very same archive.

Why sanitised names: document names come from producers. XDM members use generated
8.3 names, and `safe_file_name` / `safe_member_path` make any other name a single flat
component (no `..`, no absolute path, no backslash, no drive, no control character), so
no archive we build can write outside the directory it is extracted to.
"""

from __future__ import annotations

import html
import io
import re
import unicodedata
import uuid
import zipfile
from collections.abc import Sequence

from adapters.bundle_view import (
    BundleError,
    BundleView,
    DocumentView,
    OrgView,
    PersonView,
    to_utc,
)
from adapters.mssante.ebrim import (
    Submission,
    XdmEntry,
    metadata_xml,
    oid_uuid,
    org_xon,
    person_xcn,
    type_code,
)
from adapters.xds_codes import CAREBUS_SOURCE_OID, oid_of
from schemas.workitem import Recipient, RecipientKind

XDM_ATTACHMENT_NAME = "IHE_XDM.ZIP"
SUBSET_DIR = "IHE_XDM/SUBSET01"
METADATA_PATH = f"{SUBSET_DIR}/METADATA.XML"
#: every member carries this timestamp when the event has none usable (zip epoch)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_EXTENSIONS = {
    "text/plain": "TXT",
    "application/pdf": "PDF",
    "text/xml": "XML",
    "application/xml": "XML",
    "text/html": "HTM",
    "text/rtf": "RTF",
    "application/rtf": "RTF",
    "image/jpeg": "JPG",
    "image/png": "PNG",
    "image/tiff": "TIF",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = re.compile(r"^(CON|PRN|AUX|NUL|COM\d|LPT\d)(\..*)?$", re.IGNORECASE)


def safe_file_name(name: str, *, default: str = "document", max_length: int = 100) -> str:
    """One flat, portable file name from untrusted text.

    Accents are folded to ASCII (readers on every OS), anything but letters, digits,
    `.`, `_` and `-` becomes `_` (so `/`, `\\`, `:` and control characters cannot
    survive), leading dots are dropped (no `..`, no hidden file), Windows device names
    are prefixed, and the length is capped keeping the extension.
    """
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("_", folded).strip("._-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    if not cleaned:
        cleaned = _UNSAFE.sub("_", default).strip("._-") or "document"
    if _RESERVED.match(cleaned):
        cleaned = f"_{cleaned}"
    if len(cleaned) > max_length:
        stem, dot, ext = cleaned.rpartition(".")
        if dot and 0 < len(ext) <= 10 and stem:
            cleaned = f"{stem[: max_length - len(ext) - 1]}.{ext}"
        else:
            cleaned = cleaned[:max_length]
    return cleaned


def safe_member_path(*parts: str) -> str:
    """A zip member path made of sanitised components: always relative, always inside."""
    return "/".join(safe_file_name(p) for p in parts)


def document_file_name(index: int, mime_type: str) -> str:
    """XDM document file name: DOC0001.TXT… (8.3, upper case)."""
    return f"DOC{index:04d}.{_EXTENSIONS.get(mime_type, 'BIN')}"


def _zip_time(stamp: str) -> tuple[int, int, int, int, int, int]:
    try:
        t = to_utc(stamp)
    except ValueError:
        return _ZIP_EPOCH
    if t.year < 1980 or t.year > 2107:
        return _ZIP_EPOCH
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


def _member(zf: zipfile.ZipFile, path: str, data: bytes, when: tuple[int, ...]) -> None:
    """Write one member with fixed metadata (the deterministic-bytes guarantee)."""
    info = zipfile.ZipInfo(path, date_time=when)  # type: ignore[arg-type]
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # unix, whatever the build host
    info.external_attr = 0o100644 << 16
    zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)


def recipient_hl7(recipient: Recipient) -> str:
    """XDS intendedRecipient (XON|XCN|XTN): the professional or facility + the mailbox."""
    xon, xcn = "", ""
    if recipient.kind is RecipientKind.PRACTITIONER and recipient.id:
        ident = recipient.id if len(recipient.id) == 12 else f"8{recipient.id}"
        xcn = person_xcn(PersonView(rpps_id=ident, family="", given=""))
    elif recipient.kind is RecipientKind.ORGANIZATION and recipient.id:
        ident = recipient.id if len(recipient.id) == 10 else f"1{recipient.id}"
        xon = org_xon(OrgView(finess_id=ident, name=recipient.display))
    xtn = f"^^Internet^{recipient.address}" if recipient.address else ""
    return f"{xon}|{xcn}|{xtn}"


def _readme(entries: Sequence[XdmEntry]) -> bytes:
    lines = [
        "CareBus - archive IHE XDM (ITI-32) jointe a un message MSSante",
        "",
        "Emetteur : CareBus, bus d'evenements de coordination des soins",
        "Application : CareBus (https://carebus.fr)",
        "Contenu : voir INDEX.HTM ; metadonnees IHE_XDM/SUBSET01/METADATA.XML",
        f"Documents : {len(entries)}",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


def _index(entries: Sequence[XdmEntry]) -> bytes:
    rows = "\n".join(
        f'<li><a href="{html.escape(f"{SUBSET_DIR}/{e.file_name}")}">'
        f"{html.escape(e.doc.title)}</a> ({html.escape(e.doc.type_display)})</li>"
        for e in entries
    )
    page = (
        '<!DOCTYPE html>\n<html lang="fr"><head><meta charset="utf-8">'
        "<title>Contenu de l'archive IHE XDM</title></head><body>\n"
        "<h1>Documents transmis par CareBus</h1>\n<ul>\n"
        f"{rows}\n</ul>\n"
        f'<p><a href="README.TXT">README.TXT</a> — '
        f'<a href="{METADATA_PATH}">métadonnées XDM</a></p>\n</body></html>\n'
    )
    return page.encode("utf-8")


def build_xdm(
    bundle: dict | BundleView,
    *,
    submission_key: str,
    source_id: str = CAREBUS_SOURCE_OID,
    recipients: Sequence[Recipient] = (),
    documents: Sequence[DocumentView] | None = None,
) -> bytes:
    """The IHE_XDM.ZIP bytes for the event's documents.

    `submission_key` (the work item id) seeds the SubmissionSet uniqueId, so each
    delivery has its own submission while a redelivery reuses it. Raises `BundleError`
    when there is nothing to package or no INS to file it under (XDM needs a patientId).
    """
    view = bundle if isinstance(bundle, BundleView) else BundleView(bundle)
    docs = list(view.documents() if documents is None else documents)
    patient = view.patient()
    if not docs:
        raise BundleError("no document to package in IHE_XDM.ZIP")
    if patient is None or not patient.ins:
        raise BundleError("IHE_XDM.ZIP needs the patient's INS (XDS patientId)")
    entries = [
        XdmEntry(
            entry_id=f"urn:uuid:{oid_uuid(f'{submission_key}/doc/{i}')}",
            file_name=document_file_name(i, d.mime_type),
            unique_id=oid_of(d.unique_id, fallback=f"{submission_key}/{i}"),
            doc=d,
        )
        for i, d in enumerate(docs, start=1)
    ]
    first = docs[0]
    sender = view.sender
    submission = Submission(
        entry_id=f"urn:uuid:{oid_uuid(f'{submission_key}/submission')}",
        unique_id=f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{submission_key}/ss').int}",
        source_id=source_id,
        submission_time=view.timestamp or first.created,
        patient=patient,
        content_type=type_code(first),  # contentTypeCode: the clinical type of the letter
        author_person=sender if isinstance(sender, PersonView) else first.author_person,
        author_org=sender if isinstance(sender, OrgView) else first.author_org,
        intended_recipients=tuple(recipient_hl7(r) for r in recipients),
    )
    when = _zip_time(view.timestamp or first.created)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _member(zf, "README.TXT", _readme(entries), when)
        _member(zf, "INDEX.HTM", _index(entries), when)
        _member(zf, METADATA_PATH, metadata_xml(submission, entries), when)
        for e in entries:
            _member(zf, f"{SUBSET_DIR}/{e.file_name}", e.doc.content, when)
    return buf.getvalue()
