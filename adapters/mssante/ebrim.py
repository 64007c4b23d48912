"""IHE XDM `METADATA.XML`: an ebRIM 3.0 SubmitObjectsRequest describing the documents.

One RegistryPackage (the SubmissionSet), one ExtrinsicObject (DocumentEntry) per
document, one HasMember Association per document. The receiving MSSanté client reads
it to file the letter in the right patient record (INS in `patientId`), to check the
bytes (`hash`, `size`) and to type the document (LOINC `typeCode`).

Where the identifiers come from (looked up, not guessed):
- classification / external-identifier scheme UUIDs: IHE ITI TF-3 §4.2.5, as
  published in the ANS DRIMBox source (github.com/mbajatANS/DIM_diffusion_dimagerie_medicale,
  `dmp/xades/utils/XadesUUID.java`) and XdsKit (`Xdsb/ClassificationSchemes.cs`);
- French encodings: authorPerson XCN `idNatPs^NOM^Prénom^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS`,
  authorInstitution XON `Nom^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^idNatStruct`, INS as
  `NIR^^^&1.2.250.1.213.1.4.8&ISO^NH`: Mediboard's XDS mapping (CXDSMappingCDA) and the
  DRIMBox `DocumentEntry.java`;
- classCode, formatCode, facility, practice setting, confidentiality: see
  `adapters.xds_codes` (shared with the MHD DocumentReference).

Written by `_Xml` (every value escaped with `xml.sax.saxutils.escape`); characters
XML 1.0 forbids are dropped, and HL7 v2 delimiters inside names are escaped, so no input
can break the structure. Why not an ElementTree tree: building it, `ET.indent` and the
generic `ET.tostring` were a fifth of a mail's build; `_Xml` writes the very bytes they
wrote (declaration, two-space indentation, `<a />`, ElementTree's escaping), which the
tests check by re-serialising the output through ElementTree.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from xml.sax.saxutils import escape

from adapters.bundle_view import DocumentView, OrgView, PatientView, PersonView, to_utc
from adapters.xds_codes import (
    CONFIDENTIALITY_NORMAL,
    Code,
    class_code,
    format_code,
    setting_codes,
)
from schemas.codes import DOC_TYPE_DISPLAY, FINESS, LOINC, RPPS

NS_LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
NS_RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
ET.register_namespace("lcm", NS_LCM)
ET.register_namespace("rim", NS_RIM)

# --- IHE ITI TF-3 §4.2.5 UUIDs ------------------------------------------------------
SUBMISSION_SET = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
DOCUMENT_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_FORMAT = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_FACILITY = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
_OT = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:"
#: what ET.tostring(encoding="UTF-8", xml_declaration=True) writes first
_DECLARATION = "<?xml version='1.0' encoding='UTF-8'?>\n"
#: ElementTree's attribute escaping beyond & < > (which `escape` always does)
_ATTR_ENTITIES = {'"': "&quot;", "\r": "&#13;", "\n": "&#10;", "\t": "&#09;"}
_ATTR_SPECIAL = re.compile('[&<>"\r\n\t]')
_TEXT_SPECIAL = re.compile("[&<>]")

LOINC_OID = "2.16.840.1.113883.6.1"
INS_OID = "1.2.250.1.213.1.4.8"


#: TRE_G15 professions whose authorSpecialty we emit as G15_<code> (scheme 1.2.250.1.213.1.1.4.5,
#: as in Mediboard's "G15_10/SM26^…^1.2.250.1.213.1.1.4.5"); specialty is free text here
PROFESSION_DISPLAY = {"10": "Médecin", "21": "Pharmacien", "60": "Infirmier"}

_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: object) -> str:
    """Text safe for XML 1.0: ElementTree escapes markup, this drops forbidden chars."""
    return _XML_INVALID.sub("", str(value))


def hl7_escape(value: str) -> str:
    r"""Escape HL7 v2 delimiters (| ^ & ~ \) so a name never adds a component."""
    out = xml_text(value).replace("\\", "\\E\\")
    for char, esc in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, esc)
    return out.replace("\r", " ").replace("\n", " ")


def dtm(value: str | datetime) -> str:
    """XDS DTM: UTC, YYYYMMDDHHMMSS."""
    return to_utc(value).strftime("%Y%m%d%H%M%S")


def patient_cx(patient: PatientView) -> str:
    """The INS as an XDS patientId (CX): NIR^^^&1.2.250.1.213.1.4.8&ISO^NH."""
    oid = patient.ins_system.removeprefix("urn:oid:") or INS_OID
    return f"{hl7_escape(patient.ins)}^^^&{oid}&ISO^NH"


def person_xcn(person: PersonView) -> str:
    """authorPerson: idNatPs^FAMILY^Given^^^^^^&RPPS-OID&ISO^D^^^IDNPS (ANS convention)."""
    oid = RPPS.removeprefix("urn:oid:")
    return (
        f"{hl7_escape(person.rpps_id)}^{hl7_escape(person.family)}^{hl7_escape(person.given)}"
        f"^^^^^^&{oid}&ISO^D^^^IDNPS"
    )


def org_xon(org: OrgView) -> str:
    """authorInstitution: Name^^^^^&FINESS-OID&ISO^IDNST^^^idNatStruct."""
    oid = FINESS.removeprefix("urn:oid:")
    return f"{hl7_escape(org.name)}^^^^^&{oid}&ISO^IDNST^^^{hl7_escape(org.finess_id)}"


def type_code(doc: DocumentView) -> Code:
    display = doc.type_display or DOC_TYPE_DISPLAY.get(doc.doc_type, "")  # type: ignore[call-overload]
    return Code(doc.doc_type or "UNKNOWN", LOINC_OID, display, LOINC)


@dataclass(frozen=True, slots=True)
class XdmEntry:
    """A document placed in the archive: its symbolic id, file name and XDS uniqueId."""

    entry_id: str
    file_name: str  # relative to IHE_XDM/SUBSET01/
    unique_id: str
    doc: DocumentView


@dataclass(frozen=True, slots=True)
class Submission:
    entry_id: str
    unique_id: str
    source_id: str
    submission_time: str  # FHIR dateTime of the event: deterministic, never "now"
    patient: PatientView
    content_type: Code
    author_person: PersonView | None = None
    author_org: OrgView | None = None
    intended_recipients: tuple[str, ...] = ()


def _attr(value: str) -> str:
    """An attribute value as ElementTree escapes it (most need nothing: check first)."""
    return escape(value, _ATTR_ENTITIES) if _ATTR_SPECIAL.search(value) else value


def _text(value: str) -> str:
    return escape(value) if _TEXT_SPECIAL.search(value) else value


def _attrs(**attrs: str) -> str:
    return "".join(f' {k}="{_attr(v)}"' for k, v in attrs.items())


class _Xml:
    """Writes elements in document order as `ET.indent` + `ET.tostring` write the same
    tree: children on their own line two spaces deeper, `<a />` for an element with
    neither text nor children, text and attribute values escaped as ElementTree does."""

    def __init__(self, root: str, attrs: str) -> None:
        self.out = [_DECLARATION, f"<{root}{attrs}>"]
        self.open_tags = [root]
        self.has_children = [False]

    def indent(self) -> str:
        """The line break and indentation before a new child of the open element."""
        self.has_children[-1] = True
        return "\n" + "  " * len(self.open_tags)

    def start(self, tag: str, attrs: str = "") -> None:
        self.out.append(f"{self.indent()}<{tag}{attrs}>")
        self.open_tags.append(tag)
        self.has_children.append(False)

    def end(self) -> None:
        tag = self.open_tags.pop()
        if self.has_children.pop():
            self.out.append(f"\n{'  ' * len(self.open_tags)}</{tag}>")
        else:  # nothing inside: rewrite the start tag as an empty-element tag
            self.out[-1] = self.out[-1][:-1] + " />"

    def getvalue(self) -> bytes:
        while self.open_tags:
            self.end()
        # as ElementTree's writer: what UTF-8 cannot encode becomes a character reference
        return "".join(self.out).encode("utf-8", "xmlcharrefreplace")


def _slot(w: _Xml, name: str, *values: str) -> None:
    texts = [xml_text(v) for v in values if v]
    if not texts:
        return
    i = w.indent()
    j, k = i + "  ", i + "    "
    items = "".join(
        f"{k}<rim:Value>{_text(t)}</rim:Value>" if t else f"{k}<rim:Value />" for t in texts
    )
    w.out.append(
        f'{i}<rim:Slot name="{_attr(name)}">{j}<rim:ValueList>{items}{j}</rim:ValueList>'
        f"{i}</rim:Slot>"
    )


def _name(w: _Xml, text: str) -> None:
    i = w.indent()
    value = _attr(xml_text(text))
    w.out.append(
        f'{i}<rim:Name>{i}  <rim:LocalizedString xml:lang="fr-FR" charset="UTF-8" '
        f'value="{value}" />{i}</rim:Name>'
    )


def oid_uuid(name: str) -> str:
    """The RFC 4122 name-based (v5, OID namespace) id of `name`: stable across runs."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, name))


class _Ids:
    """Deterministic urn:uuid ids for the metadata objects (same input → same XML)."""

    def __init__(self, seed: str) -> None:
        self.seed, self.n = seed, 0

    def __call__(self) -> str:
        self.n += 1
        return f"urn:uuid:{oid_uuid(f'{self.seed}#{self.n}')}"


def _start_classification(w: _Xml, ids: _Ids, scheme: str, target: str, node: str) -> None:
    """Open a rim:Classification of `target` (a code or an author) under `scheme`."""
    w.start(
        "rim:Classification",
        _attrs(
            id=ids(),
            objectType=f"{_OT}Classification",
            classificationScheme=scheme,
            classifiedObject=target,
            nodeRepresentation=node,
        ),
    )


def _classification(w: _Xml, ids: _Ids, scheme: str, target: str, code: Code) -> None:
    _start_classification(w, ids, scheme, target, xml_text(code.code))
    _slot(w, "codingScheme", code.scheme)
    _name(w, code.display or code.code)
    w.end()


def _author(
    w: _Xml,
    ids: _Ids,
    scheme: str,
    target: str,
    person: PersonView | None,
    org: OrgView | None,
) -> None:
    if person is None and org is None:
        return
    _start_classification(w, ids, scheme, target, "")
    if person is not None:
        _slot(w, "authorPerson", person_xcn(person))
    if org is not None:
        _slot(w, "authorInstitution", org_xon(org))
    if person is not None and person.profession in PROFESSION_DISPLAY:
        code = person.profession
        _slot(w, "authorSpecialty", f"G15_{code}^{PROFESSION_DISPLAY[code]}^1.2.250.1.213.1.1.4.5")
    w.end()


def _external(w: _Xml, ids: _Ids, scheme: str, target: str, value: str, name: str) -> None:
    w.start(
        "rim:ExternalIdentifier",
        _attrs(
            id=ids(),
            objectType=f"{_OT}ExternalIdentifier",
            identificationScheme=scheme,
            registryObject=target,
            value=xml_text(value),
        ),
    )
    _name(w, name)
    w.end()


def _patient_info(patient: PatientView) -> tuple[str, ...]:
    sex = {"male": "M", "female": "F", "other": "A"}.get(patient.gender, "U")
    return (
        f"PID-3|{patient_cx(patient)}",
        f"PID-5|{hl7_escape(patient.family)}^{hl7_escape(patient.given)}^^^^^L",
        f"PID-7|{patient.birth_date.replace('-', '')}",
        f"PID-8|{sex}",
    )


def metadata_xml(submission: Submission, entries: Sequence[XdmEntry]) -> bytes:
    """The SubmitObjectsRequest bytes (UTF-8, XML declaration, deterministic)."""
    ids = _Ids(submission.unique_id)
    w = _Xml("lcm:SubmitObjectsRequest", f' xmlns:lcm="{NS_LCM}" xmlns:rim="{NS_RIM}"')
    w.start("rim:RegistryObjectList")
    ss = submission.entry_id
    w.start("rim:RegistryPackage", _attrs(id=ss, objectType=f"{_OT}RegistryPackage"))
    _slot(w, "submissionTime", dtm(submission.submission_time))
    _slot(w, "intendedRecipient", *submission.intended_recipients)
    _name(w, "CareBus")
    _author(w, ids, SS_AUTHOR, ss, submission.author_person, submission.author_org)
    _classification(w, ids, SS_CONTENT_TYPE, ss, submission.content_type)
    patient_id = patient_cx(submission.patient)
    _external(w, ids, SS_PATIENT_ID, ss, patient_id, "XDSSubmissionSet.patientId")
    _external(w, ids, SS_SOURCE_ID, ss, submission.source_id, "XDSSubmissionSet.sourceId")
    _external(w, ids, SS_UNIQUE_ID, ss, submission.unique_id, "XDSSubmissionSet.uniqueId")
    w.end()
    w.start(
        "rim:Classification",
        _attrs(
            id=ids(),
            objectType=f"{_OT}Classification",
            classifiedObject=ss,
            classificationNode=SUBMISSION_SET,
        ),
    )
    w.end()
    for entry in entries:
        _document(w, ids, submission, entry)
    for entry in entries:
        w.start(
            "rim:Association",
            _attrs(
                id=ids(),
                objectType=f"{_OT}Association",
                associationType=HAS_MEMBER,
                sourceObject=ss,
                targetObject=entry.entry_id,
            ),
        )
        _slot(w, "SubmissionSetStatus", "Original")
        w.end()
    return w.getvalue()


def _document(w: _Xml, ids: _Ids, submission: Submission, entry: XdmEntry) -> None:
    doc, de = entry.doc, entry.entry_id
    facility, practice = setting_codes(
        doc.author_org is not None and bool(doc.author_org.finess_id)
    )
    w.start(
        "rim:ExtrinsicObject",
        _attrs(id=de, mimeType=xml_text(doc.mime_type), objectType=DOCUMENT_ENTRY),
    )
    _slot(w, "creationTime", dtm(doc.created or submission.submission_time))
    _slot(w, "hash", doc.sha1_hex)
    _slot(w, "languageCode", doc.language)
    _slot(w, "size", str(doc.size))
    patient_id = patient_cx(submission.patient)
    _slot(w, "sourcePatientId", patient_id)
    _slot(w, "sourcePatientInfo", *_patient_info(submission.patient))
    _slot(w, "URI", entry.file_name)
    _name(w, doc.title)
    _author(w, ids, DE_AUTHOR, de, doc.author_person, doc.author_org)
    _classification(w, ids, DE_CLASS, de, class_code(doc.doc_type))
    _classification(w, ids, DE_CONFIDENTIALITY, de, CONFIDENTIALITY_NORMAL)
    _classification(w, ids, DE_FORMAT, de, format_code(doc.mime_type))
    _classification(w, ids, DE_FACILITY, de, facility)
    _classification(w, ids, DE_PRACTICE, de, practice)
    _classification(w, ids, DE_TYPE, de, type_code(doc))
    _external(w, ids, DE_PATIENT_ID, de, patient_id, "XDSDocumentEntry.patientId")
    _external(w, ids, DE_UNIQUE_ID, de, entry.unique_id, "XDSDocumentEntry.uniqueId")
    w.end()
