"""Code systems, identifier systems and event types shared by the whole bus.

Kept in one module so that every builder, validator, router and adapter spells a
system URL the same way: a typo in an OID silently breaks interoperability.
"""

from __future__ import annotations

from enum import StrEnum

#: Canonical base of CareBus's own FHIR artefacts (CodeSystem, MessageDefinition…).
CAREBUS_BASE = "https://carebus.fr/fhir"
#: CodeSystem of CareBus event types: MessageHeader.eventCoding.system.
EVENT_CODESYSTEM = f"{CAREBUS_BASE}/CodeSystem/carebus-event"
#: Business identifier of a bus event (MessageHeader.id is the event id too).
EVENT_ID_SYSTEM = f"{CAREBUS_BASE}/sid/event"
#: Extension carrying the planned discharge date of a stay (no R4 core element holds it).
EXT_PLANNED_DISCHARGE = f"{CAREBUS_BASE}/StructureDefinition/planned-discharge"
#: Extension carrying the patient's opposition to sharing (DMP / platforms).
EXT_SHARING_OPPOSITION = f"{CAREBUS_BASE}/StructureDefinition/sharing-opposition"
#: Extension carrying a deadline on bus-emitted notifications (sla.*, followup…).
EXT_DEADLINE = f"{CAREBUS_BASE}/StructureDefinition/deadline"

# French national identifier systems (ANS conventions).
INS_NIR = "urn:oid:1.2.250.1.213.1.4.8"  # INS-NIR, the national health identity
INS_NIA = "urn:oid:1.2.250.1.213.1.4.9"  # INS-NIA (temporary number)
INS_NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"  # test NIR used by qualification platforms
INS_SYSTEMS = frozenset({INS_NIR, INS_NIA, INS_NIR_TEST})
RPPS = "urn:oid:1.2.250.1.71.4.2.1"  # idNatPs: "8" + RPPS (11 digits)
FINESS = "urn:oid:1.2.250.1.71.4.2.2"  # idNatStruct: "1" + FINESS (9 chars)

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier type codes
MESSAGE_HEADER_RESPONSE = "http://hl7.org/fhir/response-code"


class DocType(StrEnum):
    """Document types by LOINC (DMP / MSSanté typeCode)."""

    REFERRAL_LETTER = "96349-6"  # lettre d'adressage
    DISCHARGE_LETTER = "11490-0"  # lettre de liaison de sortie
    CONSULTATION_REPORT = "11488-4"
    TELEMEDICINE_REQUEST = "75496-0"
    TELEMEDICINE_REPORT = "85208-7"


DOC_TYPE_DISPLAY: dict[DocType, str] = {
    DocType.REFERRAL_LETTER: "Lettre d'adressage",
    DocType.DISCHARGE_LETTER: "Lettre de liaison à la sortie d'un établissement de soins",
    DocType.CONSULTATION_REPORT: "Compte rendu de consultation",
    DocType.TELEMEDICINE_REQUEST: "Demande d'acte de télémédecine",
    DocType.TELEMEDICINE_REPORT: "Compte rendu d'acte de télémédecine",
}


class EventType(StrEnum):
    """Every event the bus carries; the value is MessageHeader.eventCoding.code and ce_type."""

    REFERRAL_REQUESTED = "referral.requested"
    REFERRAL_ACCEPTED = "referral.accepted"
    REFERRAL_REJECTED = "referral.rejected"
    REFERRAL_CANCELLED = "referral.cancelled"
    REFERRAL_COMPLETED = "referral.completed"
    ADMISSION_NOTIFIED = "admission.notified"
    ADMISSION_CANCELLED = "admission.cancelled"
    DISCHARGE_PLANNED = "discharge.planned"
    DISCHARGE_CANCELLED = "discharge.cancelled"
    DISCHARGE_COMPLETED = "discharge.completed"
    DISCHARGE_REVERTED = "discharge.reverted"
    EXPERTISE_REQUESTED = "expertise.requested"
    EXPERTISE_ANSWERED = "expertise.answered"
    EXPERTISE_DECLINED = "expertise.declined"
    CONSENT_UPDATED = "consent.updated"
    # emitted by the bus itself
    SLA_REMINDER = "sla.reminder"
    SLA_ESCALATED = "sla.escalated"
    SLA_BREACHED = "sla.breached"
    DISCHARGE_LATE_NOTICE = "discharge.late-notice"
    DISCHARGE_FOLLOWUP_DUE = "discharge.followup-due"
    DELIVERY_SENT = "delivery.sent"
    DELIVERY_FAILED = "delivery.failed"
    DELIVERY_READ = "delivery.read"

    @property
    def family(self) -> str:
        """The case family: referral, stay, expertise, consent, or bus (bus-emitted notices)."""
        return EVENT_FAMILY[self]

    @property
    def inbound(self) -> bool:
        """True for events an outside producer may publish (not bus-emitted ones)."""
        return self.family != "bus"


EVENT_FAMILY: dict[EventType, str] = {
    **{e: "referral" for e in EventType if e.value.startswith("referral.")},
    **{e: "stay" for e in EventType if e.value.startswith(("admission.", "discharge."))},
    **{e: "expertise" for e in EventType if e.value.startswith("expertise.")},
    EventType.CONSENT_UPDATED: "consent",
}
for _e in (
    EventType.SLA_REMINDER,
    EventType.SLA_ESCALATED,
    EventType.SLA_BREACHED,
    EventType.DISCHARGE_LATE_NOTICE,
    EventType.DISCHARGE_FOLLOWUP_DUE,
    EventType.DELIVERY_SENT,
    EventType.DELIVERY_FAILED,
    EventType.DELIVERY_READ,
):
    EVENT_FAMILY[_e] = "bus"

EVENT_DISPLAY: dict[EventType, str] = {
    EventType.REFERRAL_REQUESTED: "Demande d'adressage",
    EventType.REFERRAL_ACCEPTED: "Adressage accepté",
    EventType.REFERRAL_REJECTED: "Adressage refusé",
    EventType.REFERRAL_CANCELLED: "Adressage annulé",
    EventType.REFERRAL_COMPLETED: "Adressage terminé (compte rendu)",
    EventType.ADMISSION_NOTIFIED: "Admission",
    EventType.ADMISSION_CANCELLED: "Admission annulée",
    EventType.DISCHARGE_PLANNED: "Sortie prévue",
    EventType.DISCHARGE_CANCELLED: "Sortie prévue annulée",
    EventType.DISCHARGE_COMPLETED: "Sortie effective",
    EventType.DISCHARGE_REVERTED: "Sortie annulée",
    EventType.EXPERTISE_REQUESTED: "Demande de téléexpertise",
    EventType.EXPERTISE_ANSWERED: "Réponse de téléexpertise",
    EventType.EXPERTISE_DECLINED: "Téléexpertise déclinée",
    EventType.CONSENT_UPDATED: "Opposition au partage (enregistrée ou levée)",
    EventType.SLA_REMINDER: "Relance",
    EventType.SLA_ESCALATED: "Escalade",
    EventType.SLA_BREACHED: "Délai dépassé",
    EventType.DISCHARGE_LATE_NOTICE: "Sortie annoncée moins de 48 h avant",
    EventType.DISCHARGE_FOLLOWUP_DUE: "Suivi à J+7 de la sortie",
    EventType.DELIVERY_SENT: "Envoi effectué",
    EventType.DELIVERY_FAILED: "Envoi en échec",
    EventType.DELIVERY_READ: "Lu par le destinataire",
}
