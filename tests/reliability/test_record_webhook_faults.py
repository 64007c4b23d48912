"""Fault (d): the document store answers 500s then hangs, then recovers; the e-parcours
webhook is slow (beyond the client timeout), failing (500), then back.

Record: a real HTTP proxy in front of the real embedded store (`embedded_store`), which
the test switches between fail-500, hang (before forwarding: nothing filed), hang-after
(forwarded and filed, the answer never comes: the bus must resend and the conditional
create must match) and pass-through. Expected: each document filed exactly once (ITI-67
search on the store itself: one DocumentReference per masterIdentifier), retried
meanwhile; past the retry budget, delivery.failed and a dead letter, and the replay once
the store is back files it once.

Webhook: a real HTTP receiver implementing the subscription handshake (the subscription
is created through the FHIR API, as a platform does), switched between slow, 500 and
pass. Expected (adapters/eparcours/deliver.py, the R4B Subscriptions backport): within
the retry budget each event is delivered with one number (a receiver that processed a
request the bus timed out on sees the same number again and ignores it), numbers
consecutive; past the budget the item ends delivery.failed, the subscription goes to
status `error`, events meanwhile are kept (numbered) for `$events`, a recovery probe puts
it back to `active`, and the next event continues the numbering.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.bundle_view import BundleView
from adapters.delivery import DeliveryWorker
from adapters.dmp.client import DmpAdapter
from adapters.dmp.mhd import documents_to_file
from adapters.dmp.store import embedded_store
from adapters.eparcours.api import create_subscription_app
from adapters.eparcours.deliver import EparcoursWorker, build_service, retry_policy, run_heartbeats
from adapters.eparcours.registry import Status
from adapters.eparcours.resource import EXT_CONTENT
from adapters.eparcours.topics import BY_ID
from bus.asgi import serve
from bus.producer import EventProducer
from bus.settings import DmpSettings, EparcoursSettings, Settings
from schemas.cases import case_id
from schemas.envelope import Envelope
from schemas.sample_data import PATIENT
from schemas.samples import sample_bundle
from schemas.topics import DEAD_LETTER, DELIVERY_DMP, DELIVERY_EPARCOURS, DELIVERY_STATUS
from schemas.workitem import Channel, Recipient, RecipientKind, WorkItem
from tests.integration.test_dmp_store import work_item as record_item
from tests.reliability import harness as h
from tests.reliability import invariant as inv
from tests.reliability.outbound import (
    POLICY,
    attempts,
    consuming,
    new_topic,
    publish_items,
    statuses,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
HANG_LIMIT_S = 20.0  # a hung request is released at the latest after this


# --- the record ------------------------------------------------------------------------


@dataclass
class SwitchedProxy:
    """A reverse proxy in front of the store: pass | 500 | hang | hang-after."""

    upstream: str
    mode: str = "pass"
    counts: dict[str, int] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def switch(self, mode: str) -> None:
        self.mode = mode  # hung requests stay hung: their clients time out for sure

    def faults(self) -> int:
        return sum(self.counts.get(m, 0) for m in ("500", "hang", "hang-after"))

    async def _hang(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), HANG_LIMIT_S)

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        request = Request(scope, receive)  # type: ignore[arg-type]
        body = await request.body()
        mode = self.mode if request.method == "POST" else "pass"  # ITI-67 reads pass
        self.counts[mode] = self.counts.get(mode, 0) + 1
        if mode == "500":
            resp = Response(b"Internal Server Error", 500, media_type="text/plain")
        else:
            if mode == "hang":
                await self._hang()
            async with httpx.AsyncClient(timeout=10) as client:
                up = await client.request(
                    request.method,
                    self.upstream + request.url.path,
                    params=request.query_params,
                    content=body,
                    headers={k: v for k, v in request.headers.items() if k != "host"},
                )
            if mode == "hang-after":
                await self._hang()
            resp = Response(up.content, up.status_code, media_type=up.headers.get("content-type"))
        await resp(scope, receive, send)  # type: ignore[arg-type]


def documents(n: int) -> list[WorkItem]:
    """Work items for the record, each carrying a document of its own."""
    out = []
    for _ in range(n):
        event_id, bundle = h.referral_bundles(uuid.uuid4().hex[:8])[2]  # completed + report
        out.append(record_item(bundle, event_id))
    return out


def expected_docs(items: list[WorkItem]) -> list[inv.Expect]:
    out = []
    for item in items:
        view = BundleView(orjson.loads(item.event.data))
        for doc in documents_to_file(view):
            out.append(inv.Expect(inv.DMP, "dmp", doc.sha1_b64, item.event.id, item.recipient.id))
    return out


async def test_record_failing_then_hanging_then_back_files_each_document_once(
    catalog_applied: str, settings: Settings, tmp_path: Path
) -> None:
    kafka = settings.kafka
    cfg = Settings(data_dir=tmp_path / "store", dmp=DmpSettings(store_port=0))
    topic = await new_topic(catalog_applied, kafka, DELIVERY_DMP.name)
    since = await inv.end_offsets(catalog_applied, kafka, [DELIVERY_STATUS.name, DEAD_LETTER.name])
    retries0 = attempts("dmp", "retry")
    async with embedded_store(cfg) as store_url:
        proxy = SwitchedProxy(store_url)
        async with serve(proxy, "127.0.0.1", 0) as port:
            adapter = DmpAdapter(f"http://127.0.0.1:{port}", settings=DmpSettings(timeout_s=1.0))

            async def filed() -> int:
                return len(await inv.read_store(store_url, [PATIENT.ins]))

            try:
                async with EventProducer(catalog_applied, kafka, timeout_s=10) as producer:
                    worker = DeliveryWorker(adapter, producer, retry=POLICY)
                    async with consuming(worker, catalog_applied, kafka, topic):
                        sent = await publish_items(producer, topic, documents(1))
                        for _ in range(300):
                            if await filed() == 1:
                                break
                            await asyncio.sleep(0.1)
                        proxy.switch("500")
                        sent += await publish_items(producer, topic, documents(5))
                        await wait_until(lambda: proxy.counts.get("500", 0) >= 2, 30, "500s")
                        proxy.switch("hang")
                        await wait_until(lambda: proxy.counts.get("hang", 0) >= 2, 30, "hangs")
                        proxy.switch("hang-after")
                        await wait_until(
                            lambda: proxy.counts.get("hang-after", 0) >= 2, 30, "lost answers"
                        )
                        proxy.switch("pass")
                        faults = proxy.faults()
                        ids = {i.event.id for i in sent}
                        seen: dict = {}
                        for _ in range(150):
                            seen = await statuses(catalog_applied, kafka, ids, since)
                            if len(seen) == len(sent):
                                break
                            await asyncio.sleep(0.2)
                        # past the budget: the store keeps failing for one more item
                        proxy.switch("500")
                        [late] = await publish_items(producer, topic, documents(1))
                        for _ in range(150):
                            late_status = await statuses(
                                catalog_applied, kafka, {late.event.id}, since
                            )
                            if late_status:
                                break
                            await asyncio.sleep(0.2)
                        proxy.switch("pass")
                        # the operator's replay once the store is back (twice: at-least-once)
                        replayed = [
                            await adapter.deliver(late, orjson.loads(late.event.data))
                            for _ in range(2)
                        ]
            finally:
                proxy.release.set()
                await adapter.aclose()
            effects = await inv.read_store(store_url, [PATIENT.ins])

    assert len(seen) == len(sent) and all(s == "delivery.sent" for s, _, _ in seen.values()), seen
    # retries visible: every failed answer is one more attempt in some delivery.sent
    assert sum(t - 1 for _, t, _ in seen.values()) == faults >= 6, (faults, seen)
    assert attempts("dmp", "retry") - retries0 == faults + POLICY.max_attempts
    kind, tries, why = late_status[late.event.id]
    assert (kind, tries) == ("delivery.failed", POLICY.max_attempts) and "HTTP 500" in why
    assert [o.status for o in replayed] == ["sent", "sent"], replayed
    assert "already filed" in replayed[1].detail

    ids = {i.event.id for i in [*sent, late]} | {i.id for i in [*sent, late]}
    bus = await inv.read_bus(catalog_applied, kafka, ids, since=since)
    assert [d.key for d in bus.dead_letters] == [late.id], bus.dead_letters
    observed = inv.Observed(effects=effects, failures=bus.failures, dead_letters=bus.dead_letters)
    report = inv.check([], expected_docs([*sent, late]), observed)
    assert report.ok, report.summary()
    assert report.delivered == len(sent) + 1 and report.failed == 0, report.summary()
    masters = [e.dedup for e in effects]
    assert len(masters) == len(set(masters)) == len(sent) + 1, masters


# --- the webhook -----------------------------------------------------------------------

API_TOKEN = "tok-reliability-platform"


@dataclass
class SwitchedHook:
    """A platform's rest-hook: pass | slow (answers after the bus gave up, but has
    processed the notification) | 500. Keeps what it processed, and dedups on the
    event number as the backport tells a subscriber to."""

    delay_s: float
    mode: str = "pass"
    counts: dict[str, int] = field(default_factory=dict)
    processed: list[dict] = field(default_factory=list)  # every notification it acted on

    async def hook(self, request: Request) -> Response:
        bundle = orjson.loads(await request.body())
        kind = _param(bundle, "type")["valueCode"]
        mode = self.mode
        self.counts[f"{kind}:{mode}"] = self.counts.get(f"{kind}:{mode}", 0) + 1
        if mode == "500":
            return Response(status_code=500)
        if mode == "slow":
            await asyncio.sleep(self.delay_s)
        self.processed.append(bundle)
        return Response(status_code=200)

    def events(self) -> list[int]:
        out = []
        for b in self.processed:
            if _param(b, "type")["valueCode"] == "event-notification":
                out.append(int(_param(b, "notification-event")["part"][0]["valueString"]))
        return out


def _param(bundle: dict, name: str) -> dict:
    params = bundle["entry"][0]["resource"]["parameter"]
    return next(p for p in params if p["name"] == name)


def stay_items(sub_id: str, n: int) -> list[WorkItem]:
    out = []
    for i in range(n):
        event = ("admission.notified", "discharge.completed")[i % 2]
        event_id = str(uuid.uuid4())
        bundle = sample_bundle(event, event_id=event_id)
        env = Envelope(
            id=event_id,
            type=event,
            source="urn:test",
            subject=case_id(event, bundle),
            data=orjson.dumps(bundle),
        )
        out.append(WorkItem(env, Channel.EPARCOURS, Recipient(RecipientKind.SUBSCRIPTION, sub_id)))
    return out


def expected_notes(items: list[WorkItem]) -> list[inv.Expect]:
    out = []
    for item in items:
        header = BundleView(orjson.loads(item.event.data)).header
        sub = item.recipient.id
        out.append(inv.Expect(inv.EPARCOURS, sub, str(header["id"]), item.event.id, sub))
    return out


@contextlib.asynccontextmanager
async def platform_api(service: object) -> AsyncIterator[httpx.AsyncClient]:
    def authorize(request: Request) -> str | None:
        given = request.headers.get("authorization", "")
        return "reliability-platform" if given == f"Bearer {API_TOKEN}" else None

    app = create_subscription_app(service, authorize)  # type: ignore[arg-type]
    async with serve(app, "127.0.0.1", 0) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            yield api


async def test_webhook_slow_then_failing_then_back_one_number_per_event(
    catalog_applied: str, settings: Settings
) -> None:
    kafka = settings.kafka
    ep = EparcoursSettings(
        allowed_hosts=["127.0.0.1"],
        allow_http=True,
        allowed_networks=["127.0.0.0/8"],
        timeout_s=1,
        handshake_timeout_s=3,
        max_attempts=8,
        backoff_base_s=0.05,
        backoff_max_s=0.3,
        heartbeat_check_s=0.2,
        recovery_probe_s=0.5,
    )
    cfg = settings.model_copy(update={"eparcours": ep})
    receiver = SwitchedHook(delay_s=1.5)
    hook_app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    topic = await new_topic(catalog_applied, kafka, DELIVERY_EPARCOURS.name)
    since = await inv.end_offsets(catalog_applied, kafka, [DELIVERY_STATUS.name, DEAD_LETTER.name])
    retries0 = attempts("eparcours", "retry")
    stop_beats = asyncio.Event()
    async with (
        EventProducer(catalog_applied, kafka, timeout_s=10) as producer,
        serve(hook_app, "127.0.0.1", 0) as hook_port,
    ):
        service = await build_service(cfg, producer, base_url="http://127.0.0.1/fhir")
        worker = EparcoursWorker(service, producer, retry=retry_policy(ep))
        beats = asyncio.create_task(run_heartbeats(service, stop_beats))
        try:
            async with (
                platform_api(service) as api,
                consuming(worker, catalog_applied, kafka, topic),
            ):
                resp = await api.post(
                    "/fhir/Subscription",
                    json=subscription(f"http://127.0.0.1:{hook_port}/hook"),
                    headers={"authorization": f"Bearer {API_TOKEN}"},
                )
                assert resp.status_code == 201 and resp.json()["status"] == "active", resp.text
                sub_id = resp.json()["id"]
                sent = await publish_items(producer, topic, stay_items(sub_id, 1))
                await wait_until(lambda: receiver.events() == [1], 30, "first event")

                receiver.mode = "slow"
                sent += await publish_items(producer, topic, stay_items(sub_id, 4))
                await wait_until(
                    lambda: receiver.counts.get("event-notification:slow", 0) >= 2, 30, "slow"
                )
                receiver.mode = "500"
                await wait_until(
                    lambda: receiver.counts.get("event-notification:500", 0) >= 2, 30, "500s"
                )
                receiver.mode = "pass"
                faults = receiver.counts["event-notification:slow"]
                faults += receiver.counts["event-notification:500"]
                await wait_until(lambda: set(receiver.events()) == {1, 2, 3, 4, 5}, 60, "all")
                ids = {i.event.id for i in sent}
                seen: dict = {}
                for _ in range(100):
                    seen = await statuses(catalog_applied, kafka, ids, since)
                    if len(seen) == len(sent):
                        break
                    await asyncio.sleep(0.2)

                # past the budget: the platform keeps failing
                receiver.mode = "500"
                lost = await publish_items(producer, topic, stay_items(sub_id, 1))
                await wait_until(
                    lambda: service.store.get(sub_id).status is Status.ERROR, 30, "status error"
                )
                lost += await publish_items(
                    producer, topic, stay_items(sub_id, 1)
                )  # while in error
                lost_ids = {i.event.id for i in lost}
                late: dict = {}
                for _ in range(100):
                    late = await statuses(catalog_applied, kafka, lost_ids, since)
                    if len(late) == 2:
                        break
                    await asyncio.sleep(0.2)
                receiver.mode = "pass"
                await wait_until(
                    lambda: service.store.get(sub_id).status is Status.ACTIVE, 30, "recovery probe"
                )
                missed = await api.get(
                    f"/fhir/Subscription/{sub_id}/$events",
                    params={"eventsSinceNumber": 6},
                    headers={"authorization": f"Bearer {API_TOKEN}"},
                )
                after = await publish_items(producer, topic, stay_items(sub_id, 1))
                await wait_until(lambda: 8 in receiver.events(), 30, "numbering goes on")
                after_status: dict = {}
                for _ in range(100):
                    after_status = await statuses(
                        catalog_applied, kafka, {after[0].event.id}, since
                    )
                    if after_status:
                        break
                    await asyncio.sleep(0.2)
        finally:
            stop_beats.set()
            await beats
            await service.sender.aclose()

    # within the budget: each event delivered, one number each, consecutive
    assert len(seen) == len(sent) and all(s == "delivery.sent" for s, _, _ in seen.values()), seen
    assert sum(t - 1 for _, t, _ in seen.values()) == faults >= 4, (faults, seen)
    assert attempts("eparcours", "retry") - retries0 == faults + ep.max_attempts
    numbers = receiver.events()
    assert sorted(set(numbers)) == [1, 2, 3, 4, 5, 8], numbers
    assert len(numbers) > len(set(numbers))  # the slow receiver saw repeats: same number
    # past the budget: delivery.failed for both, the subscription in error then back
    assert {k: v[0] for k, v in late.items()} == dict.fromkeys(lost_ids, "delivery.failed"), late
    assert "kept for $events" in late[lost[1].event.id][2], late
    assert after_status[after[0].event.id][0] == "delivery.sent"
    kept = [
        p["part"][0]["valueString"]
        for p in missed.json()["entry"][0]["resource"]["parameter"]
        if p["name"] == "notification-event"
    ]
    assert kept == ["6", "7"], missed.text

    all_items = [*sent, *lost, *after]
    ids = {i.event.id for i in all_items} | {i.id for i in all_items}
    bus = await inv.read_bus(catalog_applied, kafka, ids, since=since)
    notes = [(sub_id, b) for b in receiver.processed]
    observed = inv.Observed(
        effects=inv.notification_effects(notes),
        failures=bus.failures,
        dead_letters=bus.dead_letters,
    )
    report = inv.check([], expected_notes(all_items), observed)
    assert report.ok, report.summary()
    assert report.delivered == 6 and report.failed == 2, report.summary()
    # one number per event: the same MessageHeader never came under two numbers
    by_header: dict[str, set[str]] = {}
    for e in observed.effects:
        by_header.setdefault(e.key, set()).add(e.dedup)
    assert all(len(v) == 1 for v in by_header.values()), by_header


def subscription(endpoint: str) -> dict:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Parcours de sortie — fiabilité",
        "criteria": BY_ID["stay"].url,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": EXT_CONTENT, "valueCode": "full-resource"}]},
        },
    }
