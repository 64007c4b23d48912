"""Hospital stay messages (admission / discharge): a FHIR Encounter from the hospital.

These mirror the IHE PAM France ADT events (A01/A11 admission, A16/A25 pending
discharge, A03/A13 discharge) so the HL7 v2 mapper and a FHIR-speaking hospital produce
the same message. The Encounter's first identifier is the stay number (the case id); the
ZBE movement id is the second one, which lets a later cancel (A25/A13) name the
movement it undoes.
"""

from __future__ import annotations

from schemas.builders.common import (
    DEFAULT_SOURCE,
    DISCHARGE_DISPOSITION,
    MessageBuilder,
    Stamp,
    fhir_datetime,
    now_stamp,
    ref,
)
from schemas.codes import EXT_PLANNED_DISCHARGE, V2_0203, V3_ACT_CODE, EventType
from schemas.model import StayInfo

#: the Encounter.status each stay event must carry
STAY_STATUS: dict[EventType, str] = {
    EventType.ADMISSION_NOTIFIED: "in-progress",
    EventType.ADMISSION_CANCELLED: "cancelled",
    EventType.DISCHARGE_PLANNED: "in-progress",
    EventType.DISCHARGE_CANCELLED: "in-progress",
    EventType.DISCHARGE_COMPLETED: "finished",
    EventType.DISCHARGE_REVERTED: "in-progress",
}

PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


def _build(
    event: EventType,
    info: StayInfo,
    *,
    event_id: str | None,
    source: str,
    timestamp: Stamp,
) -> dict:
    planned, ended = info.planned_discharge, info.discharged_at
    if event is EventType.DISCHARGE_PLANNED and planned is None:
        raise ValueError("discharge.planned needs planned_discharge (the 48 h notice is the point)")
    if event is EventType.DISCHARGE_COMPLETED and ended is None:
        raise ValueError("discharge.completed needs discharged_at")

    stamp = now_stamp(timestamp)
    b = MessageBuilder(event_id)
    hospital = b.organization(info.hospital)
    gp = b.practitioner_role(info.declared_gp) if info.declared_gp else None
    patient = b.patient(info.patient, gp=gp)
    team = [b.practitioner_role(p) for p in info.care_team]

    enc: dict = {"resourceType": "Encounter"}
    if event is EventType.DISCHARGE_PLANNED and planned is not None:
        enc["extension"] = [{"url": EXT_PLANNED_DISCHARGE, "valueDateTime": fhir_datetime(planned)}]
    identifiers = [
        {
            "use": "official",
            "type": {"coding": [{"system": V2_0203, "code": "VN"}]},
            "system": info.visit_identifier_system,
            "value": info.visit_number,
        }
    ]
    if info.movement_id:
        identifiers.append(
            {
                "use": "secondary",
                "system": info.movement_identifier_system,
                "value": info.movement_id,
            }
        )
    enc |= {
        "identifier": identifiers,
        "status": STAY_STATUS[event],
        "class": {"system": V3_ACT_CODE, "code": "IMP", "display": "inpatient encounter"},
        "subject": ref(patient),
    }
    if team:
        enc["participant"] = [
            {
                "type": [{"coding": [{"system": PARTICIPATION_TYPE, "code": "ATND"}]}],
                "individual": ref(r),
            }
            for r in team
        ]
    period = {"start": fhir_datetime(info.admitted_at)}
    if event is EventType.DISCHARGE_COMPLETED and ended is not None:
        period["end"] = fhir_datetime(ended)
    enc["period"] = period
    if event is EventType.DISCHARGE_COMPLETED and info.discharge_disposition:
        enc["hospitalization"] = {
            "dischargeDisposition": {
                "coding": [{"system": DISCHARGE_DISPOSITION, "code": info.discharge_disposition}]
            }
        }
    if info.unit:
        enc["location"] = [{"location": {"display": info.unit}, "status": "active"}]
    enc["serviceProvider"] = ref(hospital)
    focus = b.add("Encounter", enc, front=True)
    if event is EventType.DISCHARGE_COMPLETED and info.letter is not None:
        # the lettre de liaison: authored by the attending doctor when known, else the hospital
        b.document(info.letter, subject=patient, author=team[0] if team else hospital)
    return b.message(event, focus=focus, sender=hospital, source=source, timestamp=stamp)


def build_admission_notified(
    info: StayInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Admission (A01): lets the GP and the CPTS know early that the patient is in."""
    return _build(
        EventType.ADMISSION_NOTIFIED, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_admission_cancelled(
    info: StayInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Admission cancelled (A11): the stay never happened; open follow-ups are dropped."""
    return _build(
        EventType.ADMISSION_CANCELLED, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_discharge_planned(
    info: StayInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Pending discharge (A16) with the planned date: starts the 48 h coordination."""
    return _build(
        EventType.DISCHARGE_PLANNED, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_discharge_cancelled(
    info: StayInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Pending discharge cancelled (A25): the planned date no longer holds."""
    return _build(
        EventType.DISCHARGE_CANCELLED, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_discharge_completed(
    info: StayInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Discharge (A03), with the lettre de liaison when available (due the same day)."""
    return _build(
        EventType.DISCHARGE_COMPLETED, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_discharge_reverted(
    info: StayInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Discharge cancelled (A13): the patient is still in; the J+7 check is withdrawn."""
    return _build(
        EventType.DISCHARGE_REVERTED, info, event_id=event_id, source=source, timestamp=timestamp
    )
