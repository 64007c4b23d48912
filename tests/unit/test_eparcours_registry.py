"""Subscription records: status machine, event numbering, serialisation, filters, topics."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.subscriptiontopic import SubscriptionTopic
from hypothesis import given
from hypothesis import strategies as st

from adapters.eparcours.filters import EventFacts, Filter, FilterError, matches, parse_filter
from adapters.eparcours.guard import EndpointPolicy
from adapters.eparcours.registry import (
    PENDING_CAP,
    Content,
    IllegalTransition,
    Status,
    SubscriptionRecord,
    assign,
    from_json,
    mark_delivered,
    to_json,
    transition,
)
from adapters.eparcours.sender import RestHookSender
from adapters.eparcours.service import SubscriptionService
from adapters.eparcours.store import SubscriptionStore
from adapters.eparcours.topics import (
    BY_ID,
    TOPICS,
    capability_extensions,
    subscription_topic,
    topic_list,
    topic_of,
    topics_bundle,
)
from bus.settings import EparcoursSettings
from schemas.codes import EXT_SHARING_OPPOSITION, EventType
from schemas.samples import sample_bundle

NOW = "2025-03-17T09:00:00Z"
STAY = BY_ID["stay"]


def record(**changes) -> SubscriptionRecord:
    base = SubscriptionRecord(
        id="s-1", owner="paaco", topic=STAY.url, endpoint="https://hook.example/x", secret="k" * 20
    )
    return replace(base, **changes)


def test_status_machine() -> None:
    r = record()
    active = transition(r, Status.ACTIVE, now=NOW)
    assert active.status is Status.ACTIVE and active.revision == 1
    err = transition(active, Status.ERROR, now=NOW, error="HTTP 503")
    assert err.error == "HTTP 503"
    assert transition(err, Status.ACTIVE, now=NOW).error == ""
    off = transition(err, Status.OFF, now=NOW)
    with pytest.raises(IllegalTransition):
        transition(off, Status.ACTIVE, now=NOW)
    with pytest.raises(IllegalTransition):
        transition(active, Status.REQUESTED, now=NOW)
    assert transition(err, Status.ERROR, now=NOW).error == "HTTP 503"  # same state: kept


def test_a_work_item_keeps_its_number() -> None:
    r, n1, new1 = assign(record(), "item-a", now=NOW)
    r, n2, new2 = assign(r, "item-b", now=NOW)
    r2, again, new3 = assign(r, "item-a", now=NOW)
    assert (n1, n2, again) == (1, 2, 1)
    assert (new1, new2, new3) == (True, True, False)
    assert r2 is r and r.events == 2


@given(st.lists(st.sampled_from([f"item-{i}" for i in range(12)]), max_size=60))
def test_numbering_is_sequential_and_stable(items: list[str]) -> None:
    r = record()
    seen: dict[str, int] = {}
    for item in items:
        r, number, fresh = assign(r, item, now=NOW, keep=64)
        assert fresh == (item not in seen)
        assert seen.setdefault(item, number) == number
        if len(seen) % 3 == 0:
            r = mark_delivered(r, item, keep=64)
    assert sorted(seen.values()) == list(range(1, len(seen) + 1))
    assert r.events == len(seen)


def test_delivered_mappings_age_out_pending_ones_stay() -> None:
    r = record()
    for i in range(10):
        r, _, _ = assign(r, f"i{i}", now=NOW, keep=3)
        if i != 0:
            r = mark_delivered(r, f"i{i}", keep=3)
    assert set(r.numbers) == {"i0", "i7", "i8", "i9"}  # i0 never delivered: kept
    assert r.numbers["i0"].number == 1 and not r.numbers["i0"].delivered
    assert PENDING_CAP >= 1000


def test_record_json_round_trip() -> None:
    r = record(
        filters=(Filter("territory", ("03", "63")),),
        headers=("A: b",),
        content=Content.FULL_RESOURCE,
        status=Status.ACTIVE,
    )
    r, _, _ = assign(r, "x", now=NOW)
    back = from_json(to_json(r))
    assert to_json(back) == to_json(r)
    assert back.filters == r.filters and back.numbers == r.numbers and back.status is Status.ACTIVE


# --- filters ------------------------------------------------------------------------
def facts(event: str = "discharge.planned") -> EventFacts:
    return EventFacts.from_bundle(sample_bundle(event, event_id="e"))


def test_facts_of_an_event() -> None:
    f = facts()
    assert f.event_type == "discharge.planned"
    assert ("urn:oid:1.2.250.1.213.1.4.8", "258030319004510") in f.patient_ids
    assert f.postcodes == {"03000"} and f.finess == {"030780100"}


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ("territory=03", True),
        ("territory=63,03", True),
        ("territory=63", False),
        ("Encounter?event-type=discharge.planned", True),
        ("event-type=discharge.completed", False),
        ("patient=urn:oid:1.2.250.1.213.1.4.8|258030319004510", True),
        ("patient.identifier=258030319004510", True),
        ("patient=urn:oid:1.2.250.1.213.1.4.8|1", False),
        ("finess=1030780100", True),
        ("finess=030780100", True),
        ("finess=999999999", False),
    ],
)
def test_filters(criteria: str, expected: bool) -> None:
    assert matches((parse_filter(criteria, STAY),), facts()) is expected


def test_filters_are_anded() -> None:
    both = (
        parse_filter("territory=03", STAY),
        parse_filter("event-type=discharge.completed", STAY),
    )
    assert not matches(both, facts())
    assert matches(both, facts("discharge.completed"))


@pytest.mark.parametrize(
    "criteria",
    [
        "colour=blue",
        "territory=",
        "territory=Paris",
        "event-type=referral.requested",
        "finess=12",
        "noequals",
    ],
)
def test_bad_filters_are_refused(criteria: str) -> None:
    with pytest.raises(FilterError):
        parse_filter(criteria, STAY)


# --- topics -------------------------------------------------------------------------
def test_topics_are_valid_r4b_subscription_topics() -> None:
    for topic in TOPICS:
        SubscriptionTopic.model_validate(subscription_topic(topic))
    Bundle.model_validate(topics_bundle("http://x/fhir"))
    Parameters.model_validate(topic_list())
    assert [p["valueCanonical"] for p in topic_list()["parameter"]] == [t.url for t in TOPICS]
    assert len(capability_extensions()) == 3


def test_every_care_event_has_one_topic() -> None:
    assert topic_of("referral.accepted") is BY_ID["referral"]
    assert topic_of(EventType.DISCHARGE_FOLLOWUP_DUE) is STAY
    assert topic_of("expertise.declined") is BY_ID["expertise"]
    assert topic_of("delivery.sent") is None and topic_of("nonsense") is None
    # a patient's sharing decision is not itself shared with platforms: it is applied
    inbound = [e for e in EventType if e.inbound and e.family != "consent"]
    assert all(topic_of(e) is not None for e in inbound)
    assert topic_of(EventType.CONSENT_UPDATED) is None


# --- matching, for routing ------------------------------------------------------------
@dataclass
class Parties:  # the fields of processors.routing.parties.CaseParties that matching reads
    patient_postcode: str = ""
    hospital_finess: str = ""


async def test_matching_for_routing_and_work_item_recipients() -> None:
    store = SubscriptionStore(None)
    sender = RestHookSender(EndpointPolicy())
    service = SubscriptionService(store, sender, settings=EparcoursSettings(), base_url="x")
    allier = record(
        id="allier", status=Status.ACTIVE, filters=(parse_filter("territory=03", STAY),)
    )
    chu = record(id="chu", status=Status.ERROR, filters=(parse_filter("finess=030780100", STAY),))
    patient = record(
        id="pat",
        status=Status.ACTIVE,
        filters=(parse_filter("patient=urn:oid:1.2.250.1.213.1.4.8|258030319004510", STAY),),
    )
    waiting = record(id="waiting", status=Status.REQUESTED)
    for r in (allier, chu, patient, waiting):
        await store.save(r)
    found = service.matching(EventType.DISCHARGE_PLANNED, Parties("03000", ""), ["258030319004510"])
    assert sorted(sid for sid, _ in found) == ["allier", "pat"]
    found = service.matching("admission.notified", Parties("75001", "030780100"), [])
    assert [sid for sid, _ in found] == ["chu"]
    assert service.matching("referral.requested", Parties("03000", "030780100"), []) == []
    bundle = sample_bundle("discharge.planned", event_id="e")
    recipients = service.subscribers_for(bundle)
    assert sorted(r.id for r in recipients) == ["allier", "chu", "pat"]
    assert all(r.address == "https://hook.example/x" for r in recipients)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["extension"] = [{"url": EXT_SHARING_OPPOSITION, "valueBoolean": True}]
    assert service.subscribers_for(bundle) == []
    assert (await service.notify("allier", "i-1", bundle)).status == "skipped"
    assert store.get("allier").events == 0  # not numbered: nothing was due
    await sender.aclose()
