"""Realistic French sample events, for tests, the benchmark and `carebus send`.

One valid message per event type, all about the same fictional patient's journey
(referral to a cardiologist, hospital stay, tele-expertise) so that the samples also
exercise case keys: every referral event lands on the same case id. People, facilities
and letters are in `schemas.sample_data`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from schemas.codes import DocType, EventType
from schemas.events import EVENT_SPECS
from schemas.model import (
    EXPERTISE_ID_SYSTEM,
    REFERRAL_ID_SYSTEM,
    BusNoticeInfo,
    CaseRef,
    ConsentInfo,
    DocumentInfo,
    ExpertiseInfo,
    ReferralInfo,
    StayInfo,
)
from schemas.sample_data import (
    CARDIOLOGIST,
    CONSULTATION_REPORT,
    CPTS,
    DERMATOLOGIST,
    DISCHARGE_LETTER,
    EXPERTISE_DOCUMENT,
    GP,
    HOSPITAL,
    HOSPITALIST,
    NURSE,
    PATIENT,
    REFERRAL_LETTER,
    T0,
)

REFERRAL_ID = "ADR-2025-000123"
VISIT_NUMBER = "VN2025031100042"
EXPERTISE_ID = "TLX-2025-0042"


def _doc(kind: DocType, title: str, content: bytes, key: str) -> DocumentInfo:
    return DocumentInfo(
        doc_type=kind,
        title=title,
        content=content,
        created=T0,
        id=f"5b3e1c2a-7f0d-4c1e-9a3b-{key:0>12}",
    )


def referral_info() -> ReferralInfo:
    return ReferralInfo(
        referral_id=REFERRAL_ID,
        referral_system=REFERRAL_ID_SYSTEM,
        requester=GP,
        performer=CARDIOLOGIST,
        patient=PATIENT,
        priority="urgent",
        service="Consultation de cardiologie",
        reason="Dyspnée d'effort et fibrillation atriale rapide découverte à l'ECG",
        letter=_doc(
            DocType.REFERRAL_LETTER, "Lettre d'adressage — cardiologie", REFERRAL_LETTER, "1"
        ),
        report=_doc(
            DocType.CONSULTATION_REPORT, "Compte rendu de consultation", CONSULTATION_REPORT, "2"
        ),
        status_reason=(
            "Délai de rendez-vous incompatible avec l'urgence : "
            "adresser aux urgences cardiologiques"
        ),
        authored_on=T0,
    )


def stay_info() -> StayInfo:
    return StayInfo(
        hospital=HOSPITAL,
        visit_number=VISIT_NUMBER,
        patient=PATIENT,
        movement_id="MVT-884512",
        admitted_at=T0 - timedelta(days=6),
        unit="Médecine interne — 3e étage",
        planned_discharge=T0 + timedelta(days=2, hours=1),
        discharged_at=T0 + timedelta(days=2, hours=2),
        discharge_disposition="home",
        declared_gp=GP,
        care_team=(HOSPITALIST, NURSE),
        letter=_doc(DocType.DISCHARGE_LETTER, "Lettre de liaison de sortie", DISCHARGE_LETTER, "3"),
    )


def consent_info(*, opposes_sharing: bool = True) -> ConsentInfo:
    """The patient tells the GP they oppose sharing (or lift it)."""
    return ConsentInfo(
        consent_id="OPP-2025-0007",
        patient=PATIENT,
        opposes_sharing=opposes_sharing,
        recorded_at=T0 - timedelta(days=1),
        author=GP,
    )


def expertise_info() -> ExpertiseInfo:
    return ExpertiseInfo(
        expertise_id=EXPERTISE_ID,
        expertise_system=EXPERTISE_ID_SYSTEM,
        requester=GP,
        expert=DERMATOLOGIST,
        patient=PATIENT,
        authored_on=T0,
        question="Lésion pigmentée du dos modifiée depuis 6 mois : exérèse à programmer ?",
        documents=(
            _doc(DocType.TELEMEDICINE_REQUEST, "Demande de téléexpertise", EXPERTISE_DOCUMENT, "4"),
        ),
        answer=(
            "Aspect dermoscopique atypique (réseau irrégulier) : exérèse diagnostique sous 1 mois."
        ),
        decline_reason="Hors de mon champ : adresser à l'onco-dermatologie du CHU.",
    )


_NOTICES: dict[EventType, tuple[str, str, tuple, dict]] = {
    EventType.SLA_REMINDER: (
        "Task",
        "Relance : la demande d'adressage ADR-2025-000123 attend votre réponse depuis 2 h ouvrées.",
        (CARDIOLOGIST,),
        {"attempt": 1},
    ),
    EventType.SLA_ESCALATED: (
        "Task",
        "Sans réponse après relance : la coordination de la CPTS "
        "reprend la demande d'adressage ADR-2025-000123.",
        (CPTS,),
        {"attempt": 2},
    ),
    EventType.SLA_BREACHED: (
        "Task",
        "Délai dépassé pour ADR-2025-000123 : rappeler la patiente et "
        "l'orienter (soins non programmés).",
        (GP, CPTS),
        {},
    ),
    EventType.DISCHARGE_LATE_NOTICE: (
        "Encounter",
        "Sortie annoncée moins de 48 h avant la date "
        "prévue : organiser le retour à domicile en priorité.",
        (CPTS, GP),
        {},
    ),
    EventType.DISCHARGE_FOLLOWUP_DUE: (
        "Encounter",
        "Suivi J+7 : vérifier passages infirmiers, pesée et bilan biologique prévus.",
        (NURSE, CPTS),
        {},
    ),
    EventType.DELIVERY_SENT: (
        "Task",
        "Lettre d'adressage remise au serveur MSSanté du destinataire.",
        (CARDIOLOGIST,),
        {"channel": "mssante", "attempt": 1},
    ),
    EventType.DELIVERY_FAILED: (
        "Task",
        "Échec de remise MSSanté : 550 5.1.1 boîte aux lettres inconnue.",
        (CARDIOLOGIST,),
        {"channel": "mssante", "attempt": 3},
    ),
    EventType.DELIVERY_READ: (
        "Task",
        "Accusé de lecture MSSanté reçu.",
        (CARDIOLOGIST,),
        {"channel": "mssante", "attempt": 1},
    ),
}


def notice_info(event: EventType) -> BusNoticeInfo:
    kind, text, recipients, extra = _NOTICES[event]
    about = (
        CaseRef(resource_type="Task", system=REFERRAL_ID_SYSTEM, value=REFERRAL_ID)
        if kind == "Task"
        else CaseRef(
            resource_type="Encounter",
            system=stay_info().visit_identifier_system,
            value=VISIT_NUMBER,
        )
    )
    if "channel" in extra:
        extra = {
            **extra,
            "address": CARDIOLOGIST.mailbox,
            "about_event": "0b8f6e0e-2f4e-4a51-8d0c-3f1b2a9c7d10",
        }
    return BusNoticeInfo(
        about=about,
        text=text,
        recipients=recipients,
        deadline=T0 + timedelta(hours=4)
        if event in (EventType.SLA_REMINDER, EventType.SLA_ESCALATED)
        else (T0 + timedelta(days=7) if event is EventType.DISCHARGE_FOLLOWUP_DUE else None),
        **extra,
    )


def sample_info(event: EventType | str) -> object:
    """The typed builder input of a sample event."""
    event = EventType(event)
    family = event.family
    if family == "referral":
        return referral_info()
    if family == "stay":
        return stay_info()
    if family == "expertise":
        return expertise_info()
    if family == "consent":
        return consent_info()
    return notice_info(event)


def sample_bundle(
    event: EventType | str, *, event_id: str | None = None, timestamp: datetime | str | None = None
) -> dict:
    """A valid message Bundle of the given event type (fresh event id unless given)."""
    event = EventType(event)
    return EVENT_SPECS[event].builder(sample_info(event), event_id=event_id, timestamp=timestamp)
