"""Shared pieces of every message builder: the Bundle skeleton and the French resources.

Builders emit plain JSON dicts (not fhir.resources models): building a message sits on
the hot path of every adapter, and a dict serialised with orjson costs microseconds
where a model round-trip costs milliseconds. The validator (`schemas.validate`) is the
single place that proves the output is valid FHIR; the unit tests run every builder
through it.

Entry ids are UUIDv5 derived from the event id and the resource's business key, so
building the same event twice gives byte-identical bundles (idempotent re-sends) and the
same practitioner appearing twice in one event is one entry.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from schemas.codes import (
    CAREBUS_BASE,
    DOC_TYPE_DISPLAY,
    EVENT_CODESYSTEM,
    EVENT_DISPLAY,
    EVENT_ID_SYSTEM,
    EXT_SHARING_OPPOSITION,
    FINESS,
    INS_NIA,
    INS_NIR,
    INS_NIR_TEST,
    LOINC,
    RPPS,
    V2_0203,
    DocType,
    EventType,
)
from schemas.envelope import new_event_id
from schemas.model import DocumentInfo, OrganizationInfo, PatientInfo, PractitionerInfo

# --- French conventions (FR Core / ANS), found in the FR Core IG and the Annuaire Santé IG.
#: FR Core identifier-type code system (INS-NIR, INS-NIA, IDNPS, IDNST…)
FR_CORE_ID_TYPE = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
#: FR Core extension telling which kind of mail a ContactPoint email is (MSSANTE, APICRYPT…)
FR_CORE_EMAIL_TYPE = (
    "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-contact-point-email-type"
)
#: NOS table TRE_R256 (type de messagerie); code MSSANTE marks an MSSanté mailbox
MSS_TYPE_SYSTEM = (
    "https://mos.esante.gouv.fr/NOS/TRE_R256-TypeMessagerie/FHIR/TRE-R256-TypeMessagerie"
)
#: NOS table TRE_G15 (profession de santé): 10 médecin, 21 pharmacien, 60 infirmier…
PROFESSION_SYSTEM = (
    "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
)
DISCHARGE_DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"
RFC3986 = "urn:ietf:rfc:3986"

INS_TYPE_CODE: dict[str, str] = {
    INS_NIR: "INS-NIR",
    INS_NIR_TEST: "INS-NIR-TEST",
    INS_NIA: "INS-NIA",
}

# --- CareBus extensions of bus-emitted notices (delivery.*, sla.*)
EXT_CHANNEL = f"{CAREBUS_BASE}/StructureDefinition/delivery-channel"
EXT_ADDRESS = f"{CAREBUS_BASE}/StructureDefinition/delivery-address"
EXT_ATTEMPT = f"{CAREBUS_BASE}/StructureDefinition/delivery-attempt"
EXT_RECIPIENT_ID = f"{CAREBUS_BASE}/StructureDefinition/delivery-recipient-id"
EXT_RELATED_EVENT = f"{CAREBUS_BASE}/StructureDefinition/related-event"

#: source.endpoint when a producer does not name itself (SDK users should)
DEFAULT_SOURCE = "urn:carebus:producer:sdk"
#: source.endpoint of events the bus emits itself
BUS_SOURCE = "urn:carebus:bus"

_PARIS = ZoneInfo("Europe/Paris")


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data, usedforsecurity=False).digest()
_NS = uuid.UUID("6f1d1b1e-4c47-5a8e-9f0e-2b7c0ad3c0de")

Stamp = datetime | str | None


def fhir_datetime(value: datetime | str) -> str:
    """FHIR dateTime/instant text. Naive datetimes are French wall-clock time (what a
    hospital system means), never UTC by accident."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=_PARIS)
    return value.isoformat(timespec="seconds")


def fhir_date(value: date) -> str:
    return value.isoformat()


def now_stamp(value: Stamp = None) -> str:
    """The message timestamp: the given one, else now (UTC, millisecond precision)."""
    if value is None:
        return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return fhir_datetime(value)


def ref(full_url: str) -> dict:
    return {"reference": full_url}


def logical_ref(resource_type: str, system: str, value: str) -> dict:
    """Reference by business identifier to a resource that is not in this bundle."""
    return {"type": resource_type, "identifier": {"system": system, "value": value}}


def text_concept(text: str) -> dict:
    return {"text": text}


def doc_type_concept(doc_type: DocType) -> dict:
    """LOINC-coded document type with the French display the DMP uses."""
    coding = {"system": LOINC, "code": doc_type.value, "display": DOC_TYPE_DISPLAY[doc_type]}
    return {"coding": [coding]}


def attachment(doc: DocumentInfo) -> dict:
    """Inline attachment with size and SHA-1 hash (base64, as FHIR R4 defines `hash`), so
    a receiver can prove the letter it files is the one that was sent."""
    att: dict = {
        "contentType": doc.content_type,
        "language": "fr-FR",
        "data": base64.b64encode(doc.content).decode("ascii"),
        "size": len(doc.content),
        # FHIR Attachment.hash is SHA-1 by definition (integrity, not security)
        "hash": base64.b64encode(_sha1(doc.content)).decode("ascii"),
        "title": doc.title,
    }
    if doc.created is not None:
        att["creation"] = fhir_datetime(doc.created)
    return att


class MessageBuilder:
    """Accumulates the entries of one message Bundle, then puts the MessageHeader first."""

    def __init__(self, event_id: str | None = None) -> None:
        self.event_id = event_id or new_event_id()
        self._entries: list[dict] = []
        self._by_key: dict[str, str] = {}

    def full_url(self, key: str) -> str:
        """Stable fullUrl of the resource known as `key` in this event."""
        return f"urn:uuid:{uuid.uuid5(_NS, f'{self.event_id}/{key}')}"

    def add(self, key: str, resource: dict, *, front: bool = False) -> str:
        """Add a resource once per key; returns its fullUrl (also its id).

        `front` puts it right after the MessageHeader: builders add the focus last (it
        references everything else) but readers expect it first.
        """
        if key in self._by_key:
            return self._by_key[key]
        url = self.full_url(key)
        resource = {"resourceType": resource.pop("resourceType"), "id": url[9:], **resource}
        entry = {"fullUrl": url, "resource": resource}
        if front:
            self._entries.insert(0, entry)
        else:
            self._entries.append(entry)
        self._by_key[key] = url
        return url

    # --- French resources -------------------------------------------------------------
    def organization(self, org: OrganizationInfo) -> str:
        res: dict = {
            "resourceType": "Organization",
            "identifier": [
                {
                    "use": "official",
                    "type": {"coding": [{"system": FR_CORE_ID_TYPE, "code": "IDNST"}]},
                    "system": FINESS,
                    "value": org.identifier_value,
                }
            ],
            "active": True,
        }
        if org.name:
            res["name"] = org.name
        return self.add(f"Organization/{org.finess}", res)

    def practitioner(self, info: PractitionerInfo) -> str:
        """The Practitioner alone (for Patient.generalPractitioner, Encounter.participant)."""
        res = {
            "resourceType": "Practitioner",
            "identifier": [
                {
                    "use": "official",
                    "type": {"coding": [{"system": FR_CORE_ID_TYPE, "code": "IDNPS"}]},
                    "system": RPPS,
                    "value": info.identifier_value,
                }
            ],
            "active": True,
            "name": [{"use": "official", "family": info.family, "given": [info.given]}],
        }
        return self.add(f"Practitioner/{info.rpps}", res)

    def practitioner_role(self, info: PractitionerInfo) -> str:
        """Practitioner + PractitionerRole (+ Organization): the role carries the MSSanté
        mailbox the bus delivers to, which is why requesters/owners point at roles."""
        res: dict = {"resourceType": "PractitionerRole", "active": True}
        res["practitioner"] = ref(self.practitioner(info))
        if info.organization is not None:
            res["organization"] = ref(self.organization(info.organization))
        if info.role:
            res["code"] = [{"coding": [{"system": PROFESSION_SYSTEM, "code": info.role}]}]
        if info.specialty:
            res["specialty"] = [text_concept(info.specialty)]
        if info.mailbox:
            res["telecom"] = [
                {
                    "extension": [
                        {
                            "url": FR_CORE_EMAIL_TYPE,
                            "valueCoding": {
                                "system": MSS_TYPE_SYSTEM,
                                "code": "MSSANTE",
                                "display": "Messagerie MSSanté",
                            },
                        }
                    ],
                    "system": "email",
                    "value": info.mailbox,
                    "use": "work",
                }
            ]
        return self.add(f"PractitionerRole/{info.rpps}", res)

    def patient(self, info: PatientInfo, *, gp: str | None = None) -> str:
        """Patient with the INS (FR Core INS slice) and/or local id, and the sharing
        opposition flag always explicit so a receiver never has to guess consent."""
        ids: list[dict] = []
        if info.ins:
            ids.append(
                {
                    "use": "official",
                    "type": {
                        "coding": [
                            {
                                "system": FR_CORE_ID_TYPE,
                                "code": INS_TYPE_CODE.get(info.ins_system, "INS-NIR"),
                            }
                        ]
                    },
                    "system": info.ins_system,
                    "value": info.ins,
                }
            )
        if info.local_id:
            ids.append(
                {
                    "use": "usual",
                    "type": {"coding": [{"system": V2_0203, "code": "PI"}]},
                    "system": info.local_id[0],
                    "value": info.local_id[1],
                }
            )
        res: dict = {
            "resourceType": "Patient",
            "extension": [{"url": EXT_SHARING_OPPOSITION, "valueBoolean": info.sharing_opposition}],
            "identifier": ids,
            "name": [{"use": "official", "family": info.family, "given": [info.given]}],
            "gender": info.gender,
            "birthDate": fhir_date(info.birth_date),
        }
        if info.postcode:
            res["address"] = [{"postalCode": info.postcode, "country": "FRA"}]
        if gp:
            res["generalPractitioner"] = [ref(gp)]
        key = f"Patient/{info.ins_system}|{info.ins}" if info.ins else f"Patient/{info.local_id}"
        return self.add(key, res)

    def document(self, doc: DocumentInfo, *, subject: str, author: str | None) -> str:
        """DocumentReference with the document inline; its masterIdentifier is stable
        (given id, else derived from the content) so the record store can dedupe it."""
        doc_id = doc.id or str(uuid.uuid5(_NS, hashlib.sha256(doc.content).hexdigest()))
        res: dict = {
            "resourceType": "DocumentReference",
            "masterIdentifier": {"system": RFC3986, "value": f"urn:uuid:{doc_id}"},
            "status": "current",
            "docStatus": "final",
            "type": doc_type_concept(doc.doc_type),
            "subject": ref(subject),
            "description": doc.title,
            "content": [{"attachment": attachment(doc)}],
        }
        if doc.created is not None:
            res["date"] = fhir_datetime(doc.created)
        if author:
            res["author"] = [ref(author)]
        return self.add(f"DocumentReference/{doc_id}", res)

    # --- the message ------------------------------------------------------------------
    def message(
        self,
        event: EventType,
        *,
        focus: str,
        sender: str | None,
        source: str,
        timestamp: Stamp = None,
    ) -> dict:
        """Assemble the Bundle: MessageHeader first, then the entries in insertion order."""
        header: dict = {
            "resourceType": "MessageHeader",
            "id": self.full_url("MessageHeader")[9:],
            "eventCoding": {
                "system": EVENT_CODESYSTEM,
                "code": event.value,
                "display": EVENT_DISPLAY[event],
            },
            "source": {"name": "CareBus" if source == BUS_SOURCE else source, "endpoint": source},
        }
        if sender:
            header["sender"] = ref(sender)
        header["focus"] = [ref(focus)]
        return {
            "resourceType": "Bundle",
            "id": self.event_id,
            "identifier": {"system": EVENT_ID_SYSTEM, "value": self.event_id},
            "type": "message",
            "timestamp": now_stamp(timestamp),
            "entry": [
                {"fullUrl": self.full_url("MessageHeader"), "resource": header},
                *self._entries,
            ],
        }
