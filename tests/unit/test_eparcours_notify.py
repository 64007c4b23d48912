"""Notification Bundles, signatures, the backport Subscription resource and the SSRF rules."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.subscription import Subscription

from adapters.eparcours.filters import Filter
from adapters.eparcours.guard import EndpointPolicy, EndpointRefused
from adapters.eparcours.notify import (
    STATUS_PROFILE_R4,
    EventNote,
    notification,
    sign,
    status_search,
    verify,
)
from adapters.eparcours.registry import Content, Status, SubscriptionRecord
from adapters.eparcours.resource import (
    EXT_CONTENT,
    EXT_FILTER,
    EXT_HEARTBEAT,
    EXT_SECRET,
    SubscriptionInvalid,
    from_fhir,
    to_fhir,
)
from adapters.eparcours.topics import BY_ID
from schemas.samples import sample_bundle

BASE = "https://bus.example/fhir"
TS = "2025-03-17T08:40:00.000Z"
NOW = datetime(2025, 3, 17, 9, 0, tzinfo=UTC)
POLICY = EndpointPolicy(allowed_hosts=("hook.paaco.fr", "*.predice.fr"))


def record(content: Content = Content.ID_ONLY, **changes) -> SubscriptionRecord:
    base = SubscriptionRecord(
        id="s-1",
        owner="paaco",
        topic=BY_ID["stay"].url,
        endpoint="https://hook.paaco.fr/n",
        secret="k" * 20,
        content=content,
        status=Status.ACTIVE,
        events=3,
    )
    return replace(base, **changes)


def note(number: int = 3, event: str = "discharge.completed") -> EventNote:
    return EventNote(number, TS, sample_bundle(event, event_id=f"e-{number}", timestamp=TS))


def params(bundle: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in bundle["entry"][0]["resource"]["parameter"]:
        out.setdefault(p["name"], []).append(p)
    return out


def parts(param: dict) -> dict[str, dict]:
    return {p["name"]: p for p in param["part"]}


@pytest.mark.parametrize("content", list(Content))
def test_event_notification_shape(content: Content) -> None:
    b = notification(
        record(content),
        kind="event-notification",
        base_url=BASE,
        timestamp=TS,
        events=[note()],
        events_since=3,
    )
    Bundle.model_validate(b)
    assert b["type"] == "history"
    status = b["entry"][0]["resource"]
    assert status["resourceType"] == "Parameters" and status["meta"]["profile"] == [
        STATUS_PROFILE_R4
    ]
    p = params(b)
    assert p["subscription"][0]["valueReference"]["reference"] == f"{BASE}/Subscription/s-1"
    assert p["status"][0]["valueCode"] == "active"
    assert p["type"][0]["valueCode"] == "event-notification"
    assert p["events-since-subscription-start"][0]["valueString"] == "3"
    event = parts(p["notification-event"][0])
    assert event["event-number"]["valueString"] == "3"
    assert event["timestamp"]["valueInstant"] == TS
    if content is Content.EMPTY:
        assert "topic" not in p and "focus" not in event and len(b["entry"]) == 1
        assert b"258030319004510" not in orjson.dumps(b)  # nothing about the patient
        return
    assert p["topic"][0]["valueCanonical"] == BY_ID["stay"].url
    focus = event["focus"]["valueReference"]
    assert focus["type"] == "Encounter" and focus["identifier"]["value"] == "VN2025031100042"
    if content is Content.ID_ONLY:
        assert len(b["entry"]) == 1 and focus["reference"].startswith("Encounter/")
    else:
        urls = [e["fullUrl"] for e in b["entry"][1:]]
        assert focus["reference"] == urls[0]
        assert b["entry"][1]["resource"]["resourceType"] == "Encounter"
        kinds = {e["resource"]["resourceType"] for e in b["entry"][1:]}
        assert {"Patient", "MessageHeader", "DocumentReference"} <= kinds


def test_handshake_and_heartbeat() -> None:
    r = record(status=Status.REQUESTED, events=0)
    hs = notification(r, kind="handshake", base_url=BASE, timestamp=TS)
    Bundle.model_validate(hs)
    p = params(hs)
    assert p["type"][0]["valueCode"] == "handshake" and p["status"][0]["valueCode"] == "requested"
    assert p["events-since-subscription-start"][0]["valueString"] == "0"
    assert "notification-event" not in p
    hb = notification(record(), kind="heartbeat", base_url=BASE, timestamp=TS)
    assert params(hb)["type"][0]["valueCode"] == "heartbeat"


def test_r4b_subscribers_get_a_subscription_status_resource() -> None:
    r = record(payload_type="application/fhir+json; fhirVersion=4.3")
    b = notification(r, kind="event-notification", base_url=BASE, timestamp=TS, events=[note()])
    Bundle.model_validate(b)
    status = b["entry"][0]["resource"]
    assert status["resourceType"] == "SubscriptionStatus"
    assert status["notificationEvent"][0]["eventNumber"] == "3"
    assert status["eventsSinceSubscriptionStart"] == "3" and status["type"] == "event-notification"


def test_event_notification_is_byte_stable_and_signed() -> None:
    def once() -> bytes:
        return orjson.dumps(
            notification(
                record(),
                kind="event-notification",
                base_url=BASE,
                timestamp=TS,
                events=[note()],
                events_since=3,
            )
        )

    body = once()
    assert once() == body  # a retry sends the same bytes, the same signature
    signature = sign(body, "k" * 20)
    assert signature.startswith("sha256=") and len(signature) == 71
    assert verify(body, "k" * 20, signature)
    assert not verify(body + b" ", "k" * 20, signature)
    assert not verify(body, "other-secret-xxxxx", signature)
    assert not verify(body, "k" * 20, None)


def test_status_search_and_error() -> None:
    r = record(status=Status.ERROR, error="HTTP 503 x6")
    found = status_search(r, base_url=BASE)
    Bundle.model_validate(found)
    p = {x["name"]: x for x in found["entry"][0]["resource"]["parameter"]}
    assert p["type"]["valueCode"] == "query-status" and p["status"]["valueCode"] == "error"
    assert p["error"]["valueCodeableConcept"]["coding"][0]["code"] == "no-response"


def test_query_event_bundles_dedupe_shared_resources() -> None:
    notes = [note(1, "discharge.planned"), note(2, "discharge.completed")]
    b = notification(
        record(Content.FULL_RESOURCE), kind="query-event", base_url=BASE, timestamp=TS, events=notes
    )
    Bundle.model_validate(b)
    urls = [e["fullUrl"] for e in b["entry"]]
    assert len(urls) == len(set(urls))
    numbers = [parts(p)["event-number"]["valueString"] for p in params(b)["notification-event"]]
    assert numbers == ["1", "2"]


# --- the Subscription resource ------------------------------------------------------
def subscription(**channel) -> dict:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Parcours de sortie, Allier",
        "criteria": BY_ID["stay"].url,
        "_criteria": {"extension": [{"url": EXT_FILTER, "valueString": "territory=03"}]},
        "channel": {
            "type": "rest-hook",
            "endpoint": "https://hook.paaco.fr/n",
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": EXT_CONTENT, "valueCode": "full-resource"}]},
            "header": ["Authorization: Bearer platform-token"],
            "extension": [{"url": EXT_HEARTBEAT, "valueUnsignedInt": 120}],
            **channel,
        },
    }


def test_subscription_round_trip() -> None:
    rec, generated = from_fhir(subscription(), owner="paaco", new_id="s-9", now=NOW, policy=POLICY)
    assert generated and len(rec.secret) >= 32
    assert rec.status is Status.REQUESTED and rec.content is Content.FULL_RESOURCE
    assert rec.filters == (Filter("territory", ("03",)),) and rec.heartbeat_s == 120
    shown = to_fhir(rec)
    Subscription.model_validate(shown)
    assert shown["channel"]["header"] == ["Authorization: ***"]
    assert EXT_SECRET not in orjson.dumps(shown).decode()
    revealed = to_fhir(rec, reveal_secret=True)
    assert rec.secret in orjson.dumps(revealed).decode()
    given = subscription(extension=[{"url": EXT_SECRET, "valueString": "s" * 24}])
    rec2, generated2 = from_fhir(given, owner="p", new_id="s", now=NOW, policy=POLICY)
    assert rec2.secret == "s" * 24 and not generated2


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"endpoint": "https://evil.example/x"}, "Subscription.channel.endpoint"),
        ({"endpoint": "http://hook.paaco.fr/n"}, "Subscription.channel.endpoint"),
        ({"endpoint": "https://user:pw@hook.paaco.fr/n"}, "Subscription.channel.endpoint"),
        ({"type": "websocket"}, "Subscription.channel.type"),
        ({"header": ["Host: other"]}, "Subscription.channel.header[0]"),
        ({"header": ["no colon"]}, "Subscription.channel.header[0]"),
        (
            {"extension": [{"url": EXT_HEARTBEAT, "valueUnsignedInt": 5}]},
            "Subscription.channel.extension",
        ),
        ({"payload": "application/xml"}, "Subscription.channel.payload"),
    ],
)
def test_subscription_refusals_are_located(change: dict, where: str) -> None:
    with pytest.raises(SubscriptionInvalid) as refused:
        from_fhir(subscription(**change), owner="p", new_id="s", now=NOW, policy=POLICY)
    assert refused.value.status == 422
    assert where in [i.expression for i in refused.value.issues]


def test_unknown_topic_and_structure_errors() -> None:
    bad_topic = {**subscription(), "criteria": "https://x/SubscriptionTopic/nope"}
    with pytest.raises(SubscriptionInvalid) as refused:
        from_fhir(bad_topic, owner="p", new_id="s", now=NOW, policy=POLICY)
    assert refused.value.issues[0].expression == "Subscription.criteria"
    no_reason = {k: v for k, v in subscription().items() if k != "reason"}
    with pytest.raises(SubscriptionInvalid) as refused:
        from_fhir(no_reason, owner="p", new_id="s", now=NOW, policy=POLICY)
    assert (
        refused.value.status == 400 and refused.value.issues[0].expression == "Subscription.reason"
    )


# --- SSRF rules ---------------------------------------------------------------------
def test_host_allow_list() -> None:
    assert POLICY.host_allowed("hook.paaco.fr") and POLICY.host_allowed("a.b.predice.fr")
    assert not POLICY.host_allowed("predice.fr") and not POLICY.host_allowed("paaco.fr")
    assert POLICY.check_url("https://hook.paaco.fr:8443/n") == ("https", "hook.paaco.fr", 8443)


@pytest.mark.parametrize(
    "ip",
    [
        "169.254.169.254",
        "fe80::1",
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "::1",
        "0.0.0.0",
        "100.64.0.1",
        "::ffff:169.254.169.254",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(ip: str) -> None:
    with pytest.raises(EndpointRefused):
        POLICY.check_ip(ip)


def test_allowed_networks_never_open_link_local() -> None:
    dev = EndpointPolicy(
        allowed_hosts=("127.0.0.1",),
        allow_http=True,
        allowed_networks=(ipaddress.ip_network("0.0.0.0/0"),),
    )
    dev.check_ip("127.0.0.1")
    dev.check_ip("10.0.0.1")
    with pytest.raises(EndpointRefused):
        dev.check_ip("169.254.169.254")
    POLICY.check_ip("93.184.216.34")  # public: fine
    with pytest.raises(EndpointRefused):
        EndpointPolicy(allowed_hosts=("169.254.169.254",), allow_http=True).check_url(
            "http://169.254.169.254/latest/meta-data"
        )
