"""IHE MHD ITI-65 Provide Document Bundle, consent gate and transaction-response parsing."""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from adapters.bundle_view import BundleError, BundleView
from adapters.dmp.mhd import (
    EXT_DESIGNATION_TYPE,
    EXT_SOURCE_ID,
    LIST_TYPES,
    PROFILE_BUNDLE,
    FilingOutcome,
    build_provide_bundle,
    conditional_query,
    parse_transaction_response,
    should_file,
)
from schemas.builders import build_referral_requested
from schemas.cases import case_id
from schemas.codes import EXT_SHARING_OPPOSITION, INS_NIR, LOINC, RPPS
from schemas.envelope import Envelope
from schemas.outcome import IssueCode
from schemas.sample_data import PATIENT
from schemas.samples import referral_info, sample_bundle
from schemas.workitem import Channel, Recipient, RecipientKind, WorkItem

NOW = datetime(2025, 3, 17, 10, 0, tzinfo=UTC)
TS = "2025-03-17T09:40:00+01:00"
FILED = ("referral.requested", "referral.completed", "discharge.completed", "expertise.requested")


def bundle(event: str = "discharge.completed", event_id: str = "e-1") -> dict:
    return sample_bundle(event, event_id=event_id, timestamp=TS)


def entries(pb: dict, resource_type: str) -> list[dict]:
    return [e for e in pb["entry"] if e["resource"]["resourceType"] == resource_type]


@pytest.mark.parametrize("event", FILED)
def test_provide_bundle_is_a_valid_r4_transaction(event: str) -> None:
    pb = build_provide_bundle(bundle(event), item_id="item-1", now=NOW)
    Bundle.model_validate(pb)
    assert pb["type"] == "transaction"
    assert pb["meta"]["profile"] == [PROFILE_BUNDLE]
    assert all(e["request"]["method"] == "POST" for e in pb["entry"])
    assert pb["entry"][0]["resource"]["resourceType"] == "List"


def test_document_reference_carries_ins_loinc_author_and_checked_content() -> None:
    src = bundle()
    letter = BundleView(src).documents()[0]
    pb = build_provide_bundle(src, item_id="item-1", now=NOW)
    (dr_entry,) = entries(pb, "DocumentReference")
    (bin_entry,) = entries(pb, "Binary")
    dr = dr_entry["resource"]
    master = f"urn:oid:2.25.{uuid.UUID(letter.unique_id.removeprefix('urn:uuid:')).int}"
    assert dr["masterIdentifier"] == {
        "use": "usual",
        "system": "urn:ietf:rfc:3986",
        "value": master,
    }
    assert dr["identifier"][0]["value"] == dr_entry["fullUrl"]
    assert dr["subject"] == {
        "type": "Patient",
        "identifier": {"system": INS_NIR, "value": "258030319004510"},
    }
    assert dr["context"]["sourcePatientInfo"] == dr["subject"]
    assert dr["type"]["coding"][0]["system"] == LOINC
    assert dr["type"]["coding"][0]["code"] == "11490-0"
    assert dr["category"][0]["coding"][0]["code"] == "11"
    assert {"system": RPPS, "value": "810098765430"} in [a.get("identifier") for a in dr["author"]]
    assert dr["securityLabel"][0]["coding"][0]["code"] == "N"
    att = dr["content"][0]["attachment"]
    data = base64.b64decode(bin_entry["resource"]["data"])
    assert data == letter.content
    assert att["url"] == bin_entry["fullUrl"]
    assert att["size"] == len(data)
    assert att["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert att["language"] == "fr-FR"
    assert dr_entry["request"]["ifNoneExist"] == (
        f"DocumentReference?identifier=urn:ietf:rfc:3986|{master}"
    )


def test_submission_set_list() -> None:
    pb = build_provide_bundle(bundle(), item_id="item-1", now=NOW)
    ss_entry = pb["entry"][0]
    ss = ss_entry["resource"]
    assert ss["code"]["coding"][0] == {"system": LIST_TYPES, "code": "submissionset"}
    assert ss["mode"] == "working" and ss["status"] == "current"
    ext = {e["url"]: e for e in ss["extension"]}
    assert ext[EXT_SOURCE_ID]["valueIdentifier"]["value"].startswith("urn:oid:2.25.")
    assert ext[EXT_DESIGNATION_TYPE]["valueCodeableConcept"]["coding"][0]["code"] == "11490-0"
    ids = {i["use"]: i["value"] for i in ss["identifier"]}
    assert ids["usual"].startswith("urn:oid:") and ids["official"] == ss_entry["fullUrl"]
    assert ss["subject"]["identifier"]["value"] == "258030319004510"
    assert [e["item"]["reference"] for e in ss["entry"]] == [
        e["fullUrl"] for e in entries(pb, "DocumentReference")
    ]
    assert ss_entry["request"]["ifNoneExist"] == conditional_query(
        "List", "urn:ietf:rfc:3986", ids["usual"]
    )


def test_idempotence_keys() -> None:
    first = build_provide_bundle(bundle(), item_id="item-1", now=NOW)
    assert build_provide_bundle(bundle(), item_id="item-1", now=NOW) == first
    later = build_provide_bundle(bundle(event_id="e-2"), item_id="item-2", now=NOW)
    # the same letter re-sent by another event is the same document for the record…
    assert (
        entries(later, "DocumentReference")[0]["request"]["ifNoneExist"]
        == entries(first, "DocumentReference")[0]["request"]["ifNoneExist"]
    )
    # …while each work item is its own submission
    assert (
        later["entry"][0]["request"]["ifNoneExist"] != first["entry"][0]["request"]["ifNoneExist"]
    )


def test_build_from_work_item() -> None:
    src = bundle("referral.requested")
    env = Envelope(
        id="e-1",
        type="referral.requested",
        source="urn:x",
        subject=case_id("referral.requested", src),
        data=orjson.dumps(src),
    )
    item = WorkItem(env, Channel.DMP, Recipient(RecipientKind.RECORD, "258030319004510"))
    pb = build_provide_bundle(item, now=NOW)
    assert pb == build_provide_bundle(src, item_id=item.id, now=NOW)
    assert entries(pb, "DocumentReference")[0]["resource"]["type"]["coding"][0]["code"] == "96349-6"


def test_only_new_documents_are_filed() -> None:
    pb = build_provide_bundle(bundle("referral.completed"), item_id="i", now=NOW)
    codes = [e["resource"]["type"]["coding"][0]["code"] for e in entries(pb, "DocumentReference")]
    assert codes == ["11488-4"]  # the report; the letter was filed by referral.requested


def opposed_bundle() -> dict:
    info = replace(referral_info(), patient=replace(PATIENT, sharing_opposition=True))
    return build_referral_requested(info, event_id="e-9", timestamp=TS)


def test_should_file_respects_opposition_and_needs_ins() -> None:
    assert should_file(bundle()) == (True, "the patient did not oppose sharing")
    ok, why = should_file(opposed_bundle())
    assert not ok and "opposed" in why
    with pytest.raises(BundleError, match="opposed"):
        build_provide_bundle(opposed_bundle(), item_id="i", now=NOW)
    no_ins = bundle()
    silent = bundle()
    for b in (no_ins, silent):
        for e in b["entry"]:
            res = e["resource"]
            if res["resourceType"] == "Patient":
                if b is no_ins:
                    res["identifier"] = [i for i in res["identifier"] if i["system"] != INS_NIR]
                else:
                    res["extension"] = [
                        x for x in res["extension"] if x["url"] != EXT_SHARING_OPPOSITION
                    ]
    assert should_file(no_ins)[0] is False and "INS" in should_file(no_ins)[1]
    assert should_file(silent) == (True, "no opposition recorded for this patient")


@pytest.mark.parametrize("event", ["referral.accepted", "discharge.planned", "sla.reminder"])
def test_events_without_new_documents_are_not_filed(event: str) -> None:
    ok, _ = should_file(bundle(event))
    assert not ok
    with pytest.raises(BundleError):
        build_provide_bundle(bundle(event), item_id="i", now=NOW)


def test_naive_clock_and_missing_item_id_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        build_provide_bundle(bundle(), item_id="i", now=datetime(2025, 3, 17))
    with pytest.raises(ValueError, match="item_id"):
        build_provide_bundle(bundle(), now=NOW)


def response(*statuses: tuple[str, str]) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [{"response": {"status": s, "location": loc}} for s, loc in statuses],
    }


def test_parse_created() -> None:
    r = parse_transaction_response(
        response(
            ("201 Created", "List/1/_history/1"),
            ("201 Created", "http://dmp.example/fhir/DocumentReference/2/_history/1"),
            ("201 Created", "Binary/3"),
        )
    )
    assert r.outcome is FilingOutcome.CREATED and r.ok
    assert r.locations[1].endswith("DocumentReference/2/_history/1")
    assert [e.resource_type for e in r.entries] == ["List", "DocumentReference", "Binary"]


def test_parse_already_exists_200_or_412() -> None:
    r = parse_transaction_response(
        response(("200 OK", "List/1"), ("200 OK", "DocumentReference/2"), ("201", "Binary/9"))
    )
    assert r.outcome is FilingOutcome.ALREADY_EXISTS and r.ok
    oo = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "duplicate", "diagnostics": "2 matches"}],
    }
    assert parse_transaction_response(oo, http_status=412).outcome is FilingOutcome.ALREADY_EXISTS


def test_parse_operation_outcome_errors() -> None:
    oo = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "warning", "code": "informational", "diagnostics": "ignored"},
            {
                "severity": "error",
                "code": "required",
                "diagnostics": "DocumentReference.type is required",
                "expression": ["Bundle.entry[1].resource.type"],
            },
        ],
    }
    r = parse_transaction_response(oo, http_status=400)
    assert r.outcome is FilingOutcome.FAILED and not r.ok and not r.retryable
    (issue,) = r.errors
    assert issue.code is IssueCode.REQUIRED
    assert issue.expression == "Bundle.entry[1].resource.type"
    assert parse_transaction_response(oo, http_status=503).retryable


def test_parse_entry_level_failure() -> None:
    resp = response(("201 Created", "List/1"))
    resp["entry"].append(
        {
            "response": {
                "status": "422 Unprocessable Entity",
                "outcome": {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "value", "diagnostics": "bad INS"}],
                },
            }
        }
    )
    r = parse_transaction_response(resp)
    assert r.outcome is FilingOutcome.FAILED and not r.retryable
    assert [i.diagnostics for i in r.errors] == ["bad INS"]


def test_parse_garbage() -> None:
    assert parse_transaction_response({"resourceType": "Patient"}).outcome is FilingOutcome.FAILED
    assert parse_transaction_response([]).retryable  # type: ignore[arg-type]


def test_same_document_id_in_mssante_xdm_and_mhd() -> None:
    import io
    import xml.etree.ElementTree as ET
    import zipfile

    from adapters.mssante import ebrim
    from adapters.mssante.xdm import METADATA_PATH, build_xdm

    src = bundle()
    pb = build_provide_bundle(src, item_id="item-1", now=NOW)
    master = entries(pb, "DocumentReference")[0]["resource"]["masterIdentifier"]["value"]
    xml = zipfile.ZipFile(io.BytesIO(build_xdm(src, submission_key="x"))).read(METADATA_PATH)
    ids = [
        e.get("value")
        for e in ET.fromstring(xml).iter(f"{{{ebrim.NS_RIM}}}ExternalIdentifier")
        if e.get("identificationScheme") == ebrim.DE_UNIQUE_ID
    ]
    assert ids == [master.removeprefix("urn:oid:")]
