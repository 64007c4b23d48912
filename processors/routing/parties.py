"""The parties of a case, read from an event's Bundle, pure.

Routing needs to know who is who in a case (requester, performer, declared GP, care
team, hospital, patient's territory and consent); SLA notices need it too, long after the
event that named them, so `CaseParties` is small and serialisable (kept per open case
in the SLA agent's table).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from adapters.bundle_view import BundleView, PersonView
from schemas.codes import EventType

#: stay roles: the declared GP and anyone the hospital named in the care team
ROLE_GP = "gp"
ROLE_CARE_TEAM = "care-team"
ROLE_REQUESTER = "requester"
ROLE_PERFORMER = "performer"
ROLE_COORDINATOR = "coordinator"


@dataclass(frozen=True, slots=True)
class Party:
    role: str
    rpps: str  # 11 digits, "" for an organisation
    display: str = ""
    mailbox: str = ""  # as the producer gave it; the directory is preferred


@dataclass(frozen=True, slots=True)
class CaseParties:
    parties: tuple[Party, ...] = ()
    hospital_finess: str = ""  # 9 chars
    patient_postcode: str = ""
    patient_ins: bool = False  # a qualified INS is present (needed to file in the record)
    opposition: bool = False  # the patient opposes record/platform sharing
    extra: dict[str, str] = field(default_factory=dict)
    #: when an inbound event last named the case (epoch s; 0: never dated), the clock of
    #: its retention (processors/sla/retention.py)
    touched: int = 0

    def with_role(self, role: str) -> tuple[Party, ...]:
        return tuple(p for p in self.parties if p.role == role)

    def merged(self, newer: CaseParties) -> CaseParties:
        """Later events may name more people (an accept names the performer's role…)."""
        seen = {(p.role, p.rpps) for p in newer.parties}
        keep = tuple(p for p in self.parties if (p.role, p.rpps) not in seen)
        return CaseParties(
            parties=newer.parties + keep,
            hospital_finess=newer.hospital_finess or self.hospital_finess,
            patient_postcode=newer.patient_postcode or self.patient_postcode,
            patient_ins=newer.patient_ins or self.patient_ins,
            opposition=newer.opposition or self.opposition,
            extra={**self.extra, **newer.extra},
            touched=max(self.touched, newer.touched),
        )

    def to_bytes(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises (nested) dataclasses natively: ~10x asdict

    @classmethod
    def from_bytes(cls, data: bytes) -> CaseParties:
        raw = orjson.loads(data)
        raw["parties"] = tuple(Party(**p) for p in raw.get("parties", ()))
        return cls(**raw)


def _party(role: str, person: PersonView | None) -> Party | None:
    if person is None or not person.rpps_id:
        return None
    rpps = person.rpps_id[1:] if person.rpps_id.startswith("8") else person.rpps_id
    return Party(role, rpps, person.display, person.mailbox)


def parties_of(view: BundleView) -> CaseParties:
    """Who the event names, by role (unknown resources are ignored, never guessed)."""
    et = view.event
    focus = view.focus
    found: list[Party | None] = []
    hospital = ""
    if et is not None and et.family == "referral":
        found += [
            _party(ROLE_REQUESTER, view.person(view.resolve(focus.get("requester")))),
            _party(ROLE_PERFORMER, view.person(view.resolve(focus.get("owner")))),
        ]
        sr = view.first("ServiceRequest") or {}
        for perf in sr.get("performer", []) or []:
            found.append(_party(ROLE_PERFORMER, view.person(view.resolve(perf))))
    elif et is not None and et.family == "stay":
        patient = view.first("Patient") or {}
        for gp in patient.get("generalPractitioner", []) or []:
            found.append(_party(ROLE_GP, view.person(view.resolve(gp))))
        for part in focus.get("participant", []) or []:
            found.append(_party(ROLE_CARE_TEAM, view.person(view.resolve(part.get("individual")))))
        org = view.organization(view.resolve(focus.get("serviceProvider")))
        hospital = org.finess_id[1:] if org and org.finess_id.startswith("1") else ""
    elif et is not None and et.family == "expertise":
        if focus.get("resourceType") == "CommunicationRequest":
            found.append(_party(ROLE_REQUESTER, view.person(view.resolve(focus.get("requester")))))
            for r in focus.get("recipient", []) or []:
                found.append(_party(ROLE_PERFORMER, view.person(view.resolve(r))))
        else:  # Communication: the expert answers the requester
            found.append(_party(ROLE_PERFORMER, view.person(view.resolve(focus.get("sender")))))
            for r in focus.get("recipient", []) or []:
                found.append(_party(ROLE_REQUESTER, view.person(view.resolve(r))))
    patient = view.patient()
    postcode = ""
    pres = view.first("Patient") or {}
    for addr in pres.get("address", []) or []:
        postcode = str(addr.get("postalCode") or "") or postcode
    parties: list[Party] = []
    for p in found:
        if p is not None and (p.role, p.rpps) not in {(q.role, q.rpps) for q in parties}:
            parties.append(p)
    return CaseParties(
        parties=tuple(parties),
        hospital_finess=hospital,
        patient_postcode=postcode,
        patient_ins=bool(patient and patient.ins_qualified),
        opposition=bool(patient and patient.sharing_opposition),
    )


def is_answer_from_performer(et: EventType) -> bool:
    return et in (
        EventType.REFERRAL_ACCEPTED,
        EventType.REFERRAL_REJECTED,
        EventType.REFERRAL_COMPLETED,
        EventType.EXPERTISE_ANSWERED,
        EventType.EXPERTISE_DECLINED,
    )
