"""IHE PAM France ADT (typed `AdtEvent`) → CareBus stay event (FHIR message Bundle), pure.

The event id is derived from (sending facility, MSH-10): a hospital that retransmits a
message after a lost ACK produces the same event id, which every consumer dedups on, so a
retransmission can never become a second event even across restarts. The INS goes into
the FHIR Patient only when PID-32 says the identity is qualified (VALI): an unqualified
INS must not be used to share data (ANS "référentiel INS"); the local IPP always goes in.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from adapters.hl7.adt import AdtEvent
from adapters.hl7.model import HumanName, Patient, Practitioner
from schemas.codes import EventType
from schemas.events import build_event
from schemas.model import OrganizationInfo, PatientInfo, PractitionerInfo, StayInfo
from schemas.outcome import Issue, IssueCode, ValidationFailed

_NS = uuid.UUID("0f8a3c52-7d1e-4b8e-a0f5-4c1b9a6e2d37")
_URN_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def event_id_for(facility: str, control_id: str) -> str:
    """Deterministic event id of an HL7 message: same facility + MSH-10 → same event."""
    return str(uuid.uuid5(_NS, f"{facility}|{control_id}"))


def source_for(adt: AdtEvent) -> str:
    facility = adt.facility_finess or adt.sending_facility or "unknown"
    app = adt.sending_application or "his"
    return f"urn:carebus:hl7v2:{_URN_UNSAFE.sub('_', facility)}:{_URN_UNSAFE.sub('_', app)}"


def _name(names: tuple[HumanName, ...]) -> tuple[str, str] | None:
    """The birth name (L) first: it is the INS reference identity; else the usual one."""
    for wanted in ("L", "D", ""):
        for n in names:
            if (not wanted or n.type_code == wanted) and n.family:
                return n.family, " ".join(n.given)
    return None


def _patient(p: Patient, opposed: bool, issues: list[Issue]) -> PatientInfo | None:
    name = _name(p.names)
    if name is None:
        issues.append(Issue(IssueCode.REQUIRED, "the patient's name is missing", "PID-5"))
    if p.birth_date is None:
        issues.append(Issue(IssueCode.REQUIRED, "the patient's birth date is missing", "PID-7"))
    ins = p.ins.value if (p.ins is not None and p.ins_trusted) else None
    local = (p.ipp.system, p.ipp.value) if (p.ipp is not None and p.ipp.system) else None
    if ins is None and local is None:
        issues.append(
            Issue(
                IssueCode.REQUIRED,
                "no qualified INS (PID-32=VALI) and no IPP with its assigning "
                "authority: the patient cannot be identified",
                "PID-3",
            )
        )
    if issues or name is None or p.birth_date is None:
        return None
    return PatientInfo(
        family=name[0],
        given=name[1] or "-",
        birth_date=p.birth_date,
        gender=p.gender if p.gender in ("male", "female", "other", "unknown") else "unknown",  # type: ignore[arg-type]
        ins=ins,
        local_id=local,
        postcode=p.postal_code,
        sharing_opposition=opposed,
    )


def _practitioner(p: Practitioner | None) -> PractitionerInfo | None:
    if p is None or not p.rpps:
        return None  # no RPPS: the directory cannot resolve it; routing alerts the coordinator
    return PractitionerInfo(rpps=p.rpps, family=p.family or "-", given=p.given or "-", role="10")


def stay_info(adt: AdtEvent) -> StayInfo:
    """Build the typed stay from an ADT event; ValidationFailed lists what is missing."""
    issues: list[Issue] = []
    if not adt.facility_finess:
        issues.append(
            Issue(
                IssueCode.REQUIRED,
                "the sending facility's FINESS is needed (MSH-4, OID 1.2.250.1.71.4.2.2)",
                "MSH-4",
            )
        )
    visit = adt.visit
    if visit.visit_number is None or not visit.visit_number.value:
        issues.append(Issue(IssueCode.REQUIRED, "the stay number (NDA) is missing", "PV1-19"))
    opposed = bool(adt.dmp is not None and adt.dmp.access_opposed)
    patient = _patient(adt.patient, opposed, issues)
    admitted: datetime | None = (
        visit.admit_time or (adt.movement.start_time if adt.movement else None) or adt.message_time
    )
    if admitted is None:
        issues.append(Issue(IssueCode.REQUIRED, "the admission time is missing", "PV1-44"))
    if issues or patient is None or admitted is None or visit.visit_number is None:
        raise ValidationFailed(issues)
    unit = None
    if adt.movement and adt.movement.medical_unit:
        unit = adt.movement.medical_unit_name or adt.movement.medical_unit
    elif visit.location is not None:
        unit = visit.location.point_of_care
    discharged = visit.discharge_time or (
        adt.occurred_time if adt.event_type is EventType.DISCHARGE_COMPLETED else None
    )
    team = tuple(p for p in (_practitioner(m.practitioner) for m in adt.care_team) if p)
    return StayInfo(
        hospital=OrganizationInfo(finess=adt.facility_finess or "", name=adt.sending_facility),
        visit_number=visit.visit_number.value,
        visit_system=visit.visit_number.system,
        patient=patient,
        admitted_at=admitted,
        movement_id=adt.movement.ids[0].value if adt.movement and adt.movement.ids else None,
        unit=unit,
        planned_discharge=adt.planned_discharge,
        discharged_at=discharged,
        discharge_disposition=_disposition(visit.discharge_disposition),
        declared_gp=_practitioner(adt.gp),
        care_team=team,
    )


#: PV1-36 (HL7 table 0112, as used by PAM FR) → FHIR discharge-disposition
_DISPOSITION = {
    "01": "home",
    "1": "home",
    "02": "other-hcf",
    "2": "other-hcf",
    "03": "snf",
    "04": "other-hcf",
    "05": "other-hcf",
    "06": "home",
    "07": "aadvice",
    "20": "exp",
    "21": "exp",
    "30": "oth",
}


def _disposition(code: str | None) -> str | None:
    return _DISPOSITION.get(code or "", "oth" if code else None)


def to_bundle(adt: AdtEvent) -> dict:
    """The FHIR message Bundle of an ADT event (ValidationFailed if it lacks what it needs)."""
    info = stay_info(adt)
    try:
        return build_event(
            adt.event_type,
            info,
            event_id=event_id_for(
                adt.facility_finess or adt.sending_facility or "", adt.control_id
            ),
            source=source_for(adt),
            timestamp=adt.message_time,
        )
    except ValueError as exc:  # a builder's own precondition (e.g. A03 without time)
        raise ValidationFailed([Issue(IssueCode.REQUIRED, str(exc), _where(adt))]) from exc


def _where(adt: AdtEvent) -> str:
    return "PV2-9" if adt.event_type is EventType.DISCHARGE_PLANNED else "PV1-45"
