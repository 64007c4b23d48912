"""Pure regression tests for the bugs the hostile-input work found (no sockets)."""

from __future__ import annotations

import copy
from datetime import date, timedelta

import orjson
import pytest

from adapters.hl7.message import ParserSettings, parse_message
from adapters.ingress import Ingress, _content_digest
from schemas.codes import EXT_PLANNED_DISCHARGE
from schemas.outcome import IssueCode, ValidationFailed
from schemas.samples import sample_bundle
from schemas.topics import CATALOG, MAX_MESSAGE_BYTES
from schemas.validate import DEFAULT_MAX_BYTES, validate_bundle, validate_message
from tests.hostile.support import hl7


def _issues(raw: bytes) -> list:
    with pytest.raises(ValidationFailed) as exc:
        validate_message(raw)
    return list(exc.value.issues)


def _encounter(bundle: dict) -> dict:
    return next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter"
    )


# -- duplicate JSON property names (orjson keeps the last one silently)


def test_duplicate_property_in_the_bundle_is_refused() -> None:
    raw = orjson.dumps(sample_bundle("referral.requested"))
    twice = raw.replace(b'"id":', b'"id":"other",' + b'"id":', 1)
    (issue,) = _issues(twice)
    assert issue.code is IssueCode.STRUCTURE and "'id' appears twice" in issue.diagnostics


def test_duplicate_property_deep_inside_a_resource_is_refused() -> None:
    raw = orjson.dumps(sample_bundle("referral.requested"))
    twice = raw.replace(b'"value":', b'"value":"810099999999","value":', 1)
    assert any("'value' appears twice" in i.diagnostics for i in _issues(twice))


def test_same_name_in_different_objects_is_fine() -> None:
    assert validate_message(orjson.dumps(sample_bundle("referral.requested"))).event_id


# -- contradictory stay dates


def test_planned_discharge_years_before_the_admission_is_refused() -> None:
    bundle = sample_bundle("discharge.planned")
    for ext in _encounter(bundle)["extension"]:
        if ext["url"] == EXT_PLANNED_DISCHARGE:
            ext["valueDateTime"] = "2019-01-01"
    with pytest.raises(ValidationFailed) as exc:
        validate_bundle(bundle)
    (issue,) = exc.value.issues
    assert issue.code is IssueCode.VALUE and "before the admission" in issue.diagnostics
    assert issue.expression.endswith("extension[0].valueDateTime")


def _with_birth(value: str) -> dict:
    bundle = sample_bundle("referral.requested")
    patient = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    patient["birthDate"] = value
    return bundle


def test_birth_date_after_tomorrow_is_refused_a_newborn_or_a_year_alone_is_fine() -> None:
    later = (date.today() + timedelta(days=2)).isoformat()
    issues = _issues(orjson.dumps(_with_birth(later)))
    assert any(i.expression.endswith("birthDate") and "future" in i.diagnostics for i in issues)
    for fine in (date.today().isoformat(), "1950", "1950-03"):
        validate_bundle(_with_birth(fine))  # does not raise


def test_planned_discharge_on_the_admission_day_is_fine() -> None:
    bundle = sample_bundle("discharge.planned")
    enc = _encounter(bundle)
    day = enc["period"]["start"][:10]
    for ext in enc["extension"]:
        if ext["url"] == EXT_PLANNED_DISCHARGE:
            ext["valueDateTime"] = day  # date precision: same day is not "before"
    assert validate_bundle(bundle).planned_discharge == day


def test_stay_ending_before_it_starts_is_refused() -> None:
    bundle = sample_bundle("discharge.completed")
    enc = _encounter(bundle)
    enc["period"] = {"start": "2025-03-19T10:00:00+01:00", "end": "2025-03-19T09:59:00+01:00"}
    with pytest.raises(ValidationFailed) as exc:
        validate_bundle(bundle)
    assert [i.code for i in exc.value.issues] == [IssueCode.INVARIANT]


# -- UTF-8 read as ISO 8859-1 (the listener's parser settings)


def test_utf8_bytes_under_8859_1_are_refused_by_the_listener_settings() -> None:
    raw = hl7("adt_a01_utf8.hl7").replace(b"UNICODE UTF-8", b"8859/1")
    strict = ParserSettings(refuse_utf8_as_8859=True)
    with pytest.raises(ValidationFailed) as exc:
        parse_message(raw, strict)
    assert exc.value.issues[0].expression == "MSH-18"
    # real ISO 8859-1 passes, and so does the same text declared UTF-8
    assert parse_message(hl7("adt_a01_8859-1.hl7"), strict).value("PID", 5, 1) == "LEFÈVRE"
    assert parse_message(hl7("adt_a01_utf8.hl7"), strict).value("PID", 5, 1) == "LEFÈVRE"


# -- a reused event id with other content


def test_reused_event_id_with_other_content_is_detected() -> None:
    ingress = Ingress(producer=None)  # type: ignore[arg-type]  # check_reuse never writes
    bundle = sample_bundle("expertise.requested")
    first = validate_bundle(bundle)
    ingress._digests[first.event_id] = _content_digest(first)  # as accept() records it
    resent = copy.deepcopy(bundle)
    resent["timestamp"] = "2031-01-01T00:00:00Z"  # re-stamped retransmission: same event
    assert ingress.check_reuse(validate_bundle(resent)) is None
    changed = copy.deepcopy(bundle)
    patient = next(
        e["resource"] for e in changed["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    patient["birthDate"] = "1961-01-01"
    issue = ingress.check_reuse(validate_bundle(changed))
    assert issue is not None and issue.code is IssueCode.DUPLICATE


# -- the broker's record limit covers what the ingresses accept


def test_every_topic_takes_records_as_large_as_the_ingress_accepts() -> None:
    assert MAX_MESSAGE_BYTES > DEFAULT_MAX_BYTES + 64 * 1024  # + headers, + rejected copy
    for spec in CATALOG:
        assert spec.config()["max.message.bytes"] == str(MAX_MESSAGE_BYTES), spec.name
