"""The patient's sharing decision as a FHIR R4 Consent (`consent.updated`).

An opposition is an active Consent whose provision denies disclosure (policy rule
v3 ActCode OPTOUT); lifting it is a new active Consent that permits it (OPTIN). The bus
keeps the latest decision per patient (compacted topic keyed by a patient pseudonym,
see `schemas.cases.patient_key`) and routing consults it for every event of that patient,
next to the opposition an event may carry itself.
"""

from __future__ import annotations

from schemas.builders.common import (
    DEFAULT_SOURCE,
    MessageBuilder,
    Stamp,
    fhir_datetime,
    now_stamp,
    ref,
)
from schemas.codes import LOINC, V3_ACT_CODE, EventType
from schemas.model import ConsentInfo

CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
#: LOINC 59284-0 "Patient Consent": the category every CareBus consent carries
CONSENT_CATEGORY = "59284-0"
OPT_OUT, OPT_IN = "OPTOUT", "OPTIN"


def build_consent_updated(
    info: ConsentInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """A patient's opposition to sharing recorded (or lifted) by a professional/facility."""
    b = MessageBuilder(event_id)
    org = b.organization(info.organization) if info.organization is not None else None
    author = b.practitioner_role(info.author) if info.author is not None else None
    patient = b.patient(info.patient)
    consent: dict = {
        "resourceType": "Consent",
        "identifier": [{"system": info.consent_system, "value": info.consent_id}],
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": LOINC, "code": CONSENT_CATEGORY}]}],
        "patient": ref(patient),
        "dateTime": fhir_datetime(info.recorded_at),
        "performer": [ref(patient)],
        "policyRule": {
            "coding": [{"system": V3_ACT_CODE, "code": OPT_OUT if info.opposes_sharing else OPT_IN}]
        },
        "provision": {
            "type": "deny" if info.opposes_sharing else "permit",
            "action": [{"coding": [{"system": CONSENT_ACTION, "code": "disclose"}]}],
        },
    }
    if org is not None:
        consent["organization"] = [ref(org)]
    focus = b.add("Consent", consent, front=True)
    sender = author or org
    return b.message(
        EventType.CONSENT_UPDATED,
        focus=focus,
        sender=sender,
        source=source,
        timestamp=now_stamp(timestamp),
    )
