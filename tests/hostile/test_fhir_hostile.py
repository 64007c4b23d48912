"""Hostile bodies on the FHIR HTTP ingress, over real HTTP, against the real broker.

Each refusal: a 4xx with an OperationOutcome that says what and where, the body kept on
care.rejected-input (read back by a real consumer), and the API still serving the next
good message.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from adapters.fhir_api.app import ApiContext, create_app
from adapters.fhir_api.auth import TokenRegistry
from adapters.ingress import Ingress
from bus.asgi import serve
from bus.deadletter import header_text
from bus.producer import EventProducer
from bus.settings import ApiClient, IngressSettings, Settings
from schemas.codes import EXT_PLANNED_DISCHARGE
from schemas.envelope import Envelope
from schemas.samples import sample_bundle
from schemas.topics import topic_for
from tests.hostile.support import reason, rejected_records

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

TOKEN = "tok-hostile-any-6b1d"
LIMIT = 2_000_000


class Api:
    def __init__(self, http: httpx.AsyncClient, port: int) -> None:
        self.http, self.port = http, port

    def post(self, body: bytes, token: str | None = TOKEN, **headers: str):
        hdrs = {"content-type": "application/fhir+json", **headers}
        if token:
            hdrs["authorization"] = f"Bearer {token}"
        return self.http.post("/fhir/$process-message", content=body, headers=hdrs)


@pytest.fixture
async def api(catalog_applied: str, settings: Settings) -> AsyncIterator[Api]:
    producer = EventProducer(catalog_applied, settings.kafka, timeout_s=5)
    ctx = ApiContext(
        ingress=Ingress(producer, rules=IngressSettings()),  # the clock rule of `carebus up`
        tokens=TokenRegistry([ApiClient(id="any", token=TOKEN)]),
        max_body_bytes=LIMIT,
        base_url="http://127.0.0.1/fhir",
    )
    async with serve(create_app(ctx), "127.0.0.1", 0) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            yield Api(http, port)
    await producer.stop()


def dumps(bundle: dict) -> bytes:
    return orjson.dumps(bundle)


def resource(bundle: dict, kind: str) -> dict:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind)


def _unknown_type(b: dict) -> None:
    b["entry"].append(
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {"resourceType": "Banana", "id": "x"}}
    )


def _planned(value: str) -> Callable[[dict], None]:
    def mutate(b: dict) -> None:
        for ext in resource(b, "Encounter")["extension"]:
            if ext["url"] == EXT_PLANNED_DISCHARGE:
                ext["valueDateTime"] = value

    return mutate


def _set(kind: str, key: str, value: object) -> Callable[[dict], None]:
    return lambda b: resource(b, kind).__setitem__(key, value)


def _header(key: str, value: object) -> Callable[[dict], None]:
    return lambda b: b["entry"][0]["resource"]["eventCoding"].__setitem__(key, value)


def _stamped(days: float) -> Callable[[dict], None]:
    """Bundle.timestamp `days` from now (computed when the case runs)."""
    return lambda b: b.__setitem__(
        "timestamp", (datetime.now(UTC) + timedelta(days=days)).isoformat(timespec="seconds")
    )


def _ins(system: str, value: str) -> Callable[[dict], None]:
    def mutate(b: dict) -> None:
        resource(b, "Patient")["identifier"] = [{"system": system, "value": value}]

    return mutate


# (case, event, mutation, status, words in a diagnostics, words in an expression)
CASES: list[tuple[str, str, Callable[[dict], None], int, str, str]] = [
    ("unknown event code", "referral.requested", _header("code", "referral.exploded"), 422,
     "unknown event type", "eventCoding.code"),
    ("event code is an array", "referral.requested", _header("code", ["referral.requested"]),
     422, "unknown event type", "eventCoding.code"),
    ("bus-only event from a producer", "referral.requested", _header("code", "sla.breached"),
     422, "emitted by the bus", "eventCoding.code"),
    ("foreign event CodeSystem", "referral.requested", _header("system", "http://x.org/ev"),
     422, "eventCoding.system", "eventCoding.system"),
    ("entry of an unknown resource type", "referral.requested", _unknown_type, 422,
     "not a FHIR R4 resource type", "resourceType"),
    ("a Patient where a Bundle is expected", "referral.requested",
     lambda b: b.__setitem__("resourceType", "Patient"), 400, "resourceType", "Bundle"),
    ("a document Bundle", "referral.requested", lambda b: b.__setitem__("type", "document"),
     400, "message", "Bundle.type"),
    ("INS with a wrong control key", "referral.requested",
     _ins("urn:oid:1.2.250.1.213.1.4.8", "258030319004599"), 422, "", "identifier[0].value"),
    ("planned discharge years before the admission", "discharge.planned",
     _planned("2019-01-01T10:00:00+01:00"), 422, "before the admission", "valueDateTime"),
    ("stay ending before it starts", "discharge.completed",
     _set("Encounter", "period", {"start": "2025-03-19T10:00:00+01:00",
                                  "end": "2025-03-11T10:00:00+01:00"}),
     422, "ends before it starts", "period.end"),
    ("message dated a day ahead of the bus clock", "referral.requested", _stamped(1), 422,
     "ahead of the bus clock", "Bundle.timestamp"),
    ("message dated three years ago", "discharge.planned", _stamped(-1100), 422,
     "old (limit 30 days)", "Bundle.timestamp"),
    ("birth date in the future", "referral.requested", _set("Patient", "birthDate", "2099-01-01"),
     422, "in the future", "birthDate"),
    ("Task status not in its value set", "referral.requested", _set("Task", "status", "done"),
     422, "", "status"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "event", "mutate", "status", "words", "where"), CASES, ids=[c[0] for c in CASES]
)
async def test_invalid_message_refused_with_outcome_kept_and_next_served(
    api: Api, catalog_applied: str, case, event, mutate, status, words, where
) -> None:
    bundle = sample_bundle(event)
    mutate(bundle)
    raw = dumps(bundle)
    resp = await api.post(raw)
    assert resp.status_code == status, (case, resp.text)
    assert resp.headers["content-type"].startswith("application/fhir+json")
    out = resp.json()
    assert out["resourceType"] == "OperationOutcome" and out["issue"]
    assert any(words in i["diagnostics"] for i in out["issue"]), (case, out)
    assert any(where in e for i in out["issue"] for e in i.get("expression", [])), (case, out)
    assert "Lefèvre" not in resp.text and "258030319004510" not in resp.text
    nxt = await api.post(dumps(sample_bundle("expertise.requested")))
    assert nxt.status_code == 202, nxt.text
    kept = await rejected_records(catalog_applied, [raw])
    assert raw in kept and reason(kept[raw]), case
    assert header_text(kept[raw].headers, "rejected_sender") == "client:any"


async def test_ten_thousand_levels_of_nesting_is_a_400_not_a_500(api: Api, catalog_applied) -> None:
    bodies = [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    ]
    # and inside an otherwise valid Bundle, below orjson's own limit (1024)
    text = dumps(sample_bundle("referral.requested")).decode()
    deep = '{"url":"http://x","valueString":"y"}'
    for _ in range(600):
        deep = '{"url":"http://x","extension":[' + deep + "]}"
    bodies.append(text.replace('"entry":[', '"extension":[' + deep + '],"entry":[', 1).encode())
    for body in bodies:
        resp = await api.post(body)
        assert resp.status_code == 400, resp.text[:300]
        diag = " ".join(i["diagnostics"] for i in resp.json()["issue"])
        assert "depth" in diag or "deep" in diag, diag
        assert "RecursionError" not in diag
    kept = await rejected_records(catalog_applied, bodies)
    assert len(kept) == len(bodies)
    assert (await api.post(dumps(sample_bundle("expertise.requested")))).status_code == 202


async def test_duplicate_json_property_is_refused_by_name(api: Api, catalog_applied) -> None:
    """Two readers of `{"id": "a", "id": "b"}` disagree: refused, never 'last one wins'."""
    raw = dumps(sample_bundle("referral.requested"))
    other = f'"id":"{uuid.uuid4()}",'.encode()
    body = raw.replace(b'"id":', other + b'"id":', 1)
    resp = await api.post(body)
    assert resp.status_code == 400, resp.text
    assert "'id' appears twice" in resp.json()["issue"][0]["diagnostics"]
    assert body in await rejected_records(catalog_applied, [body])


async def test_huge_array_is_answered_without_stalling_other_senders(api: Api) -> None:
    """A 1.3 MB bundle of 100,000 notes costs seconds of model validation: other
    requests are answered meanwhile (validation of big bodies runs off the event loop)."""
    big = sample_bundle("referral.requested")
    resource(big, "Task")["note"] = [{"text": "x"}] * 100_000
    raw = dumps(big)
    assert 1_000_000 < len(raw) < LIMIT
    done: dict[str, float] = {}

    async def timed(name: str, body: bytes) -> httpx.Response:
        resp = await api.post(body)
        done[name] = time.monotonic()
        return resp

    started = time.monotonic()
    big_task = asyncio.create_task(timed("big", raw))
    await asyncio.sleep(0.3)  # the big one is being validated
    sent_small = time.monotonic()
    small = await timed("small", dumps(sample_bundle("expertise.requested")))
    big_resp = await big_task
    assert small.status_code == 202
    # 202: the broker takes records up to the ingress limit (was a 503 "retry later")
    assert big_resp.status_code == 202, big_resp.text[:300]
    small_wait, big_took = done["small"] - sent_small, done["big"] - started
    # answered before the big one, or (when the big one was quick) without queueing
    # behind it: a small message is never held for the big one's validation
    assert done["small"] < done["big"] or small_wait < max(0.5, big_took / 4), (
        f"a small message waited {small_wait:.2f}s behind the big one ({big_took:.2f}s)"
    )


async def test_body_over_the_limit_gets_413_before_it_is_all_sent(api: Api) -> None:
    """Content-Length announces 100 MB: the answer comes after 1 KB was sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    head = (
        "POST /fhir/$process-message HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/fhir+json\r\n"
        "Content-Length: 100000000\r\n\r\n"
    ).encode()
    writer.write(head + b"{" + b" " * 1023)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.split()[1] == b"413", status_line


async def test_chunked_body_over_the_limit_is_cut_at_the_limit(api: Api) -> None:
    async def chunks():
        for _ in range(LIMIT // 65536 + 20):
            yield b" " * 65536

    resp = await api.http.post(
        "/fhir/$process-message",
        content=chunks(),
        headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/fhir+json"},
    )
    assert resp.status_code == 413
    assert resp.json()["issue"][0]["code"] == "too-long"


async def _events_with_id(bootstrap: str, topic: str, event_id: str) -> list[Envelope]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list[Envelope] = []
    try:
        end = asyncio.get_running_loop().time() + 8
        while asyncio.get_running_loop().time() < end:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    env = Envelope.decode(rec.key, rec.value, rec.headers)
                    if env.id == event_id:
                        found.append(env)
            if not batch and found:
                break
    finally:
        await consumer.stop()
    return found


async def test_same_bundle_id_resent_reserialised_is_one_event(api: Api, catalog_applied) -> None:
    event_id = str(uuid.uuid4())
    bundle = sample_bundle("expertise.requested", event_id=event_id)
    first = await api.post(dumps(bundle))
    # the sender rebuilt the same message later: other key order, spacing and timestamp
    again = copy.deepcopy(bundle)
    again["timestamp"] = "2030-01-01T00:00:00Z"
    body = orjson.dumps(again, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
    second = await api.post(body)
    assert first.status_code == second.status_code == 202
    assert "retransmission" in second.json()["issue"][0]["diagnostics"]
    events = await _events_with_id(catalog_applied, topic_for("expertise.requested"), event_id)
    assert len(events) == 1


async def test_reused_bundle_id_with_other_content_is_refused(api: Api, catalog_applied) -> None:
    """Acknowledging it as a retransmission would drop it silently (every consumer
    deduplicates on the id): 409 with the reason, kept on care.rejected-input."""
    event_id = str(uuid.uuid4())
    first = sample_bundle("expertise.requested", event_id=event_id)
    assert (await api.post(dumps(first))).status_code == 202
    other = sample_bundle("expertise.requested", event_id=event_id)
    resource(other, "Patient")["birthDate"] = "1961-01-01"
    raw = dumps(other)
    resp = await api.post(raw)
    assert resp.status_code == 409, resp.text
    issue = resp.json()["issue"][0]
    assert issue["code"] == "duplicate" and "different content" in issue["diagnostics"]
    assert raw in await rejected_records(catalog_applied, [raw])
    events = await _events_with_id(catalog_applied, topic_for("expertise.requested"), event_id)
    assert len(events) == 1 and events[0].data == dumps(first)


async def test_illegal_task_transitions_are_409(api: Api) -> None:
    requested = sample_bundle("referral.requested")
    cancelled = sample_bundle("referral.cancelled")
    accepted = sample_bundle("referral.accepted")
    assert (await api.post(dumps(requested))).status_code == 202
    assert (await api.post(dumps(cancelled))).status_code == 202
    resp = await api.post(dumps(accepted))
    assert resp.status_code == 409, resp.text
    assert resp.json()["issue"][0]["code"] == "business-rule"
