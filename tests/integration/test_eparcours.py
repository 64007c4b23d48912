"""The subscriber port over real HTTP and the real broker: a platform subscribes through
the FHIR API, a webhook receiver (served by `bus.asgi.serve`) gets the notifications,
and subscriptions survive a restart through the compacted topic care.subscriptions.

`SubscriberPortContract` is what a platform can rely on; `TestEmbeddedBus` runs it
against the bus's own API + delivery worker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.bundle_view import BundleView
from adapters.eparcours.api import create_subscription_app
from adapters.eparcours.deliver import EparcoursWorker, build_service, retry_policy
from adapters.eparcours.notify import SIGNATURE_HEADER, verify
from adapters.eparcours.registry import Status
from adapters.eparcours.resource import EXT_CONTENT, EXT_FILTER, EXT_HEARTBEAT, EXT_SECRET
from adapters.eparcours.service import SubscriptionService
from adapters.eparcours.store import SubscriptionStore
from adapters.eparcours.topics import BY_ID
from bus.asgi import serve
from bus.producer import EventProducer
from bus.settings import EparcoursSettings, Settings
from schemas.cases import case_id
from schemas.envelope import Envelope
from schemas.samples import sample_bundle
from schemas.workitem import Channel, Recipient, RecipientKind, WorkItem

pytestmark = pytest.mark.kafka
TOKEN = "tok-paaco-globule"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@dataclass
class Receiver:
    """A platform's webhook: records every POST, fails on demand."""

    failures: int = 0  # answer 503 to the next `failures` POSTs
    seen: list[tuple[dict, bytes]] = field(default_factory=list)
    accepted: list[bytes] = field(default_factory=list)

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        self.seen.append((dict(request.headers), body))
        if self.failures > 0:
            self.failures -= 1
            return Response(status_code=503)
        self.accepted.append(body)
        return Response(status_code=200)

    def events(self, accepted_only: bool = True) -> list[tuple[int, bytes]]:
        """(eventNumber, body) of event notifications, in arrival order."""
        bodies = self.accepted if accepted_only else [b for _, b in self.seen]
        out = []
        for body in bodies:
            params = orjson.loads(body)["entry"][0]["resource"]["parameter"]
            if next(p for p in params if p["name"] == "type")["valueCode"] != "event-notification":
                continue
            event = next(p for p in params if p["name"] == "notification-event")
            out.append((int(event["part"][0]["valueString"]), body))
        return out

    def kinds(self) -> list[str]:
        return [
            next(
                p["valueCode"]
                for p in orjson.loads(b)["entry"][0]["resource"]["parameter"]
                if p["name"] == "type"
            )
            for _, b in self.seen
        ]


@dataclass
class Bus:
    api: httpx.AsyncClient
    service: SubscriptionService
    worker: EparcoursWorker
    receiver: Receiver
    hook_url: str
    settings: Settings
    bootstrap: str

    async def subscribe(self, *criteria: str, heartbeat: int = 0, **channel) -> dict:
        body = subscription(self.hook_url, *criteria, heartbeat=heartbeat, **channel)
        resp = await self.api.post("/fhir/Subscription", json=body, headers=AUTH)
        assert resp.status_code == 201, resp.text
        return resp.json()

    async def deliver(self, sub_id: str, event: str, event_id: str | None = None):
        event_id = event_id or str(uuid.uuid4())
        bundle = sample_bundle(event, event_id=event_id)
        env = Envelope(
            id=event_id,
            type=event,
            source="urn:test",
            subject=case_id(event, bundle),
            data=orjson.dumps(bundle),
        )
        item = WorkItem(env, Channel.EPARCOURS, Recipient(RecipientKind.SUBSCRIPTION, sub_id))
        return await self.worker.handle(item.envelope())


def subscription(endpoint: str, *criteria: str, heartbeat: int = 0, **channel) -> dict:
    ch: dict = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": EXT_CONTENT, "valueCode": "id-only"}]},
        "header": ["Authorization: Bearer platform-own-token"],
        "extension": [{"url": EXT_HEARTBEAT, "valueUnsignedInt": heartbeat}] if heartbeat else [],
        **channel,
    }
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Parcours de sortie — CPTS Bords d'Allier",
        "criteria": BY_ID["stay"].url,
        "_criteria": {"extension": [{"url": EXT_FILTER, "valueString": c} for c in criteria]},
        "channel": ch,
    }


def secret_of(resource: dict) -> str:
    return next(
        e["valueString"] for e in resource["channel"]["extension"] if e["url"] == EXT_SECRET
    )


class SubscriberPortContract:
    async def test_create_handshake_then_active(self, bus: Bus) -> None:
        sub = await bus.subscribe("territory=03")
        assert sub["status"] == "active"
        assert sub["meta"]["profile"][0].endswith("backport-subscription")
        headers, body = bus.receiver.seen[-1]
        assert verify(body, secret_of(sub), headers[SIGNATURE_HEADER.lower()])
        assert headers["authorization"] == "Bearer platform-own-token"
        Bundle.model_validate(orjson.loads(body))
        params = {p["name"]: p for p in orjson.loads(body)["entry"][0]["resource"]["parameter"]}
        assert params["type"]["valueCode"] == "handshake"
        assert params["status"]["valueCode"] == "requested"
        read = await bus.api.get(f"/fhir/Subscription/{sub['id']}", headers=AUTH)
        assert read.json()["status"] == "active"
        assert read.json()["channel"]["header"] == ["Authorization: ***"]
        assert EXT_SECRET not in read.text

    async def test_events_have_increasing_numbers_and_valid_hmac(self, bus: Bus) -> None:
        sub = await bus.subscribe("territory=03")
        for event in ("discharge.planned", "discharge.completed", "admission.notified"):
            assert (await bus.deliver(sub["id"], event)).status == "sent"
        other = await bus.deliver(sub["id"], "referral.requested")  # not this topic
        assert other.status == "skipped"
        numbers = [n for n, _ in bus.receiver.events()]
        assert numbers == [1, 2, 3]
        for (headers, body), n in zip(bus.receiver.seen[-3:], numbers, strict=True):
            assert verify(body, secret_of(sub), headers[SIGNATURE_HEADER.lower()])
            params = {p["name"]: p for p in orjson.loads(body)["entry"][0]["resource"]["parameter"]}
            assert params["events-since-subscription-start"]["valueString"] == str(n)

    async def test_failing_receiver_gets_each_event_once_with_one_number(self, bus: Bus) -> None:
        sub = await bus.subscribe()
        bus.receiver.failures = 2
        event_id = str(uuid.uuid4())
        outcome = await bus.deliver(sub["id"], "discharge.completed", event_id)
        assert outcome.status == "sent"
        tries = bus.receiver.events(accepted_only=False)
        assert [n for n, _ in tries] == [1, 1, 1]  # three attempts, one number
        assert len({body for _, body in tries}) == 1  # the very same bytes
        again = await bus.deliver(sub["id"], "discharge.completed", event_id)  # a redelivery
        assert again.status == "sent"
        assert [n for n, _ in bus.receiver.events()] == [1]  # received exactly once

    async def test_retry_limit_puts_subscription_in_error_then_recovers(self, bus: Bus) -> None:
        sub = await bus.subscribe()
        bus.receiver.failures = 10_000
        failed = await bus.deliver(sub["id"], "discharge.planned")
        assert failed.status == "failed"
        assert len(bus.receiver.seen) == 1 + bus.settings.eparcours.max_attempts
        assert bus.service.store.get(sub["id"]).status is Status.ERROR
        status = (await bus.api.get(f"/fhir/Subscription/{sub['id']}/$status", headers=AUTH)).json()
        params = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
        assert params["status"]["valueCode"] == "error" and "error" in params
        kept = await bus.deliver(sub["id"], "discharge.completed")  # while in error
        assert kept.status == "failed" and "kept for $events" in kept.detail
        bus.receiver.failures = 0
        await bus.service.heartbeat_once()  # recovery probe (recovery_probe_s = 0)
        assert bus.service.store.get(sub["id"]).status is Status.ACTIVE
        missed = await bus.api.get(
            f"/fhir/Subscription/{sub['id']}/$events", params={"eventsSinceNumber": 1}, headers=AUTH
        )
        params = missed.json()["entry"][0]["resource"]["parameter"]
        assert [
            p["part"][0]["valueString"] for p in params if p["name"] == "notification-event"
        ] == [
            "1",
            "2",
        ]

    async def test_status_and_events_operations(self, bus: Bus) -> None:
        sub = await bus.subscribe()
        for event in ("discharge.planned", "discharge.cancelled", "discharge.planned"):
            await bus.deliver(sub["id"], event)
        url = f"/fhir/Subscription/{sub['id']}"
        status = (await bus.api.get(f"{url}/$status", headers=AUTH)).json()
        Bundle.model_validate(status)
        params = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
        assert params["type"]["valueCode"] == "query-status"
        assert params["events-since-subscription-start"]["valueString"] == "3"
        window = {"eventsSinceNumber": "2", "eventsUntilNumber": "3", "content": "empty"}
        events = (await bus.api.get(f"{url}/$events", params=window, headers=AUTH)).json()
        Bundle.model_validate(events)
        params = events["entry"][0]["resource"]["parameter"]
        assert next(p for p in params if p["name"] == "type")["valueCode"] == "query-event"
        numbers = [p["part"][0]["valueString"] for p in params if p["name"] == "notification-event"]
        assert numbers == ["2", "3"] and len(events["entry"]) == 1  # empty: numbers only
        bad = await bus.api.get(f"{url}/$events", params={"eventsSinceNumber": "x"}, headers=AUTH)
        assert bad.status_code == 400

    async def test_forbidden_endpoints_are_refused(self, bus: Bus) -> None:
        for endpoint in (
            "http://169.254.169.254/latest/meta-data",
            "https://evil.example.com/h",
            "ftp://127.0.0.1/x",
            "http://user:pw@127.0.0.1/x",
        ):
            body = subscription(endpoint)
            resp = await bus.api.post("/fhir/Subscription", json=body, headers=AUTH)
            assert resp.status_code == 422, endpoint
            issue = resp.json()["issue"][0]
            assert issue["expression"] == ["Subscription.channel.endpoint"]
            assert issue["code"] == "security"

    async def test_authentication_and_ownership(self, bus: Bus) -> None:
        sub = await bus.subscribe()
        body = subscription(bus.hook_url)
        assert (await bus.api.post("/fhir/Subscription", json=body)).status_code == 401
        other = {"authorization": "Bearer tok-other-platform"}
        assert (
            await bus.api.get(f"/fhir/Subscription/{sub['id']}", headers=other)
        ).status_code == 404
        mine = (await bus.api.get("/fhir/Subscription", headers=AUTH)).json()
        assert sub["id"] in [e["resource"]["id"] for e in mine["entry"]]
        topics = (await bus.api.get("/fhir/SubscriptionTopic")).json()
        assert {e["resource"]["id"] for e in topics["entry"]} == {"referral", "stay", "expertise"}
        listed = (await bus.api.get("/fhir/Subscription/$topic-list")).json()
        assert listed["parameter"][0]["name"] == "subscription-topic-canonical"

    async def test_heartbeat(self, bus: Bus) -> None:
        sub = await bus.subscribe(heartbeat=1)
        await asyncio.sleep(1.1)
        await bus.service.heartbeat_once()
        assert bus.receiver.kinds()[-1] == "heartbeat"
        assert verify(
            bus.receiver.seen[-1][1],
            secret_of(sub),
            bus.receiver.seen[-1][0][SIGNATURE_HEADER.lower()],
        )

    async def test_subscriptions_survive_a_restart(self, bus: Bus) -> None:
        sub = await bus.subscribe("event-type=discharge.planned,discharge.completed")
        event_id = str(uuid.uuid4())
        assert (await bus.deliver(sub["id"], "discharge.planned", event_id)).status == "sent"
        gone = await bus.subscribe()
        deleted = await bus.api.delete(f"/fhir/Subscription/{gone['id']}", headers=AUTH)
        assert deleted.status_code == 204
        # a new process: the registry is rebuilt from the compacted topic on the broker
        store = SubscriptionStore(bus.service.store.producer)
        await store.load(bus.bootstrap, bus.settings.kafka)
        rebuilt = store.get(sub["id"])
        assert rebuilt is not None and store.get(gone["id"]) is None
        assert rebuilt.status is Status.ACTIVE and rebuilt.events == 1
        assert rebuilt.secret == secret_of(sub)
        bus.service.store = store
        again = await bus.deliver(sub["id"], "discharge.planned", event_id)  # replayed item
        fresh = await bus.deliver(sub["id"], "discharge.completed")
        assert again.status == "sent" and fresh.status == "sent"
        numbers = [n for n, _ in bus.receiver.events()]
        assert numbers == [1, 1, 2]  # the replay keeps its number; the next event is 2


class TestEmbeddedBus(SubscriberPortContract):
    @pytest.fixture
    async def bus(self, catalog_applied: str, settings: Settings) -> AsyncIterator[Bus]:
        ep = EparcoursSettings(
            allowed_hosts=["127.0.0.1"],
            allow_http=True,
            allowed_networks=["127.0.0.0/8"],
            max_attempts=3,
            backoff_base_s=0.01,
            backoff_max_s=0.05,
            min_heartbeat_s=1,
            recovery_probe_s=0,
            timeout_s=3,
            handshake_timeout_s=3,
        )
        cfg = settings.model_copy(update={"eparcours": ep})
        receiver = Receiver()
        hook = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
        producer = EventProducer(catalog_applied, cfg.kafka, timeout_s=5)
        service = await build_service(cfg, producer, base_url="http://127.0.0.1/fhir")
        worker = EparcoursWorker(service, producer, retry=retry_policy(ep))

        def authorize(request: Request) -> str | None:
            given = request.headers.get("authorization", "")
            return {"Bearer " + TOKEN: "paaco", "Bearer tok-other-platform": "other"}.get(given)

        app = create_subscription_app(service, authorize)
        async with serve(hook, "127.0.0.1", 0) as hport, serve(app, "127.0.0.1", 0) as aport:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{aport}", timeout=10) as api:
                yield Bus(
                    api,
                    service,
                    worker,
                    receiver,
                    f"http://127.0.0.1:{hport}/hook",
                    cfg,
                    catalog_applied,
                )
        await service.sender.aclose()
        await producer.stop()


async def test_delivery_time_guard_refuses_what_resolves_to_a_forbidden_address(
    catalog_applied: str, settings: Settings
) -> None:
    """A name on the allow-list that resolves to a non-allowed address (DNS rebinding)."""
    ep = EparcoursSettings(allowed_hosts=["localhost"], allow_http=True, allowed_networks=[])
    service = await build_service(settings.model_copy(update={"eparcours": ep}), None)
    from adapters.eparcours.registry import SubscriptionRecord

    record = SubscriptionRecord(
        id="s-rebind",
        owner="p",
        topic=BY_ID["stay"].url,
        endpoint="http://localhost:9/hook",
        secret="k" * 20,
        status=Status.ACTIVE,
    )
    await service.store.save(record)
    bundle = sample_bundle("discharge.planned", event_id="e-rebind")
    outcome = await service.notify("s-rebind", "item-rebind", bundle)
    assert outcome.status == "failed" and not outcome.retry
    assert "non-public address" in outcome.detail
    assert BundleView(bundle).event is not None
    await service.sender.aclose()
