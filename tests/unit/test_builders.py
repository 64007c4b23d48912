"""Builders: every event type builds a FHIR R4 message that the validator and fhir.resources
accept, with the French conventions (INS, RPPS, FINESS, MSSanté) where receivers expect them."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace
from datetime import date, datetime
from typing import cast

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from schemas.builders import (
    build_delivery_sent,
    build_discharge_planned,
    build_expertise_answered,
    build_expertise_declined,
    build_notice,
    build_referral_completed,
    build_referral_rejected,
)
from schemas.builders.common import (
    EXT_ADDRESS,
    EXT_ATTEMPT,
    EXT_CHANNEL,
    FR_CORE_EMAIL_TYPE,
    FR_CORE_ID_TYPE,
    fhir_datetime,
)
from schemas.codes import (
    EVENT_CODESYSTEM,
    EXT_DEADLINE,
    EXT_PLANNED_DISCHARGE,
    EXT_SHARING_OPPOSITION,
    FINESS,
    INS_NIR,
    LOINC,
    RPPS,
    DocType,
    EventType,
)
from schemas.events import EVENT_SPECS, build_event
from schemas.model import OrganizationInfo, PatientInfo, PractitionerInfo
from schemas.samples import (
    expertise_info,
    notice_info,
    referral_info,
    sample_bundle,
    stay_info,
)
from schemas.task_states import EVENT_TARGET_STATUS
from schemas.validate import validate_bundle

STAMP = "2025-03-17T09:30:00+01:00"


def resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def one(bundle: dict, kind: str) -> dict:
    found = resources(bundle, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def focus_of(bundle: dict) -> dict:
    target = bundle["entry"][0]["resource"]["focus"][0]["reference"]
    return next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == target)


def test_registry_covers_every_event_type() -> None:
    assert set(EVENT_SPECS) == set(EventType)
    for event, spec in EVENT_SPECS.items():
        assert spec.event is event
        assert spec.focus_type in spec.required_resource_types
        assert callable(spec.builder) and callable(spec.rule)


@pytest.mark.parametrize("event", list(EventType), ids=str)
def test_every_event_builds_a_valid_message(event: EventType) -> None:
    bundle = sample_bundle(event, event_id="3f0c9a52-1f7e-4b8e-9d1a-2c3b4d5e6f70", timestamp=STAMP)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "message"
    assert bundle["id"] == "3f0c9a52-1f7e-4b8e-9d1a-2c3b4d5e6f70"
    assert bundle["timestamp"] == STAMP
    header = bundle["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader"
    assert header["eventCoding"] == {
        "system": EVENT_CODESYSTEM,
        "code": event.value,
        "display": header["eventCoding"]["display"],
    }
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert all(u.startswith("urn:uuid:") for u in urls) and len(set(urls)) == len(urls)
    assert focus_of(bundle)["resourceType"] == EVENT_SPECS[event].focus_type
    assert ("sender" in header) is event.inbound
    # the bus's validator and fhir.resources R4B both accept it
    validated = validate_bundle(bundle, allow_bus_events=True)
    assert validated.event_type is event and validated.event_id == bundle["id"]
    parsed = Bundle.model_validate(bundle)
    assert parsed.entry[0].resource.get_resource_type() == "MessageHeader"


def test_every_reference_points_inside_the_bundle() -> None:
    for event in EventType:
        bundle = sample_bundle(event)
        urls = {e["fullUrl"] for e in bundle["entry"]}
        refs = _references(bundle)
        assert len(refs) == orjson.dumps(bundle).count(b'"reference":') > 0, event
        assert set(refs) <= urls, event


def _references(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


def test_same_event_id_builds_identical_bytes_and_new_id_new_entries() -> None:
    a = orjson.dumps(sample_bundle("referral.requested", event_id="e-1", timestamp=STAMP))
    b = orjson.dumps(sample_bundle("referral.requested", event_id="e-1", timestamp=STAMP))
    c = sample_bundle("referral.requested", event_id="e-2", timestamp=STAMP)
    assert a == b
    assert orjson.loads(a)["entry"][1]["fullUrl"] != c["entry"][1]["fullUrl"]


@pytest.mark.parametrize("event", [e for e in EventType if e.family == "referral"], ids=str)
def test_referral_task_follows_the_state_machine(event: EventType) -> None:
    bundle = sample_bundle(event)
    task = one(bundle, "Task")
    assert task["status"] == EVENT_TARGET_STATUS[event].value
    assert task["intent"] == "order" and task["priority"] == "urgent"
    assert task["identifier"][0]["value"] == referral_info().referral_id
    service_request = one(bundle, "ServiceRequest")
    sr_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is service_request)
    assert task["basedOn"] == [{"reference": sr_url}]
    assert ("statusReason" in task) is (
        event in (EventType.REFERRAL_REJECTED, EventType.REFERRAL_CANCELLED)
    )
    assert ("output" in task) is (event is EventType.REFERRAL_COMPLETED)


def test_referral_carries_french_identifiers_and_mailboxes() -> None:
    bundle = sample_bundle("referral.requested")
    patient = one(bundle, "Patient")
    ins = patient["identifier"][0]
    assert ins["system"] == INS_NIR and ins["value"] == "258030319004510"
    assert ins["type"]["coding"][0] == {"system": FR_CORE_ID_TYPE, "code": "INS-NIR"}
    assert patient["name"][0] == {"use": "official", "family": "Lefèvre", "given": ["Hélène"]}
    assert patient["extension"] == [{"url": EXT_SHARING_OPPOSITION, "valueBoolean": False}]
    rpps = sorted(p["identifier"][0]["value"] for p in resources(bundle, "Practitioner"))
    assert rpps == ["810003456125", "810012345673"]
    assert all(p["identifier"][0]["system"] == RPPS for p in resources(bundle, "Practitioner"))
    mailboxes = [r["telecom"][0] for r in resources(bundle, "PractitionerRole")]
    assert {m["value"] for m in mailboxes} == {
        "francois.benard@medecin.mssante.fr",
        "anais.gerard-moreau@cardio-vichy.mssante.fr",
    }
    assert all(m["extension"][0]["url"] == FR_CORE_EMAIL_TYPE for m in mailboxes)
    assert all(m["extension"][0]["valueCoding"]["code"] == "MSSANTE" for m in mailboxes)


def test_letter_is_inline_with_matching_hash_and_size() -> None:
    bundle = sample_bundle("referral.requested")
    doc = one(bundle, "DocumentReference")
    assert doc["status"] == "current"
    assert doc["type"]["coding"][0]["system"] == LOINC
    assert doc["type"]["coding"][0]["code"] == DocType.REFERRAL_LETTER.value
    att = doc["content"][0]["attachment"]
    data = base64.b64decode(att["data"])
    assert 5_000 <= len(data) <= 15_000, "a referral letter is a few KB"
    assert "Hélène LEFÈVRE" in data.decode("utf-8")
    assert att["size"] == len(data)
    assert att["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert doc["masterIdentifier"]["value"].startswith("urn:uuid:")


def test_completed_referral_returns_the_consultation_report() -> None:
    bundle = build_referral_completed(referral_info())
    task = one(bundle, "Task")
    report_url = task["output"][0]["valueReference"]["reference"]
    report = next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == report_url)
    assert report["type"]["coding"][0]["code"] == DocType.CONSULTATION_REPORT.value
    sender = bundle["entry"][0]["resource"]["sender"]["reference"]
    assert sender == task["owner"]["reference"], "the specialist sends the outcome"


def test_builders_refuse_incomplete_inputs() -> None:
    with pytest.raises(ValueError, match="status_reason"):
        build_referral_rejected(replace(referral_info(), status_reason=None))
    with pytest.raises(ValueError, match="report"):
        build_referral_completed(replace(referral_info(), report=None))
    with pytest.raises(ValueError, match="planned_discharge"):
        build_discharge_planned(replace(stay_info(), planned_discharge=None))
    with pytest.raises(ValueError, match="channel"):
        build_delivery_sent(replace(notice_info(EventType.DELIVERY_SENT), channel=None))
    with pytest.raises(ValueError, match="not a bus-emitted"):
        build_notice(EventType.REFERRAL_REQUESTED, notice_info(EventType.SLA_REMINDER))
    with pytest.raises(ValueError, match="decline_reason"):
        build_expertise_declined(replace(expertise_info(), decline_reason=None))
    with pytest.raises(ValueError, match="answer"):
        build_expertise_answered(replace(expertise_info(), answer=None, report=None))
    with pytest.raises(TypeError, match="ReferralInfo"):
        build_event("referral.requested", stay_info())


def test_model_checks_identifiers_at_the_producer() -> None:
    with pytest.raises(ValueError, match="RPPS"):
        PractitionerInfo(rpps="8100034561", family="X", given="Y")
    with pytest.raises(ValueError, match="FINESS"):
        OrganizationInfo(finess="03078")
    with pytest.raises(ValueError, match="INS or a local id"):
        PatientInfo(family="X", given="Y", birth_date=date(1990, 1, 1), gender="male")
    finess = cast(OrganizationInfo, "030780100")  # a bare FINESS is accepted for convenience
    practitioner = PractitionerInfo(rpps="10003456125", family="X", given="Y", organization=finess)
    assert practitioner.organization == OrganizationInfo(finess="030780100")
    assert practitioner.identifier_value == "810003456125"


def test_stay_encounter_shape_per_event() -> None:
    planned = build_discharge_planned(stay_info(), timestamp=STAMP)
    enc = one(planned, "Encounter")
    assert enc["class"]["code"] == "IMP" and enc["status"] == "in-progress"
    assert enc["extension"][0]["url"] == EXT_PLANNED_DISCHARGE
    assert enc["extension"][0]["valueDateTime"] == "2025-03-19T10:30:00+01:00"
    assert [i["value"] for i in enc["identifier"]] == ["VN2025031100042", "MVT-884512"]
    assert enc["location"][0]["location"]["display"] == "Médecine interne — 3e étage"
    hospital = one(planned, "Organization")
    assert hospital["identifier"][0] == {
        "use": "official",
        "type": {"coding": [{"system": FR_CORE_ID_TYPE, "code": "IDNST"}]},
        "system": FINESS,
        "value": "1030780100",
    }
    patient = one(planned, "Patient")
    gp_role = patient["generalPractitioner"][0]["reference"]
    assert gp_role in {e["fullUrl"] for e in planned["entry"]}
    completed = sample_bundle("discharge.completed")
    enc = one(completed, "Encounter")
    assert enc["status"] == "finished" and "end" in enc["period"]
    assert enc["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "home"
    assert "extension" not in enc
    letter = one(completed, "DocumentReference")
    assert letter["type"]["coding"][0]["code"] == DocType.DISCHARGE_LETTER.value
    assert one(sample_bundle("admission.cancelled"), "Encounter")["status"] == "cancelled"


def test_expertise_reply_names_the_request_by_identifier() -> None:
    request = focus_of(sample_bundle("expertise.requested"))
    assert request["payload"][0]["contentString"].startswith("Lésion pigmentée")
    assert "contentReference" in request["payload"][1]
    answer = focus_of(sample_bundle("expertise.answered"))
    declined = focus_of(sample_bundle("expertise.declined"))
    for reply in (answer, declined):
        assert reply["basedOn"][0]["identifier"] == {
            "system": request["identifier"][0]["system"],
            "value": request["identifier"][0]["value"],
        }
    assert answer["status"] == "completed" and declined["status"] == "not-done"
    assert declined["statusReason"]["text"].startswith("Hors de mon champ")


def test_bus_notices_carry_deadline_and_delivery_details() -> None:
    reminder = focus_of(sample_bundle("sla.reminder"))
    assert reminder["about"][0]["type"] == "Task"
    assert any(x["url"] == EXT_DEADLINE for x in reminder["extension"])
    assert resources(sample_bundle("sla.reminder"), "Patient") == [], "notices are data-minimal"
    failed = focus_of(sample_bundle("delivery.failed"))
    ext = {x["url"]: x for x in failed["extension"]}
    assert ext[EXT_CHANNEL]["valueCode"] == "mssante"
    assert ext[EXT_ATTEMPT]["valuePositiveInt"] == 3
    assert ext[EXT_ADDRESS]["valueString"].endswith(".mssante.fr")
    assert focus_of(sample_bundle("discharge.followup-due"))["about"][0]["type"] == "Encounter"


def test_naive_datetimes_are_french_wall_clock_time() -> None:
    assert fhir_datetime(datetime(2025, 7, 1, 8, 0)) == "2025-07-01T08:00:00+02:00"
    assert fhir_datetime(datetime(2025, 1, 6, 8, 0)) == "2025-01-06T08:00:00+01:00"


def test_sharing_opposition_is_explicit_on_the_patient() -> None:
    info = replace(
        referral_info(), patient=replace(referral_info().patient, sharing_opposition=True)
    )
    bundle = build_event("referral.requested", info)
    assert one(bundle, "Patient")["extension"][0]["valueBoolean"] is True
    assert validate_bundle(bundle).patient_ids[0] == (INS_NIR, "258030319004510")
