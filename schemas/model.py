"""Typed inputs of the FHIR message builders.

Producers (the SDK, the HL7 v2 mapper, the bus's own processors) describe *what happened*
with these small frozen values; the builders in `schemas.builders` turn them into FHIR
message Bundles. Keeping the inputs flat and typed means a mapper never has to know FHIR
JSON paths, and the few checks done here (RPPS length, FINESS length, INS shape) fail at
the producer, next to the bug, instead of as a refusal at the bus ingress.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

from schemas.codes import CAREBUS_BASE, INS_NIR, DocType

Gender = Literal["male", "female", "other", "unknown"]
Priority = Literal["routine", "urgent", "asap", "stat"]
#: outbound channels the bus delivers through (delivery.* events, Communication.medium)
Channel = Literal["mssante", "dmp", "eparcours", "sms", "phone"]

#: Default business-identifier systems used when a producer has none of its own. A real
#: producer should pass its own system (an OID or URL it controls) so case ids are unique.
REFERRAL_ID_SYSTEM = f"{CAREBUS_BASE}/sid/referral"
EXPERTISE_ID_SYSTEM = f"{CAREBUS_BASE}/sid/expertise"
CONSENT_ID_SYSTEM = f"{CAREBUS_BASE}/sid/consent"

_RPPS_RE = re.compile(r"\d{11}")
_FINESS_RE = re.compile(r"[0-9A-Z]{9}")


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganizationInfo:
    """A health facility or legal entity known by its FINESS number (9 chars, no prefix)."""

    finess: str
    name: str | None = None

    def __post_init__(self) -> None:
        _need(
            bool(_FINESS_RE.fullmatch(self.finess)), f"FINESS must be 9 chars, got {self.finess!r}"
        )

    @property
    def identifier_value(self) -> str:
        """The national structure identifier (idNatStruct) as the directory spells it."""
        return "1" + self.finess


@dataclass(frozen=True, slots=True, kw_only=True)
class PractitionerInfo:
    """A health professional known by RPPS (11 digits, without the leading "8").

    `role` is a profession code of the NOS TRE_G15 table ("10" médecin, "60" infirmier,
    "21" pharmacien); `specialty` is free text because specialty tables differ by
    profession. `organization` accepts a FINESS string for convenience (normalised to an
    OrganizationInfo without name).
    """

    rpps: str
    family: str
    given: str
    mailbox: str | None = None
    role: str | None = None
    specialty: str | None = None
    organization: OrganizationInfo | None = None

    def __post_init__(self) -> None:
        _need(bool(_RPPS_RE.fullmatch(self.rpps)), f"RPPS must be 11 digits, got {self.rpps!r}")
        if isinstance(self.organization, str):
            object.__setattr__(self, "organization", OrganizationInfo(finess=self.organization))
        _need(self.mailbox is None or "@" in self.mailbox, f"bad mailbox {self.mailbox!r}")

    @property
    def identifier_value(self) -> str:
        """The national practitioner identifier (idNatPs): "8" + RPPS."""
        return "8" + self.rpps


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientInfo:
    """The patient, with the qualified INS when the producer has one, else a local id.

    `local_id` is (system, value) of the producer's own patient number (IPP).
    """

    family: str
    given: str
    birth_date: date
    gender: Gender
    ins: str | None = None
    ins_system: str = INS_NIR
    local_id: tuple[str, str] | None = None
    postcode: str | None = None
    sharing_opposition: bool = False

    def __post_init__(self) -> None:
        _need(
            self.ins is not None or self.local_id is not None, "patient needs an INS or a local id"
        )
        _need(self.ins is None or len(self.ins) == 15, f"INS must be 15 chars, got {self.ins!r}")
        _need(self.gender in ("male", "female", "other", "unknown"), f"bad gender {self.gender!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentInfo:
    """A document carried inline (letter, report). `id` is its stable unique id (a UUID)
    when the producer has one, so that re-sending it never creates a duplicate."""

    doc_type: DocType
    title: str
    content: bytes
    content_type: str = "text/plain; charset=utf-8"
    id: str | None = None
    created: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferralInfo:
    """One referral (adressage) case, as each referral.* event needs it.

    `status_reason` is why it was rejected or cancelled; `report` is the consultation
    report returned with referral.completed.
    """

    referral_id: str
    requester: PractitionerInfo
    patient: PatientInfo
    reason: str
    performer: PractitionerInfo | None = None
    priority: Priority = "routine"
    service: str | None = None
    letter: DocumentInfo | None = None
    status_reason: str | None = None
    report: DocumentInfo | None = None
    authored_on: datetime | None = None
    referral_system: str = REFERRAL_ID_SYSTEM


@dataclass(frozen=True, slots=True, kw_only=True)
class StayInfo:
    """A hospital stay (IHE PAM France venue) and its discharge.

    `visit_number` is the hospital's stay number (PV1-19); `movement_id` the ZBE-1 id of
    the movement this event reports. `discharge_disposition` is a code of
    http://terminology.hl7.org/CodeSystem/discharge-disposition (home, other-hcf, …).
    """

    hospital: OrganizationInfo
    visit_number: str
    patient: PatientInfo
    admitted_at: datetime
    movement_id: str | None = None
    unit: str | None = None
    planned_discharge: datetime | None = None
    discharged_at: datetime | None = None
    discharge_disposition: str | None = None
    declared_gp: PractitionerInfo | None = None
    care_team: tuple[PractitionerInfo, ...] = ()
    letter: DocumentInfo | None = None
    visit_system: str | None = None
    movement_system: str | None = None

    @property
    def visit_identifier_system(self) -> str:
        """The hospital's visit-number namespace: one per FINESS unless given."""
        return self.visit_system or f"{CAREBUS_BASE}/sid/visit/{self.hospital.identifier_value}"

    @property
    def movement_identifier_system(self) -> str:
        return (
            self.movement_system or f"{CAREBUS_BASE}/sid/movement/{self.hospital.identifier_value}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpertiseInfo:
    """A tele-expertise request and its outcome (answer or decline)."""

    expertise_id: str
    requester: PractitionerInfo
    expert: PractitionerInfo
    patient: PatientInfo
    question: str
    documents: tuple[DocumentInfo, ...] = ()
    priority: Priority = "routine"
    answer: str | None = None
    report: DocumentInfo | None = None
    decline_reason: str | None = None
    authored_on: datetime | None = None
    expertise_system: str = EXPERTISE_ID_SYSTEM


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentInfo:
    """A patient's decision about sharing, as recorded by a professional or a facility.

    `opposes_sharing=True` records an opposition to filing in the shared record and to
    platform notifications; False lifts a previous one. `author` (a practitioner) or
    `organization` (a facility, e.g. from its admission office) recorded it: at least
    one is required, it becomes the MessageHeader sender.
    """

    consent_id: str
    patient: PatientInfo
    opposes_sharing: bool
    recorded_at: datetime
    author: PractitionerInfo | None = None
    organization: OrganizationInfo | None = None
    consent_system: str = CONSENT_ID_SYSTEM

    def __post_init__(self) -> None:
        _need(self.author is not None or self.organization is not None, "who recorded it?")
        _need(bool(self.patient.ins), "a consent is about a patient identified by INS")


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseRef:
    """Logical reference to the focus of a case, by business identifier.

    Bus notices point at the case this way (not by a resource in their bundle): the case
    resources live in earlier events and the notice must stay small and data-minimal.
    """

    resource_type: Literal["Task", "Encounter", "CommunicationRequest"]
    system: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BusNoticeInfo:
    """Input of the bus-emitted events (sla.*, discharge.late-notice/followup-due,
    delivery.*). `about_event` is the event id the notice follows up on."""

    about: CaseRef
    text: str
    recipients: tuple[PractitionerInfo | OrganizationInfo, ...] = ()
    deadline: datetime | None = None
    attempt: int | None = None
    channel: Channel | None = None
    address: str | None = None
    about_event: str | None = None
    #: delivery.*: the recipient's directory id (RPPS, territory id, subscription id), so
    #: a read receipt acknowledges that recipient's SLA deadline
    recipient_id: str | None = None
