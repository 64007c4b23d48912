"""The embedded record's ITI-65 rules and filing, on an in-memory SQLite database."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from adapters.dmp.mhd import build_provide_bundle
from adapters.dmp.store import _date_bound
from adapters.dmp.store_db import DocumentDB
from adapters.dmp.store_tx import (
    TxRefused,
    check_mhd,
    check_structure,
    file_bundle,
    parse_conditional,
)
from schemas.codes import INS_NIR
from schemas.samples import sample_bundle

NOW = datetime(2025, 3, 17, 10, 0, tzinfo=UTC)
INS = "258030319004510"


def provide(
    event: str = "discharge.completed", item: str = "item-1", event_id: str = "e-1"
) -> dict:
    src = sample_bundle(event, event_id=event_id, timestamp="2025-03-17T09:40:00+01:00")
    return build_provide_bundle(src, item_id=item, now=NOW)


@pytest.fixture
def db():
    database = DocumentDB(":memory:")
    yield database
    database.close()


def file(db: DocumentDB, bundle: dict) -> dict:
    check_structure(bundle)
    assert check_mhd(bundle) == []
    return db.transact(lambda tx: file_bundle(bundle, tx, NOW))


def statuses(answer: dict) -> list[str]:
    return [e["response"]["status"] for e in answer["entry"]]


def test_a_provide_bundle_is_filed_with_created_entries(db: DocumentDB) -> None:
    answer = file(db, provide())
    assert answer["type"] == "transaction-response"
    assert statuses(answer) == ["201 Created"] * 3
    locations = [e["response"]["location"] for e in answer["entry"]]
    assert [loc.split("/")[0] for loc in locations] == ["List", "DocumentReference", "Binary"]
    doc_id = locations[1].split("/")[1]
    stored = db.resource("DocumentReference", doc_id)
    assert stored["content"][0]["attachment"]["url"] == "/".join(locations[2].split("/")[:2])
    listed = db.resource("List", locations[0].split("/")[1])
    assert listed["entry"][0]["item"]["reference"] == f"DocumentReference/{doc_id}"
    # the entryUUID identifier is kept as sent (identifier values are never rewritten)
    assert stored["identifier"][0]["value"].startswith("urn:uuid:")


def test_redelivery_matches_and_stores_nothing_new(db: DocumentDB) -> None:
    first = file(db, provide())
    again = file(db, provide())
    assert statuses(again) == ["200 OK"] * 3
    assert [e["response"]["location"] for e in again["entry"]] == [
        e["response"]["location"] for e in first["entry"]
    ]
    assert (db.count("DocumentReference"), db.count("Binary"), db.count("List")) == (1, 1, 1)


def test_same_letter_in_another_submission_is_not_filed_twice(db: DocumentDB) -> None:
    file(db, provide())
    later = file(db, provide(item="item-2", event_id="e-2"))
    assert statuses(later) == ["201 Created", "200 OK", "200 OK"]
    assert (db.count("DocumentReference"), db.count("Binary"), db.count("List")) == (1, 1, 2)


def test_repeated_master_identifier_without_condition_is_a_duplicate(db: DocumentDB) -> None:
    file(db, provide())
    bundle = provide(item="item-3", event_id="e-3")
    del bundle["entry"][1]["request"]["ifNoneExist"]
    with pytest.raises(TxRefused) as refused:
        db.transact(lambda tx: file_bundle(bundle, tx, NOW))
    assert refused.value.status == 409
    assert refused.value.issues[0].code == "duplicate"
    assert db.count("List") == 1  # rolled back as a whole


def _break(mutate) -> dict:
    bundle = copy.deepcopy(provide())
    mutate(bundle)
    return bundle


BROKEN = {
    "not a transaction": (lambda b: b.update(type="batch"), "Bundle.type"),
    "PUT": (
        lambda b: b["entry"][1]["request"].update(method="PUT"),
        "Bundle.entry[1].request.method",
    ),
    "no master": (
        lambda b: b["entry"][1]["resource"].pop("masterIdentifier"),
        "Bundle.entry[1].resource.masterIdentifier",
    ),
    "no patient identifier": (
        lambda b: b["entry"][1]["resource"].update(subject={"reference": "Patient/1"}),
        "Bundle.entry[1].resource.subject.identifier",
    ),
    "dangling attachment": (
        lambda b: b["entry"][1]["resource"]["content"][0]["attachment"].update(url="urn:uuid:x"),
        "Bundle.entry[1].resource.content[0].attachment.url",
    ),
    "wrong hash": (
        lambda b: b["entry"][1]["resource"]["content"][0]["attachment"].update(hash="AAAA"),
        "Bundle.entry[1].resource.content[0].attachment.hash",
    ),
    "wrong size": (
        lambda b: b["entry"][1]["resource"]["content"][0]["attachment"].update(size=1),
        "Bundle.entry[1].resource.content[0].attachment.size",
    ),
    "bad condition": (
        lambda b: b["entry"][1]["request"].update(ifNoneExist="DocumentReference?x=1"),
        "Bundle.entry[1].request.ifNoneExist",
    ),
    "no submission set": (lambda b: b["entry"].pop(0), "Bundle.entry"),
    "dangling list item": (
        lambda b: b["entry"][0]["resource"]["entry"][0]["item"].update(reference="urn:uuid:y"),
        "Bundle.entry[0].resource.entry[0].item.reference",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_mhd_violations_are_located(case: str) -> None:
    mutate, where = BROKEN[case]
    issues = check_mhd(_break(mutate))
    assert where in [i.expression for i in issues], issues


def test_structure_errors_are_400_with_fhirpath() -> None:
    bundle = _break(lambda b: b["entry"][2]["resource"].pop("contentType"))
    with pytest.raises(TxRefused) as refused:
        check_structure(bundle)
    assert refused.value.status == 400
    assert refused.value.issues[0].expression == "Bundle.entry[2].resource.contentType"
    with pytest.raises(TxRefused):
        check_structure({"resourceType": "Patient"})


def test_conditional_query_parsing() -> None:
    assert parse_conditional("DocumentReference?identifier=urn:ietf:rfc:3986|urn:oid:1.2") == (
        "DocumentReference",
        "urn:ietf:rfc:3986",
        "urn:oid:1.2",
    )
    assert parse_conditional("List?identifier=a%7Cb") == ("List", "a", "b")
    assert parse_conditional("List?identifier=novalue") is None
    assert parse_conditional("List?_id=1") is None


def test_search_filters(db: DocumentDB) -> None:
    file(db, provide())
    file(db, provide("referral.requested", item="item-9", event_id="e-9"))
    assert len(db.search(patient_value=INS)) == 2
    assert len(db.search(patient_value=INS, patient_system=INS_NIR)) == 2
    assert db.search(patient_value=INS, patient_system="urn:other") == []
    letters = db.search(patient_value=INS, types=[("http://loinc.org", "11490-0")])
    assert [idx.type_code for idx, _ in letters] == ["11490-0"]
    assert len(db.search(patient_value=INS, dates=[_date_bound("ge2020-01-01")])) == 2
    assert db.search(patient_value=INS, dates=[_date_bound("lt2020")]) == []
    assert db.search(patient_value="1" * 15) == []


def test_date_bounds_follow_precision() -> None:
    day = _date_bound("ge2025-03-17")
    assert (day.op, day.start, day.end) == ("ge", "2025-03-16T23:00:00", "2025-03-17T23:00:00")
    month = _date_bound("2025-02")
    assert (month.op, month.end) == ("eq", "2025-02-28T23:00:00")
    assert _date_bound("lt2025").end == "2025-12-31T23:00:00"
