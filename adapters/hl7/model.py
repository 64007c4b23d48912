"""Value objects of an ADT event and the French identifier checks they rely on.

Kept apart from the mapper (`adapters.hl7.adt`) so the types can be imported by the FHIR
builders and processors without pulling the HL7 parser in. Frozen and slotted: an event
is a fact, read on every hop, never mutated.

Identifier rules (sources cited in `adapters.hl7.adt`): the INS-NIR/NIA key is
97 - (13 first characters mod 97) with Corsica 2A/2B read as 19/18; a FINESS is 9
characters, the last a Luhn key; an RPPS is 11 digits, published as idNatPs "8" + RPPS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")
NAME_USES = {"L": "official", "D": "usual", "M": "maiden", "A": "nickname"}
_TS = re.compile(
    r"(\d{4})(\d\d)?(\d\d)?(\d\d)?(\d\d)?(\d\d)?(?:\.(\d{1,4}))?([+-]\d{4})?", re.ASCII
)


@dataclass(frozen=True, slots=True)
class Identifier:
    """A CX/EI/HD-qualified identifier; `oid` is the assigning authority's universal id."""

    value: str
    authority: str | None = None
    oid: str | None = None
    type_code: str | None = None

    @property
    def system(self) -> str | None:
        return f"urn:oid:{self.oid}" if self.oid else None


@dataclass(frozen=True, slots=True)
class HumanName:
    """One PID-5 repetition; PAM FR sends the birth name (L) and the usual name (D)."""

    family: str
    given: tuple[str, ...]
    type_code: str  # PID-5.7: L = legal/birth name, D = usual name
    prefix: str | None = None

    @property
    def use(self) -> str | None:
        """FHIR HumanName.use for the type code (None when unmapped)."""
        return NAME_USES.get(self.type_code)


@dataclass(frozen=True, slots=True)
class Patient:
    """PID. The INS is kept even when untrusted: routing may use it, sharing may not."""

    identifiers: tuple[Identifier, ...]  # every PID-3 repetition, in order
    ins: Identifier | None  # the national identity, trusted or not
    ins_trusted: bool  # PID-32 holds a trusted identity status (VALI)
    ipp: Identifier | None  # the facility's local patient id, with its authority
    names: tuple[HumanName, ...]
    birth_date: date | None
    gender: str | None  # FHIR administrative gender
    postal_code: str | None
    identity_reliability: tuple[str, ...]  # PID-32 codes as sent


@dataclass(frozen=True, slots=True)
class Location:
    """PV1-3 (PL): where the patient is, so a coordinator can call the right ward."""

    point_of_care: str | None
    room: str | None
    bed: str | None
    facility: str | None


@dataclass(frozen=True, slots=True)
class Visit:
    """PV1/PV2: the stay (visit number = NDA), the case key of stay events."""

    patient_class: str
    location: Location | None
    visit_number: Identifier | None
    admit_time: datetime | None
    discharge_time: datetime | None
    discharge_disposition: str | None
    expected_discharge: datetime | None


@dataclass(frozen=True, slots=True)
class Movement:
    """ZBE (IHE PAM France): the movement id lets a CANCEL find what it undoes."""

    ids: tuple[Identifier, ...]
    start_time: datetime | None
    action: str  # INSERT | UPDATE | CANCEL
    historic: bool
    original_trigger: str | None
    medical_unit: str | None  # ZBE-7 XON-10 (or XON-3), e.g. the UF code
    medical_unit_name: str | None


@dataclass(frozen=True, slots=True)
class Practitioner:
    """ROL-4 (XCN): the RPPS is what the directory and MSSanté routing need."""

    rpps: str | None  # 11 digits
    family: str | None
    given: str | None
    identifiers: tuple[Identifier, ...]  # the other ids (ADELI, local)

    @property
    def id_nat_ps(self) -> str | None:
        """The Annuaire Santé idNatPs ("8" + RPPS), FHIR value under the RPPS system."""
        return f"8{self.rpps}" if self.rpps else None


@dataclass(frozen=True, slots=True)
class CareTeamMember:
    """A ROL segment other than the declared GP (correspondents, attending doctors)."""

    role: str  # ROL-3.1
    action: str | None  # ROL-2: AD, UP, DE, UC…
    practitioner: Practitioner


@dataclass(frozen=True, slots=True)
class DmpStatus:
    """ZFA (IHE PAM France "Statut DMP du patient"): the patient's word on the DMP."""

    status: str | None  # ZFA-1
    facility_access_authorised: bool | None  # ZFA-4
    break_glass_opposed: bool | None  # ZFA-6
    regulation_centre_opposed: bool | None  # ZFA-7
    feeding_code: str | None  # ZFA-9, raw (value set unpublished)
    consultation_code: str | None  # ZFA-11, raw (value set unpublished)

    @property
    def access_opposed(self) -> bool | None:
        """True when the segment states a refusal of DMP access, None when it cannot say."""
        if self.break_glass_opposed or self.regulation_centre_opposed:
            return True
        if self.facility_access_authorised is not None:
            return not self.facility_access_authorised
        return None


@lru_cache(maxsize=4096)  # MSH-7, EVN-2, ZBE-2… often repeat the same instant
def parse_ts(text: str, tz: tzinfo = PARIS) -> tuple[datetime, bool] | None:
    """HL7 TS ``YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]`` → (aware datetime, date only).

    Times without an offset are French local time (`tz`); None when malformed.
    """
    m = _TS.fullmatch(text)
    if m is None or (m[7] and not m[6]):
        return None
    y, mo, d, h, mi, s, frac, off = m.groups()
    try:
        zone = tz
        if off:
            sign = -1 if off[0] == "-" else 1
            zone = timezone(sign * timedelta(hours=int(off[1:3]), minutes=int(off[3:5])))
        value = datetime(
            int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0),
            int((frac or "0").ljust(6, "0")), tzinfo=zone,
        )  # fmt: skip
    except ValueError:  # month 13, Feb 30, hour 24, offset ≥ 24 h…
        return None
    return value, h is None


def nir_key_ok(value: str) -> bool:
    """INS-NIR/NIA check: 13 characters + key = 97 - (number mod 97); Corsica 2A/2B."""
    if len(value) != 15 or not (value.isascii() and value[13:].isdigit()):
        return False
    body = value[:13].upper()
    body = body[:5] + {"2A": "19", "2B": "18"}.get(body[5:7], body[5:7]) + body[7:]
    if not (body.isascii() and body.isdigit()):
        return False
    return int(value[13:]) == 97 - int(body) % 97


def looks_like_finess(value: str) -> bool:
    """9 characters: department (digits, 2A, 2B) + 7 digits; all-digit ones Luhn-checked."""
    if len(value) != 9 or not value.isascii():
        return False
    if value[:2] in ("2A", "2B"):
        return value[2:].isdigit()
    if not value.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(value)):
        n = int(ch) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0
