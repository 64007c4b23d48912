"""IHE MHD ITI-65 Provide Document Bundle for the shared record (DMP / Mon Espace Santé).

Profile (IHE ITI MHD 4.2, github.com/IHE/ITI.MHD `input/fsh/*.fsh`): a FHIR R4
`transaction` Bundle holding one SubmissionSet `List` (code `submissionset` of
`https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes`, extensions `ihe-sourceId`
and `ihe-designationType`, identifiers uniqueId `urn:oid:` (use usual) + entryUUID
`urn:uuid:` (use official), mode `working`, subject = the patient), one
`DocumentReference` per document (masterIdentifier = document uniqueId, entryUUID,
type LOINC, category = XDS classCode, securityLabel, attachment url → Binary, size,
SHA-1 hash, format, context.facilityType / practiceSetting / sourcePatientInfo) and
one `Binary` per document; every entry `request.method` POST. We claim the
*UnContained Comprehensive* profiles: the patient and authors are referenced by
national identifier (INS, RPPS), which the record resolves, instead of contained
copies. French codes follow the ANS PDSm profile (see `adapters.xds_codes`).

Idempotence (at-least-once delivery): the DocumentReference is a conditional create
`ifNoneExist: DocumentReference?identifier=urn:ietf:rfc:3986|<masterIdentifier>` and the
masterIdentifier is the *document's* own stable id as an OID (`urn:uuid:U` becomes
`urn:oid:2.25.<U>`, the uniqueId the XDM archive uses too; the same letter re-sent by a
later event is the same document), the List is conditional on its uniqueId derived from the
work item id. A Binary has no business identifier to condition on: a redelivery whose
DocumentReference already exists may leave one orphan Binary (the record's cleanup).

Consent: `should_file` refuses when the patient opposed sharing (extension
`EXT_SHARING_OPPOSITION`), when there is no INS, and for events that bring no new
document (a referral.accepted carries the letter already filed by referral.requested).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import quote

import orjson

from adapters.bundle_view import BundleError, BundleView, DocumentView, PatientView, PersonView
from adapters.dmp.response import (
    EntryResult,
    FilingOutcome,
    TransactionResult,
    parse_transaction_response,
)
from adapters.xds_codes import (
    CAREBUS_SOURCE_OID,
    CONFIDENTIALITY_NORMAL,
    class_code,
    format_code,
    oid_of,
    setting_codes,
)
from schemas.codes import DOC_TYPE_DISPLAY, FINESS, LOINC, RPPS, DocType, EventType
from schemas.workitem import WorkItem

__all__ = [
    "EntryResult",
    "FilingOutcome",
    "TransactionResult",
    "build_provide_bundle",
    "conditional_query",
    "documents_to_file",
    "parse_transaction_response",
    "should_file",
]

MHD = "https://profiles.ihe.net/ITI/MHD"
PROFILE_BUNDLE = f"{MHD}/StructureDefinition/IHE.MHD.UnContained.Comprehensive.ProvideBundle"
PROFILE_SUBMISSION_SET = (
    f"{MHD}/StructureDefinition/IHE.MHD.UnContained.Comprehensive.SubmissionSet"
)
PROFILE_DOCUMENT_REFERENCE = (
    f"{MHD}/StructureDefinition/IHE.MHD.UnContained.Comprehensive.DocumentReference"
)
EXT_SOURCE_ID = f"{MHD}/StructureDefinition/ihe-sourceId"
EXT_DESIGNATION_TYPE = f"{MHD}/StructureDefinition/ihe-designationType"
LIST_TYPES = f"{MHD}/CodeSystem/MHDlistTypes"
RFC3986 = "urn:ietf:rfc:3986"
_NS = uuid.UUID("0f7c2b61-6f4e-4a8e-9d8e-3d1b5c6a7e21")

#: which documents an event brings to the record (the others were filed by earlier events)
FILED_TYPES: dict[EventType, frozenset[str]] = {
    EventType.REFERRAL_REQUESTED: frozenset({DocType.REFERRAL_LETTER}),
    EventType.REFERRAL_COMPLETED: frozenset({DocType.CONSULTATION_REPORT}),
    EventType.DISCHARGE_COMPLETED: frozenset({DocType.DISCHARGE_LETTER}),
    EventType.EXPERTISE_REQUESTED: frozenset({DocType.TELEMEDICINE_REQUEST}),
    EventType.EXPERTISE_ANSWERED: frozenset({DocType.TELEMEDICINE_REPORT}),
}


def documents_to_file(view: BundleView) -> list[DocumentView]:
    event = view.event
    wanted = FILED_TYPES.get(event, frozenset()) if event else frozenset()
    return [d for d in view.documents() if d.doc_type in wanted]


def should_file(bundle: dict | BundleView) -> tuple[bool, str]:
    """(file it?, why) — the consent and relevance gate in front of the record store."""
    view = bundle if isinstance(bundle, BundleView) else BundleView(bundle)
    patient = view.patient()
    if patient is None:
        return False, "no patient in the event: nothing to file"
    if patient.sharing_opposition is True:
        return False, "the patient opposed sharing (sharing-opposition extension): not filed"
    if not patient.ins:
        return False, "no INS: the shared record is keyed on the national health identity"
    event = view.event
    if event not in FILED_TYPES:
        return False, f"{event or 'this event'} brings no new document to the record"
    if not documents_to_file(view):
        return False, f"{event} carries no document of type {', '.join(sorted(FILED_TYPES[event]))}"
    if patient.sharing_opposition is None:
        return True, "no opposition recorded for this patient"
    return True, "the patient did not oppose sharing"


def conditional_query(resource_type: str, system: str, value: str) -> str:
    """`Type?identifier=system|value`, percent-encoded except the FHIR separators."""
    token = quote(f"{system}|{value}", safe=":/|.-_~")
    return f"{resource_type}?identifier={token}"


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(_NS, "/".join(parts)))


def _patient_ref(patient: PatientView) -> dict:
    return {"type": "Patient", "identifier": {"system": patient.ins_system, "value": patient.ins}}


def _authors(doc: DocumentView) -> list[dict]:
    out: list[dict] = []
    p: PersonView | None = doc.author_person
    if p is not None and p.rpps_id:
        out.append(
            {
                "type": "Practitioner",
                "identifier": {"system": RPPS, "value": p.rpps_id},
                "display": f"{p.given} {p.family}".strip(),
            }
        )
    if doc.author_org is not None and doc.author_org.finess_id:
        out.append(
            {
                "type": "Organization",
                "identifier": {"system": FINESS, "value": doc.author_org.finess_id},
                **({"display": doc.author_org.name} if doc.author_org.name else {}),
            }
        )
    return out


def _document_reference(
    doc: DocumentView,
    patient: PatientView,
    *,
    master: str,
    entry_uuid: str,
    binary_url: str,
    stamp: str,
) -> dict:
    facility, practice = setting_codes(
        doc.author_org is not None and bool(doc.author_org.finess_id)
    )
    created = doc.created or stamp
    attachment = {
        "contentType": doc.mime_type,
        "language": doc.language,
        "url": binary_url,
        "size": doc.size,
        "hash": doc.sha1_b64,
        "title": doc.title,
        "creation": created,
    }
    res: dict = {
        "resourceType": "DocumentReference",
        "meta": {"profile": [PROFILE_DOCUMENT_REFERENCE]},
        "masterIdentifier": {"use": "usual", "system": RFC3986, "value": master},
        "identifier": [{"use": "official", "system": RFC3986, "value": entry_uuid}],
        "status": "current",
        "type": {
            "coding": [
                {
                    "system": LOINC,
                    "code": doc.doc_type,
                    "display": DOC_TYPE_DISPLAY.get(doc.doc_type, doc.type_display),
                }
            ]
        },  # type: ignore[call-overload]
        "category": [{"coding": [class_code(doc.doc_type).coding()]}],
        "subject": _patient_ref(patient),
        "date": created,
    }
    authors = _authors(doc)
    if authors:
        res["author"] = authors
    res |= {
        "description": doc.title,
        "securityLabel": [{"coding": [CONFIDENTIALITY_NORMAL.coding()]}],
        "content": [{"attachment": attachment, "format": format_code(doc.mime_type).coding()}],
        "context": {
            "period": {"start": created},
            "facilityType": {"coding": [facility.coding()]},
            "practiceSetting": {"coding": [practice.coding()]},
            "sourcePatientInfo": _patient_ref(patient),
        },
    }
    return res


def build_provide_bundle(
    source: WorkItem | dict,
    *,
    now: datetime,
    item_id: str | None = None,
    source_id: str = CAREBUS_SOURCE_OID,
    documents: Sequence[DocumentView] | None = None,
) -> dict:
    """The ITI-65 transaction for a DMP work item (or an event bundle + `item_id`).

    Files the documents the event brings (`FILED_TYPES`), or `documents` when given.
    Raises `BundleError` when `should_file` says no (callers check it first to log the
    reason) or when nothing is left to file. `now` only stamps the submission.
    """
    if isinstance(source, WorkItem):
        bundle = orjson.loads(source.event.data)
        item_id = item_id or source.id
    else:
        bundle = source
    if not item_id:
        raise ValueError("item_id is required with a bare bundle: it keys idempotence")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    view = BundleView(bundle)
    ok, why = should_file(view)
    if not ok and documents is None:
        raise BundleError(why)
    patient = view.patient()
    if patient is None or not patient.ins or patient.sharing_opposition is True:
        raise BundleError(why)
    docs = list(documents) if documents is not None else documents_to_file(view)
    if not docs:
        raise BundleError("no document to file")
    stamp = now.isoformat(timespec="seconds")
    list_url = f"urn:uuid:{_uuid(item_id, 'submission-set')}"
    ss_unique = f"urn:oid:2.25.{uuid.UUID(_uuid(item_id, 'ss-unique')).int}"
    entries: list[dict] = []
    doc_urls: list[str] = []
    for i, doc in enumerate(docs):
        # the XDS uniqueId as an OID (urn:uuid ids become 2.25.x): the very id the XDM
        # archive gives the same letter, and what an XDS-backed record (DMP) accepts
        master = f"urn:oid:{oid_of(doc.unique_id, fallback=f'{item_id}/doc/{i}')}"
        dr_url = f"urn:uuid:{_uuid(master, 'document-reference')}"
        bin_url = f"urn:uuid:{_uuid(master, 'binary')}"
        doc_urls.append(dr_url)
        entries.append(
            {
                "fullUrl": dr_url,
                "resource": _document_reference(
                    doc, patient, master=master, entry_uuid=dr_url, binary_url=bin_url, stamp=stamp
                ),
                "request": {
                    "method": "POST",
                    "url": "DocumentReference",
                    "ifNoneExist": conditional_query("DocumentReference", RFC3986, master),
                },
            }
        )
        entries.append(
            {
                "fullUrl": bin_url,
                "resource": {
                    "resourceType": "Binary",
                    "contentType": doc.content_type,
                    "data": _b64(doc.content),
                },
                "request": {"method": "POST", "url": "Binary"},
            }
        )
    first = docs[0]
    submission: dict = {
        "resourceType": "List",
        "meta": {"profile": [PROFILE_SUBMISSION_SET]},
        "extension": [
            {
                "url": EXT_SOURCE_ID,
                "valueIdentifier": {"system": RFC3986, "value": f"urn:oid:{source_id}"},
            },
            {
                "url": EXT_DESIGNATION_TYPE,
                "valueCodeableConcept": {"coding": [{"system": LOINC, "code": first.doc_type}]},
            },
        ],
        "identifier": [
            {"use": "usual", "system": RFC3986, "value": ss_unique},
            {"use": "official", "system": RFC3986, "value": list_url},
        ],
        "status": "current",
        "mode": "working",
        "title": "CareBus",
        "code": {"coding": [{"system": LIST_TYPES, "code": "submissionset"}]},
        "subject": _patient_ref(patient),
        "date": stamp,
        "entry": [{"item": {"reference": url}} for url in doc_urls],
    }
    author = _authors(first)
    if author and author[0]["type"] == "Practitioner":
        submission["source"] = author[0]
    return {
        "resourceType": "Bundle",
        "id": _uuid(item_id, "provide-bundle"),
        "meta": {"profile": [PROFILE_BUNDLE]},
        "type": "transaction",
        "timestamp": stamp,
        "entry": [
            {
                "fullUrl": list_url,
                "resource": submission,
                "request": {
                    "method": "POST",
                    "url": "List",
                    "ifNoneExist": conditional_query("List", RFC3986, ss_unique),
                },
            },
            *entries,
        ],
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
