"""Case ids: every event of one case gets the same Kafka key, bus notices included."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.builders.common import MessageBuilder
from schemas.cases import (
    CaseIdError,
    case_id,
    case_id_of,
    focus_entry,
    format_case_id,
    parse_case_id,
    patient_key,
    patient_keys,
)
from schemas.codes import INS_NIR, EventType
from schemas.samples import notice_info, sample_bundle

REFERRAL_CASE = "referral/https://carebus.fr/fhir/sid/referral|ADR-2025-000123"
STAY_CASE = "stay/https://carebus.fr/fhir/sid/visit/1030780100|VN2025031100042"
EXPERTISE_CASE = "expertise/https://carebus.fr/fhir/sid/expertise|TLX-2025-0042"
# the sample patient's INS (258030319004510, INS-NIR) as a pseudonym: never the INS itself
CONSENT_CASE = "consent/urn:carebus:patient-key|" + patient_key(INS_NIR, "258030319004510")


@pytest.mark.parametrize("event", list(EventType), ids=str)
def test_case_id_of_every_sample(event: EventType) -> None:
    expected = {
        "referral": REFERRAL_CASE,
        "stay": STAY_CASE,
        "expertise": EXPERTISE_CASE,
        "consent": CONSENT_CASE,
    }
    key = case_id(event, sample_bundle(event))
    if event.family == "bus":
        about = notice_info(event).about
        assert key == case_id_of(about)
        assert key in (REFERRAL_CASE, STAY_CASE), "a notice is keyed on the case it is about"
    else:
        assert key == expected[event.family]


def test_all_events_of_a_case_share_one_key_whatever_the_event_id() -> None:
    referral = {case_id(e, sample_bundle(e)) for e in EventType if e.family == "referral"}
    assert referral == {REFERRAL_CASE}
    notices = {
        case_id(e, sample_bundle(e)) for e in (EventType.SLA_REMINDER, EventType.DELIVERY_READ)
    }
    assert notices == {REFERRAL_CASE}


def test_case_id_accepts_the_event_as_plain_string() -> None:
    assert case_id("discharge.planned", sample_bundle("discharge.planned")) == STAY_CASE


def test_expertise_answer_is_keyed_by_based_on_identifier() -> None:
    answered = sample_bundle("expertise.answered")
    index, focus = focus_entry(answered)
    assert focus["resourceType"] == "Communication" and index == 1
    assert case_id("expertise.answered", answered) == EXPERTISE_CASE


def test_missing_focus_is_reported_with_its_location() -> None:
    bundle = sample_bundle("referral.requested")
    del bundle["entry"][0]["resource"]["focus"]
    with pytest.raises(CaseIdError) as info:
        case_id("referral.requested", bundle)
    assert info.value.expression == "Bundle.entry[0].resource.focus"


def test_dangling_focus_is_reported() -> None:
    bundle = sample_bundle("referral.requested")
    bundle["entry"][0]["resource"]["focus"][0]["reference"] = "urn:uuid:nowhere"
    with pytest.raises(CaseIdError, match="does not resolve"):
        case_id("referral.requested", bundle)


def test_missing_identifier_is_reported() -> None:
    bundle = sample_bundle("discharge.completed")
    bundle["entry"][1]["resource"]["identifier"][0].pop("system")
    with pytest.raises(CaseIdError) as info:
        case_id("discharge.completed", bundle)
    assert info.value.expression == "Bundle.entry[1].resource.identifier[0]"


def test_notice_about_an_unknown_kind_of_case() -> None:
    bundle = sample_bundle("sla.breached")
    bundle["entry"][1]["resource"]["about"][0]["type"] = "Patient"
    with pytest.raises(CaseIdError) as info:
        case_id("sla.breached", bundle)
    assert info.value.expression == "Bundle.entry[1].resource.about[0].type"


def test_case_id_never_depends_on_entry_order() -> None:
    bundle = sample_bundle("referral.accepted")
    head, *rest = bundle["entry"]
    bundle["entry"] = [head, *reversed(rest)]
    assert case_id("referral.accepted", bundle) == REFERRAL_CASE


def test_builder_urls_are_stable_per_event_and_key() -> None:
    a, b = MessageBuilder("event-1"), MessageBuilder("event-1")
    assert a.full_url("Task") == b.full_url("Task") != MessageBuilder("event-2").full_url("Task")


def test_parse_rejects_non_case_ids() -> None:
    for bad in ("referral", "referral/system-only", "/x|y", "referral/|value"):
        with pytest.raises(ValueError):
            parse_case_id(bad)


@given(
    family=st.sampled_from(["referral", "stay", "expertise"]),
    system=st.text(min_size=1, max_size=40),
    value=st.text(min_size=1, max_size=20).filter(lambda v: "|" not in v),
)
def test_format_and_parse_round_trip(family: str, system: str, value: str) -> None:
    assert parse_case_id(format_case_id(family, system, value)) == (family, system, value)


def test_consent_case_is_the_patient_pseudonym_not_the_ins() -> None:
    bundle = sample_bundle(EventType.CONSENT_UPDATED)
    key = case_id(EventType.CONSENT_UPDATED, bundle)
    assert "258030319004510" not in key
    # every other event about the same patient yields the same pseudonym
    assert parse_case_id(key)[2] in patient_keys(sample_bundle(EventType.REFERRAL_REQUESTED))
    assert patient_key(INS_NIR, "258030319004510") != patient_key(INS_NIR, "258030319004511")


def test_consent_without_an_ins_patient_has_no_case() -> None:
    bundle = sample_bundle(EventType.CONSENT_UPDATED)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["identifier"] = []
    with pytest.raises(CaseIdError) as err:
        case_id(EventType.CONSENT_UPDATED, bundle)
    assert err.value.expression.endswith(".patient")
