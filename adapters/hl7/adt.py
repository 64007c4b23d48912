"""Map a parsed IHE PAM France ADT message to a typed, frozen `AdtEvent` (no FHIR here).

Field positions and their sources (looked up, not guessed):

* HL7 v2.5 ch. 2/3 for MSH, EVN, PID, PV1, PV2, ROL, table 0357 (ERR-3).
* IHE ITI TF-4 §4 "National Extensions for France" (profiles.ihe.net/ITI/TF/Volume4/
  ch-4.html) for the French constraints; the ZBE layout as implemented by PAM FR
  producers (Mediboard ``CHL7v2SegmentZBE``, CPage HAPI custom segments, wiki.hl7.de
  "Segment ZBE"): ZBE-1 movement id (EI, repeats), ZBE-2 start of movement (TS),
  ZBE-3 end (forbidden in France), ZBE-4 action INSERT|UPDATE|CANCEL, ZBE-5 historic
  movement Y/N, ZBE-6 original trigger (conditional: UPDATE/CANCEL), ZBE-7 ward of
  medical responsibility (XON), ZBE-8 ward of care responsibility, ZBE-9 nature.
  INSERT goes with A01/A03/A16, CANCEL with A11/A13/A25 (Mediboard's action table).
* ZFA "Statut DMP du patient" (CPage ``ZFA`` segment for PAM FR 2.9, Mediboard's
  PAM FR schema): ZFA-1 DMP status, ZFA-2 date of status, ZFA-3 closing date, ZFA-4
  valid access authorisation for the facility (Y/N), ZFA-5 its date, ZFA-6 opposition
  to break-glass access (Y/N), ZFA-7 opposition to regulation-centre access (Y/N),
  ZFA-8 date of the oppositions; later versions forbid ZFA-4..8 and add ZFA-9
  "information et opposition à l'alimentation" and ZFA-11 "information et opposition à
  la consultation du DMP" (CWE, tables IHE-FRANCE-ZFA-9/11, whose codes we could not
  find published: kept raw, never interpreted).
* ROL-3 ``ODRP`` is the declared GP (médecin traitant), ``RT`` a correspondent
  (Mediboard ``getROL``); ROL-2 action code (``DE`` deletes), ROL-4 XCN.
* RPPS in XCN: id number (``8``+RPPS or the bare 11-digit RPPS), assigning authority
  ``ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO``, identifier type code ``RPPS`` (an ``ADELI``
  id shares that authority); INS in PID-3 with authority OID 1.2.250.1.213.1.4.8
  (``.9`` NIA, ``.10`` test), trusted only when PID-32 (repeating, table 0445 extended
  by PAM FR) holds ``VALI``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo

from adapters.hl7.message import DEFAULT_SETTINGS, Message, ParserSettings, Rep, parse_message
from adapters.hl7.model import (
    PARIS,
    CareTeamMember,
    DmpStatus,
    HumanName,
    Identifier,
    Location,
    Movement,
    Patient,
    Practitioner,
    Visit,
    looks_like_finess,
    nir_key_ok,
    parse_ts,
)
from schemas.codes import FINESS, INS_SYSTEMS, RPPS, EventType
from schemas.outcome import Issue, IssueCode, ValidationFailed

__all__ = [
    "AdtEvent",
    "CareTeamMember",
    "DmpStatus",
    "HumanName",
    "Identifier",
    "Location",
    "Movement",
    "Patient",
    "Practitioner",
    "Visit",
    "map_adt",
    "parse_adt",
]

TRIGGERS: dict[str, EventType] = {
    "A01": EventType.ADMISSION_NOTIFIED,
    "A11": EventType.ADMISSION_CANCELLED,
    "A16": EventType.DISCHARGE_PLANNED,
    "A25": EventType.DISCHARGE_CANCELLED,
    "A03": EventType.DISCHARGE_COMPLETED,
    "A13": EventType.DISCHARGE_REVERTED,
}
#: the event each cancellation trigger undoes (ZBE-6 of a CANCEL names it)
CANCELLED_BY: dict[str, str] = {"A11": "A01", "A13": "A03", "A25": "A16"}
GENDERS = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "unknown"}
ROLE_GP = "ODRP"
_FINESS_OID = FINESS.removeprefix("urn:oid:")
_RPPS_OID = RPPS.removeprefix("urn:oid:")
_EVENT_CODE = re.compile(r"[A-Z][A-Z0-9]{2}")


@dataclass(frozen=True, slots=True)
class AdtEvent:
    """What CareBus needs from one ADT message, typed and validated, still FHIR-free.

    The FHIR builders turn it into the event Bundle; keeping this step apart lets the
    listener refuse a message (and say why, in the ACK) before any FHIR work is done.
    """

    trigger: str
    event_type: EventType
    control_id: str
    sending_application: str | None
    sending_facility: str | None
    facility_finess: str | None
    message_time: datetime | None
    recorded_time: datetime | None  # EVN-2
    planned_time: datetime | None  # EVN-3
    occurred_time: datetime | None  # EVN-6
    planned_discharge: datetime | None  # A16: PV2-9, else EVN-3
    planned_discharge_date_only: bool  # the sender gave a day, not a time
    patient: Patient
    visit: Visit
    movement: Movement | None
    gp: Practitioner | None  # ROL ODRP (not deleted)
    care_team: tuple[CareTeamMember, ...]
    dmp: DmpStatus | None


class _Mapper:
    """One mapping run: reads fields, collects every Issue instead of stopping at one."""

    def __init__(self, msg: Message, tz: tzinfo, trusted: frozenset[str]) -> None:
        self.msg, self.tz, self.trusted = msg, tz, trusted
        self.issues: list[Issue] = []

    def issue(self, code: IssueCode, text: str, where: str) -> None:
        self.issues.append(Issue(code, text, where))

    def ts(self, seg: str, n: int, *, required: bool = False) -> tuple[datetime, bool] | None:
        raw = self.msg.value(seg, n)
        if not raw:
            if required:
                self.issue(IssueCode.REQUIRED, f"{seg}-{n} (date/time) is required", f"{seg}-{n}")
            return None
        parsed = parse_ts(raw, self.tz)
        if parsed is None:
            self.issue(IssueCode.VALUE, "not an HL7 date/time (YYYYMMDD[HHMM[SS]])", f"{seg}-{n}")
        return parsed

    def when(self, seg: str, n: int, *, required: bool = False) -> datetime | None:
        parsed = self.ts(seg, n, required=required)
        return parsed[0] if parsed else None

    @staticmethod
    def cx(rep: Rep) -> Identifier:
        """CX: id ^ check digit ^ scheme ^ assigning authority (HD) ^ identifier type."""
        return Identifier(rep.comp(1), rep.comp(4, 1) or None, rep.comp(4, 2) or None,
                          rep.comp(5) or None)  # fmt: skip

    def header(self) -> tuple[str, EventType | None]:
        code, trigger = self.msg.message_code, self.msg.trigger_event
        event_type = TRIGGERS.get(trigger)
        if code != "ADT":
            self.issue(IssueCode.NOT_SUPPORTED, "only ADT messages are accepted", "MSH-9.1")
        elif event_type is None:
            self.issue(
                IssueCode.NOT_SUPPORTED,
                f"event {trigger if _EVENT_CODE.fullmatch(trigger) else '(invalid)'} is not "
                "supported (A01 A03 A11 A13 A16 A25)",
                "MSH-9",
            )
        if not self.msg.control_id:
            self.issue(IssueCode.REQUIRED, "MSH-10 (message control id) is required", "MSH-10")
        if not self.msg.version.startswith("2."):
            self.issue(IssueCode.NOT_SUPPORTED, "HL7 version 2.5 is expected", "MSH-12")
        for seg in ("EVN", "PID", "PV1"):
            if self.msg.segment(seg) is None:
                self.issue(IssueCode.REQUIRED, f"the {seg} segment is required", seg)
        return trigger, event_type

    def finess(self) -> str | None:
        ns, uid = self.msg.value("MSH", 4, 1), self.msg.value("MSH", 4, 2)
        if uid == _FINESS_OID:
            candidate = ns
        elif uid.startswith(_FINESS_OID + "."):
            candidate = uid[len(_FINESS_OID) + 1 :]
        else:
            return ns if looks_like_finess(ns) else None
        if len(candidate) == 10 and candidate[0] == "1":  # idNatStruct = "1" + FINESS
            candidate = candidate[1:]
        if looks_like_finess(candidate):
            return candidate
        self.issue(IssueCode.VALUE, "the FINESS of the sending facility is malformed", "MSH-4")
        return None

    def patient(self) -> Patient:
        ids = tuple(self.cx(r) for r in self.msg.get("PID", 3) if r.comp(1))
        if self.msg.segment("PID") is not None and not ids:
            self.issue(IssueCode.REQUIRED, "PID-3 needs at least one identifier", "PID-3")
        ins = next((i for i in ids if i.system in INS_SYSTEMS), None)
        if ins is not None and not nir_key_ok(ins.value):
            self.issue(IssueCode.VALUE, "the INS is not 15 characters with a valid key", "PID-3")
        locals_ = [i for i in ids if i.system not in INS_SYSTEMS]
        ipp = next((i for i in locals_ if i.type_code == "PI"), locals_[0] if locals_ else None)
        if ipp is not None and not (ipp.authority or ipp.oid):
            self.issue(IssueCode.REQUIRED, "the IPP needs its assigning authority", "PID-3")
        reliability = tuple(r.comp(1) for r in self.msg.get("PID", 32) if r.comp(1))
        names = tuple(
            HumanName(
                family=r.comp(1),
                given=tuple(g for g in (r.comp(2), r.comp(3)) if g),
                type_code=r.comp(7),
                prefix=r.comp(5) or None,
            )
            for r in self.msg.get("PID", 5)
            if r.comp(1)
        )
        if self.msg.segment("PID") is not None and not names:
            self.issue(IssueCode.REQUIRED, "PID-5 needs a family name", "PID-5")
        birth = self.ts("PID", 7)
        sex = self.msg.value("PID", 8)
        if sex and sex not in GENDERS:
            self.issue(IssueCode.CODE_INVALID, "PID-8 is not in HL7 table 0001", "PID-8")
        addresses = [r for r in self.msg.get("PID", 11) if r.comp(5)]
        home = next((r for r in addresses if r.comp(7) == "H"), addresses[0] if addresses else None)
        return Patient(
            identifiers=ids,
            ins=ins,
            ins_trusted=ins is not None and not self.trusted.isdisjoint(reliability),
            ipp=ipp,
            names=names,
            birth_date=birth[0].date() if birth else None,
            gender=GENDERS.get(sex),
            postal_code=home.comp(5) if home else None,
            identity_reliability=reliability,
        )

    def visit(self) -> Visit:
        if self.msg.segment("PV1") is not None and not self.msg.value("PV1", 2):
            self.issue(IssueCode.REQUIRED, "PV1-2 (patient class) is required", "PV1-2")
        loc = next(iter(self.msg.get("PV1", 3)), None)
        number = next(iter(self.msg.get("PV1", 19)), None)
        return Visit(
            patient_class=self.msg.value("PV1", 2),
            location=Location(
                loc.comp(1) or None, loc.comp(2) or None, loc.comp(3) or None, loc.comp(4) or None
            )
            if loc
            else None,
            visit_number=self.cx(number) if number and number.comp(1) else None,
            admit_time=self.when("PV1", 44),
            discharge_time=self.when("PV1", 45),
            discharge_disposition=self.msg.value("PV1", 36) or None,
            expected_discharge=self.when("PV2", 9),
        )

    def movement(self, trigger: str) -> Movement | None:
        if self.msg.segment("ZBE") is None:
            return None
        ids = tuple(
            Identifier(r.comp(1), r.comp(2) or None, r.comp(3) or None)
            for r in self.msg.get("ZBE", 1)
            if r.comp(1)
        )
        if not ids:
            self.issue(IssueCode.REQUIRED, "ZBE-1 (movement id) is required", "ZBE-1")
        start = self.when("ZBE", 2, required=True)
        action = self.msg.value("ZBE", 4)
        expected = "CANCEL" if trigger in CANCELLED_BY else "INSERT"
        if action not in ("INSERT", "UPDATE", "CANCEL"):
            self.issue(IssueCode.CODE_INVALID, "ZBE-4 must be INSERT, UPDATE or CANCEL", "ZBE-4")
        elif trigger in TRIGGERS and action != expected:
            self.issue(IssueCode.VALUE, f"ZBE-4 must be {expected} for {trigger}", "ZBE-4")
        original = self.msg.value("ZBE", 6) or CANCELLED_BY.get(trigger)
        if action == "CANCEL" and trigger in CANCELLED_BY and original != CANCELLED_BY[trigger]:
            self.issue(IssueCode.VALUE, f"ZBE-6 must be {CANCELLED_BY[trigger]}", "ZBE-6")
        unit = next(iter(self.msg.get("ZBE", 7)), None)
        return Movement(
            ids=ids,
            start_time=start,
            action=action,
            historic=self.msg.value("ZBE", 5) == "Y",
            original_trigger=original if action != "INSERT" else None,
            medical_unit=(unit.comp(10) or unit.comp(3) or None) if unit else None,
            medical_unit_name=(unit.comp(1) or None) if unit else None,
        )

    def practitioner(self, reps: list[Rep]) -> Practitioner:
        rpps: str | None = None
        others: list[Identifier] = []
        for r in reps:
            value, oid, kind = r.comp(1), r.comp(9, 2), r.comp(13)
            bare = value[1:] if len(value) == 12 and value[0] == "8" else value
            is_rpps = kind == "RPPS" or (not kind and oid == _RPPS_OID and len(bare) == 11)
            if is_rpps and rpps is None:
                if len(bare) == 11 and bare.isascii() and bare.isdigit():
                    rpps = bare
                else:
                    self.issue(IssueCode.VALUE, "the RPPS must be 11 digits", "ROL-4")
            elif value and not is_rpps:
                others.append(Identifier(value, r.comp(9, 1) or None, oid or None, kind or None))
        named = next((r for r in reps if r.comp(2)), None)
        return Practitioner(
            rpps=rpps,
            family=named.comp(2) if named else None,
            given=(named.comp(3) or None) if named else None,
            identifiers=tuple(others),
        )

    def care_team(self) -> tuple[CareTeamMember, ...]:
        team = []
        for seg in self.msg.all("ROL"):
            role, reps = seg.value(3), seg.reps(4)
            if role and reps:
                team.append(CareTeamMember(role, seg.value(2) or None, self.practitioner(reps)))
        return tuple(team)

    def dmp(self) -> DmpStatus | None:
        if self.msg.segment("ZFA") is None:
            return None

        def yes_no(n: int) -> bool | None:
            v = self.msg.value("ZFA", n)
            if v and v not in ("Y", "N"):
                self.issue(IssueCode.CODE_INVALID, f"ZFA-{n} must be Y or N", f"ZFA-{n}")
            return {"Y": True, "N": False}.get(v)

        return DmpStatus(
            status=self.msg.value("ZFA", 1) or None,
            facility_access_authorised=yes_no(4),
            break_glass_opposed=yes_no(6),
            regulation_centre_opposed=yes_no(7),
            feeding_code=self.msg.value("ZFA", 9) or None,
            consultation_code=self.msg.value("ZFA", 11) or None,
        )


def map_adt(
    msg: Message,
    *,
    tz: tzinfo = PARIS,
    trusted_identity_codes: frozenset[str] = frozenset({"VALI"}),
) -> AdtEvent:
    """Map a parsed ADT message; raises `ValidationFailed` with every Issue found.

    `trusted_identity_codes`: PID-32 values under which the INS may be used (VALI by
    the CareBus contract; a territory on PAM FR ≥ 2.10 may add QUAL).
    """
    m = _Mapper(msg, tz, trusted_identity_codes)
    trigger, event_type = m.header()
    message_time = m.when("MSH", 7, required=True)
    recorded = m.when("EVN", 2, required=msg.segment("EVN") is not None)
    planned = m.ts("EVN", 3)
    occurred = m.when("EVN", 6)
    patient, visit = m.patient(), m.visit()
    movement, team, dmp = m.movement(trigger), m.care_team(), m.dmp()
    finess = m.finess()
    planned_discharge: tuple[datetime, bool] | None = None
    if trigger == "A16":
        planned_discharge = m.ts("PV2", 9) or planned
        if planned_discharge is None and not any(i.expression == "PV2-9" for i in m.issues):
            m.issue(IssueCode.REQUIRED, "A16 needs the planned discharge date", "PV2-9")
    elif trigger == "A03" and visit.discharge_time is None and occurred is None:
        m.issue(IssueCode.REQUIRED, "A03 needs the discharge date/time", "PV1-45")
    elif trigger == "A01" and visit.admit_time is None and occurred is None:
        m.issue(IssueCode.REQUIRED, "A01 needs the admission date/time", "PV1-44")
    if m.issues or event_type is None:
        raise ValidationFailed(m.issues)
    gp = next((c.practitioner for c in team if c.role == ROLE_GP and c.action != "DE"), None)
    return AdtEvent(
        trigger=trigger,
        event_type=event_type,
        control_id=msg.control_id,
        sending_application=msg.value("MSH", 3) or None,
        sending_facility=msg.value("MSH", 4) or None,
        facility_finess=finess,
        message_time=message_time,
        recorded_time=recorded,
        planned_time=planned[0] if planned else None,
        occurred_time=occurred,
        planned_discharge=planned_discharge[0] if planned_discharge else None,
        planned_discharge_date_only=bool(planned_discharge and planned_discharge[1]),
        patient=patient,
        visit=visit,
        movement=movement,
        gp=gp,
        care_team=tuple(c for c in team if c.role != ROLE_GP),
        dmp=dmp,
    )


def parse_adt(data: bytes | str, settings: ParserSettings = DEFAULT_SETTINGS) -> AdtEvent:
    """Parse and map in one call: the listener's hot path."""
    return map_adt(parse_message(data, settings))
