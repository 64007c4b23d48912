"""consent.updated: its validation rule, the registry routing consults, and the link
between an event's patient and the recorded decision. Pure, no broker."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import orjson
import pytest

from processors.consent import ConsentRegistry, decision_of
from processors.context import with_consent
from processors.facts import read_event
from processors.routing.rules import OPPOSITION_BASIS
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.outcome import ValidationFailed
from schemas.sample_data import T0
from schemas.samples import consent_info, sample_bundle
from schemas.validate import validate_message

CONSENT = EventType.CONSENT_UPDATED


def env_of(bundle: dict) -> Envelope:
    msg = validate_message(orjson.dumps(bundle), structural=False)
    return Envelope(
        id=msg.event_id,
        type=msg.event_type.value,
        source="urn:t",
        subject=msg.case_id,
        data=msg.raw,
    )


def _build(**changes: object) -> dict:
    from schemas.builders.consent import build_consent_updated

    return build_consent_updated(dataclasses.replace(consent_info(), **changes))


def consent_resource(bundle: dict) -> dict:
    return bundle["entry"][1]["resource"]


def issues(bundle: dict) -> list[tuple[str, str]]:
    with pytest.raises(ValidationFailed) as err:
        validate_message(orjson.dumps(bundle), structural=False)
    return [(i.expression, i.diagnostics) for i in err.value.issues]


def test_sample_consent_is_valid_including_full_fhir_structure() -> None:
    msg = validate_message(orjson.dumps(sample_bundle(CONSENT)))
    assert msg.event_type is CONSENT and msg.case_id.startswith("consent/")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("status", "bogus", "Consent.status must be active or inactive"),
        ("status", None, "Consent.status is required"),
        ("provision", {"type": "maybe"}, "provision.type must be deny or permit"),
        ("provision", {}, "provision.type is required"),
        ("dateTime", None, "dateTime is required"),
    ],
)
def test_bindings_fhir_resources_does_not_check_are_refused(
    field: str, value: object, expected: str
) -> None:
    bundle = sample_bundle(CONSENT)
    res = consent_resource(bundle)
    assert res["resourceType"] == "Consent"
    if value is None:
        del res[field]
    else:
        res[field] = value
    found = issues(bundle)
    assert any(expected in text for _, text in found), found


def test_a_consent_about_a_patient_without_ins_is_refused() -> None:
    bundle = sample_bundle(CONSENT)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["identifier"] = [
                i for i in entry["resource"]["identifier"] if "1.2.250.1.213.1.4" not in i["system"]
            ]
    assert any("needs an INS" in text for _, text in issues(bundle))


def test_decision_of_reads_opposition_and_lift() -> None:
    key, opposed = decision_of(env_of(sample_bundle(CONSENT)))
    assert opposed.opposed and opposed.decided_at == T0 - timedelta(days=1)
    key2, lifted = decision_of(env_of(_build(opposes_sharing=False, recorded_at=T0)))
    assert key == key2 and not lifted.opposed


def test_the_latest_decision_by_date_wins_not_the_latest_record() -> None:
    reg = ConsentRegistry()
    _, older_opposition = decision_of(env_of(_build(recorded_at=T0 - timedelta(days=3))))
    key, newer_lift = decision_of(env_of(_build(opposes_sharing=False, recorded_at=T0)))
    assert reg.apply(key, newer_lift)
    assert not reg.apply(key, older_opposition)  # keyed in late: does not undo the lift
    assert reg.opposition([key]) is None
    _, newest = decision_of(env_of(_build(recorded_at=T0 + timedelta(hours=1))))
    assert reg.apply(key, newest) and reg.opposition([key]) == newest
    reg.forget(key)
    assert reg.opposition([key]) is None and len(reg) == 0


def test_with_consent_applies_a_standing_opposition_and_names_its_basis() -> None:
    reg = ConsentRegistry()
    opposition = env_of(sample_bundle(CONSENT))
    key, decision = decision_of(opposition)
    reg.apply(key, decision)
    read = read_event(env_of(sample_bundle(EventType.DISCHARGE_COMPLETED)))
    assert not read.parties.opposition  # the event itself carries none
    parties = with_consent(read, reg)
    assert parties.opposition
    assert parties.extra[OPPOSITION_BASIS] == f"consent.updated {opposition.id}"
    assert with_consent(read, ConsentRegistry()) is read.parties
    assert with_consent(read, None) is read.parties
