"""Read-only, typed view of a CareBus message Bundle for the outbound adapters.

The MSSanté mail builder, the XDM packager and the MHD filer all need the same few
facts (patient and INS, documents with their bytes, authors with RPPS/FINESS, the
focus resource). Reading them once, here, keeps the FHIR JSON paths in one place and
makes every adapter refuse a corrupted document the same way: a letter whose bytes
do not match its declared size or SHA-1 is never mailed nor filed (`BundleError`).

Pure: works on the plain dict the bus carries (already validated at ingress), no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from schemas.codes import (
    DOC_TYPE_DISPLAY,
    EXT_DEADLINE,
    EXT_SHARING_OPPOSITION,
    FINESS,
    INS_SYSTEMS,
    LOINC,
    RPPS,
    EventType,
)

PARIS = ZoneInfo("Europe/Paris")
#: the attribute of the PractitionerRole telecom that names the MSSanté mailbox
_EMAIL = "email"


class BundleError(ValueError):
    """The bundle cannot be delivered as is (corrupt document, dangling reference…)."""


def parse_fhir_datetime(value: str) -> datetime:
    """FHIR date/dateTime/instant → aware datetime. A date alone or a naive time is
    French wall-clock time (what a hospital means), never UTC by accident."""
    text = value.strip()
    if len(text) == 10:
        text += "T00:00:00"
    elif len(text) == 7:
        text += "-01T00:00:00"
    elif len(text) == 4:
        text += "-01-01T00:00:00"
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=PARIS)


def to_utc(value: str | datetime) -> datetime:
    parsed = parse_fhir_datetime(value) if isinstance(value, str) else value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=PARIS)
    return parsed.astimezone(UTC)


def _d(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _l(value: object) -> list:
    return value if isinstance(value, list) else []


def _s(value: object) -> str:
    return value if isinstance(value, str) else ""


def identifier_value(resource: dict, system: str) -> str:
    """Value of the first identifier of `resource` in `system` ("" when none)."""
    for ident in _l(resource.get("identifier")):
        if _d(ident).get("system") == system and _s(_d(ident).get("value")):
            return _s(ident["value"])
    return ""


def extension(resource: dict, url: str) -> dict | None:
    for ext in _l(resource.get("extension")):
        if _d(ext).get("url") == url:
            return _d(ext)
    return None


@dataclass(frozen=True, slots=True)
class OrgView:
    """An organisation: `finess_id` is the idNatStruct ("1" + FINESS) or ""."""

    finess_id: str
    name: str


@dataclass(frozen=True, slots=True)
class PersonView:
    """A practitioner: `rpps_id` is the idNatPs ("8" + RPPS) or "" when unknown."""

    rpps_id: str
    family: str
    given: str
    profession: str = ""  # NOS TRE_G15 code ("10" médecin, "60" infirmier…)
    specialty: str = ""
    mailbox: str = ""
    organization: OrgView | None = None

    @property
    def display(self) -> str:
        """How a French letter names a colleague: "Dr Anaïs Gérard-Moreau" for doctors."""
        name = f"{self.given} {self.family}".strip()
        return f"Dr {name}" if self.profession == "10" else name


@dataclass(frozen=True, slots=True)
class PatientView:
    family: str
    given: str
    birth_date: str  # YYYY-MM-DD
    gender: str
    ins: str
    ins_system: str
    sharing_opposition: bool | None  # None: the producer said nothing

    @property
    def display(self) -> str:
        """Given name then family name in capitals, as identity-vigilance rules print it."""
        return f"{self.given} {self.family.upper()}".strip()

    @property
    def ins_qualified(self) -> bool:
        """INS with its OID and the four identity traits (birth name, first given name,
        birth date, sex): the ANS definition behind the X-MSS-INS header."""
        return bool(
            self.ins
            and self.ins_system in INS_SYSTEMS
            and self.family
            and self.given
            and self.birth_date
            and self.gender in ("male", "female", "other", "unknown")
        )


@dataclass(frozen=True, slots=True)
class DocumentView:
    """One document of the event, bytes decoded and checked against size and hash."""

    unique_id: str  # masterIdentifier value: urn:uuid:… or urn:oid:…
    doc_type: str  # LOINC code ("" when not LOINC-coded)
    type_display: str
    title: str
    content: bytes
    content_type: str
    language: str
    created: str  # FHIR dateTime ("" when unknown)
    author_person: PersonView | None
    author_org: OrgView | None

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def sha1_hex(self) -> str:
        return hashlib.sha1(self.content).hexdigest()  # noqa: S324 - XDS mandates SHA-1

    @property
    def sha1_b64(self) -> str:
        """FHIR Attachment.hash: base64 of the SHA-1 digest bytes."""
        return base64.b64encode(hashlib.sha1(self.content).digest()).decode("ascii")  # noqa: S324

    @property
    def mime_type(self) -> str:
        """The bare media type, parameters dropped ("text/plain")."""
        return self.content_type.split(";", 1)[0].strip().lower() or "application/octet-stream"


class BundleView:
    """Typed accessors over one message Bundle (dict); cheap to build, never mutates."""

    def __init__(self, bundle: dict) -> None:
        if _d(bundle).get("resourceType") != "Bundle":
            raise BundleError("not a FHIR Bundle")
        self.bundle = bundle
        self._by_url: dict[str, dict] = {}
        self.resources: list[dict] = []
        for entry in _l(bundle.get("entry")):
            res = _d(_d(entry).get("resource"))
            if not res:
                continue
            self.resources.append(res)
            url = _s(_d(entry).get("fullUrl"))
            if url:
                self._by_url[url] = res
            if res.get("id") and res.get("resourceType"):
                self._by_url[f"{res['resourceType']}/{res['id']}"] = res

    # --- message level -------------------------------------------------------------
    @property
    def header(self) -> dict:
        first = self.resources[0] if self.resources else {}
        return first if first.get("resourceType") == "MessageHeader" else {}

    @property
    def event(self) -> EventType | None:
        code = _s(_d(self.header.get("eventCoding")).get("code"))
        try:
            return EventType(code)
        except ValueError:
            return None

    @property
    def event_id(self) -> str:
        return _s(_d(self.bundle.get("identifier")).get("value")) or _s(self.bundle.get("id"))

    @property
    def timestamp(self) -> str:
        return _s(self.bundle.get("timestamp"))

    def resolve(self, reference: object) -> dict | None:
        """The in-bundle resource a Reference points to (None for logical/dangling ones)."""
        return self._by_url.get(_s(_d(reference).get("reference")))

    @property
    def focus(self) -> dict:
        focus = _l(self.header.get("focus"))
        return (self.resolve(focus[0]) or {}) if focus else {}

    def first(self, resource_type: str) -> dict | None:
        return next((r for r in self.resources if r.get("resourceType") == resource_type), None)

    def deadline(self) -> str:
        """The focus's CareBus deadline extension (bus notices), "" when none."""
        ext = extension(self.focus, EXT_DEADLINE)
        return _s(ext.get("valueDateTime")) if ext else ""

    # --- people --------------------------------------------------------------------
    def organization(self, res: dict | None) -> OrgView | None:
        if not res or res.get("resourceType") != "Organization":
            return None
        return OrgView(finess_id=identifier_value(res, FINESS), name=_s(res.get("name")))

    def person(self, res: dict | None) -> PersonView | None:
        """A Practitioner or PractitionerRole (with its practitioner and organisation)."""
        if not res:
            return None
        role: dict = {}
        if res.get("resourceType") == "PractitionerRole":
            role, res = res, self.resolve(res.get("practitioner")) or {}
        if res.get("resourceType") != "Practitioner":
            return None
        name = _d(next(iter(_l(res.get("name"))), {}))
        mailbox = next(
            (
                _s(t.get("value"))
                for t in map(_d, _l(role.get("telecom")))
                if t.get("system") == _EMAIL and _s(t.get("value"))
            ),
            "",
        )
        code = _d(next(iter(_l(role.get("code"))), {}))
        coding = _d(next(iter(_l(code.get("coding"))), {}))
        specialty = _d(next(iter(_l(role.get("specialty"))), {}))
        return PersonView(
            rpps_id=identifier_value(res, RPPS),
            family=_s(name.get("family")),
            given=" ".join(_s(g) for g in _l(name.get("given")) if _s(g)),
            profession=_s(coding.get("code")),
            specialty=_s(specialty.get("text")),
            mailbox=mailbox,
            organization=self.organization(self.resolve(role.get("organization"))),
        )

    def party(self, reference: object) -> PersonView | OrgView | None:
        res = self.resolve(reference)
        return self.person(res) or self.organization(res)

    @property
    def sender(self) -> PersonView | OrgView | None:
        return self.party(self.header.get("sender"))

    def patient(self) -> PatientView | None:
        res = self.first("Patient")
        if res is None:
            return None
        ins, system = "", ""
        for ident in map(_d, _l(res.get("identifier"))):
            if ident.get("system") in INS_SYSTEMS and _s(ident.get("value")):
                ins, system = _s(ident["value"]), _s(ident["system"])
                break
        name = _d(next(iter(_l(res.get("name"))), {}))
        ext = extension(res, EXT_SHARING_OPPOSITION)
        opposed = ext.get("valueBoolean") if ext else None
        return PatientView(
            family=_s(name.get("family")),
            given=_s(next(iter(_l(name.get("given"))), "")),
            birth_date=_s(res.get("birthDate")),
            gender=_s(res.get("gender")),
            ins=ins,
            ins_system=system,
            sharing_opposition=opposed if isinstance(opposed, bool) else None,
        )

    # --- documents -----------------------------------------------------------------
    def documents(self) -> list[DocumentView]:
        """Every DocumentReference with inline content, in bundle order."""
        return [
            self.document(r) for r in self.resources if r.get("resourceType") == "DocumentReference"
        ]

    def document(self, res: dict) -> DocumentView:
        content = _l(res.get("content"))
        att = _d(_d(content[0]).get("attachment")) if content else {}
        data = _s(att.get("data"))
        if not data:
            raise BundleError("DocumentReference has no inline attachment data")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BundleError("DocumentReference attachment is not valid base64") from exc
        size = att.get("size")
        if isinstance(size, int) and size != len(raw):
            raise BundleError(f"attachment size {size} does not match its {len(raw)} bytes")
        declared = _s(att.get("hash"))
        digest = hashlib.sha1(raw).digest()  # noqa: S324 - FHIR Attachment.hash is SHA-1
        if declared and declared != base64.b64encode(digest).decode("ascii"):
            raise BundleError("attachment SHA-1 does not match its bytes: refusing to deliver")
        coding = next(
            (c for c in map(_d, _l(_d(res.get("type")).get("coding"))) if c.get("system") == LOINC),
            {},
        )
        doc_type = _s(coding.get("code"))
        authors = [self.resolve(a) for a in _l(res.get("author"))]
        person = next((p for p in map(self.person, authors) if p), None)
        org = next((o for o in map(self.organization, authors) if o), None)
        master = _d(res.get("masterIdentifier"))
        return DocumentView(
            unique_id=_s(master.get("value")),
            doc_type=doc_type,
            type_display=_s(coding.get("display"))
            or DOC_TYPE_DISPLAY.get(doc_type, "")  # type: ignore[call-overload]
            or "Document",
            title=_s(att.get("title")) or _s(res.get("description")) or "Document",
            content=raw,
            content_type=_s(att.get("contentType")) or "application/octet-stream",
            language=_s(att.get("language")) or "fr-FR",
            created=_s(att.get("creation")) or _s(res.get("date")),
            author_person=person,
            author_org=org or (person.organization if person else None),
        )
