"""Case ids: the Kafka key and CloudEvents subject of every event.

All events of one case (a referral, a stay, a tele-expertise) must land on one partition,
in order, so the key is derived from the business identifier of the case's focus
resource, never from the event: `"{family}/{system}|{value}"`, e.g.
`referral/https://carebus.fr/fhir/sid/referral|ADR-2025-000123`.

Works on the plain Bundle dict (no model parsing): it runs for every inbound message
and in processors that re-key bus notices.
"""

from __future__ import annotations

import hashlib

from schemas.codes import INS_SYSTEMS, EventType
from schemas.model import CaseRef

#: system of the patient pseudonym that keys consent decisions (see `patient_key`)
PATIENT_KEY_SYSTEM = "urn:carebus:patient-key"

#: case family of the resource type a case is about (bus notices name it in about.type)
FOCUS_FAMILY: dict[str, str] = {
    "Task": "referral",
    "Encounter": "stay",
    "CommunicationRequest": "expertise",
}


class CaseIdError(ValueError):
    """The bundle does not name its case; `expression` says where the id was expected."""

    def __init__(self, message: str, expression: str) -> None:
        super().__init__(message)
        self.expression = expression


def format_case_id(family: str, system: str, value: str) -> str:
    return f"{family}/{system}|{value}"


def parse_case_id(case: str) -> tuple[str, str, str]:
    """Inverse of `format_case_id`: (family, system, value)."""
    family, _, rest = case.partition("/")
    system, sep, value = rest.rpartition("|")
    if not family or not sep or not system or not value:
        raise ValueError(f"not a case id: {case!r}")
    return family, system, value


def case_id_of(about: CaseRef) -> str:
    """Case id of a logical case reference (what bus notices are about)."""
    return format_case_id(FOCUS_FAMILY[about.resource_type], about.system, about.value)


def _identifier(ident: object, where: str) -> tuple[str, str]:
    if isinstance(ident, dict):
        system, value = ident.get("system"), ident.get("value")
        if isinstance(system, str) and system and isinstance(value, str) and value:
            return system, value
    raise CaseIdError(f"the case identifier at {where} needs a system and a value", where)


def _first(obj: dict, key: str, where: str) -> object:
    items = obj.get(key)
    if not isinstance(items, list) or not items:
        raise CaseIdError(f"{where}.{key} is missing: it names the case", f"{where}.{key}")
    return items[0]


def focus_entry(bundle: dict) -> tuple[int, dict]:
    """(entry index, resource) of MessageHeader.focus[0], resolved by fullUrl."""
    try:
        entries = bundle["entry"]
        header = entries[0]["resource"]
        reference = header["focus"][0]["reference"]
    except (KeyError, IndexError, TypeError) as exc:
        raise CaseIdError(
            "MessageHeader.focus is missing", "Bundle.entry[0].resource.focus"
        ) from exc
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and entry.get("fullUrl") == reference:
            resource = entry.get("resource")
            if isinstance(resource, dict):
                return i, resource
    raise CaseIdError(
        f"focus {reference!r} does not resolve to an entry",
        "Bundle.entry[0].resource.focus[0].reference",
    )


def patient_key(system: str, value: str) -> str:
    """A stable pseudonym of a patient's INS, used as the consent topic key.

    Keeps the national identifier out of Kafka keys, partition logs, dead-letter reasons
    and audit records, while every worker derives the same key from an event's INS. It
    is a pseudonym (the NIR space is small enough to enumerate), not anonymisation: the
    topic itself stays as protected as any topic carrying patient data.
    """
    return hashlib.sha256(f"{system}|{value}".encode()).hexdigest()[:32]


def patient_keys(bundle: dict) -> list[str]:
    """Pseudonyms of every INS carried by the Patient entries of a Bundle."""
    keys = []
    for entry in bundle.get("entry") or ():
        res = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(res, dict) and res.get("resourceType") == "Patient":
            keys += _ins_keys(res)
    return keys


def _ins_keys(patient: dict) -> list[str]:
    keys = []
    for ident in patient.get("identifier") or ():
        if isinstance(ident, dict):
            system, value = ident.get("system"), ident.get("value")
            if isinstance(system, str) and system in INS_SYSTEMS and isinstance(value, str):
                if value:
                    keys.append(patient_key(system, value))
    return keys


def _consent_case(bundle: dict, consent: dict, where: str) -> str:
    """A consent's case is its patient: the latest decision per patient is what counts."""
    reference = consent["patient"].get("reference")
    if not isinstance(reference, str):
        reference = None
    for entry in bundle.get("entry") or ():
        if isinstance(entry, dict) and reference and entry.get("fullUrl") == reference:
            res = entry.get("resource")
            keys = _ins_keys(res) if isinstance(res, dict) else []
            if keys:
                return format_case_id("consent", PATIENT_KEY_SYSTEM, keys[0])
    raise CaseIdError("a consent names its patient, who needs an INS", f"{where}.patient")


def case_id(event_type: EventType | str, bundle: dict) -> str:
    """The case id of a message Bundle; raises CaseIdError when it cannot be derived."""
    event = EventType(event_type)
    index, res = focus_entry(bundle)
    where = f"Bundle.entry[{index}].resource"
    family = event.family
    if family == "referral" or family == "stay":
        ident = _first(res, "identifier", where)
        system, value = _identifier(ident, f"{where}.identifier[0]")
        return format_case_id(family, system, value)
    if family == "expertise":
        if res.get("resourceType") == "CommunicationRequest":
            system, value = _identifier(_first(res, "identifier", where), f"{where}.identifier[0]")
        else:
            based = _first(res, "basedOn", where)
            ident = based.get("identifier") if isinstance(based, dict) else None
            system, value = _identifier(ident, f"{where}.basedOn[0].identifier")
        return format_case_id(family, system, value)
    if family == "consent":
        if not isinstance(res.get("patient"), dict):
            raise CaseIdError("Consent.patient is missing: it names the case", f"{where}.patient")
        return _consent_case(bundle, res, where)
    about = _first(res, "about", where)
    kind = about.get("type") if isinstance(about, dict) else None
    if not isinstance(kind, str) or kind not in FOCUS_FAMILY:
        raise CaseIdError(
            f"about.type must be one of {', '.join(FOCUS_FAMILY)}, got {kind!r}",
            f"{where}.about[0].type",
        )
    ident = about.get("identifier") if isinstance(about, dict) else None
    system, value = _identifier(ident, f"{where}.about[0].identifier")
    return format_case_id(FOCUS_FAMILY[kind], system, value)


_FAMILY_FOCUS = {family: rtype for rtype, family in FOCUS_FAMILY.items()}


def case_ref(case: str) -> CaseRef:
    """Inverse of `case_id_of`: the logical reference bus notices point at."""
    family, system, value = parse_case_id(case)
    if family not in _FAMILY_FOCUS:
        raise ValueError(f"case family {family!r} has no focus resource")
    return CaseRef(resource_type=_FAMILY_FOCUS[family], system=system, value=value)  # type: ignore[arg-type]
