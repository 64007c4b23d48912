"""Observability of a whole stack (bus.stack.run_stack, every role, real broker and sockets).

One urgent referral over HTTP, sent with a W3C `traceparent`, to an e-parcours platform
subscribed to referrals (its webhook refuses the first notification, so a retry
happens), plus one invalid message. Then:
- the process's own /metrics endpoint shows received/rejected/routed/delivered/retries,
  the pending SLA deadline, consumer lag of the process's groups, and the end-to-end
  latency histograms (accept → routed, accept → delivered) moved;
- the work items on care.delivery.*, the delivery.sent status and the webhook's HTTP
  request carry the caller's trace id, each hop with its own span id;
- no log record of the run (DEBUG, every logger) holds the sample patient's names or INS,
  and the delivery log lines carry the trace id in the JSON format.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.eparcours.topics import BY_ID
from bus.asgi import serve
from bus.demo_data import referral
from bus.logs import JsonFormatter
from bus.metrics import REGISTRY
from bus.settings import (
    ApiClient,
    DashboardSettings,
    DmpSettings,
    EparcoursSettings,
    HttpSettings,
    MllpSettings,
    MssanteSettings,
    ObservabilitySettings,
    ProcessorsSettings,
    Settings,
)
from bus.stack import run_stack
from processors.app import internal_topics
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.sample_data import PATIENT
from schemas.topics import (
    DELIVERY_EPARCOURS,
    DELIVERY_MSSANTE,
    DELIVERY_STATUS,
    EXPERTISE_EVENTS,
    REFERRAL_EVENTS,
    SLA_TICKS,
    STAY_EVENTS,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PATIENT_DATA = (PATIENT.family, PATIENT.given, PATIENT.ins)  # Lefèvre, Hélène, 258030319004510


class Hook:
    """The platform's webhook: records headers and bodies, refuses the first event."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict]] = []
        self.refused = 0
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        if _notification_type(body) == "event-notification" and not self.refused:
            self.refused += 1
            return Response(status_code=503)  # transient: the worker retries
        self.requests.append((dict(request.headers), body))
        return Response(status_code=200)

    def events(self) -> list[dict[str, str]]:
        return [h for h, b in self.requests if _notification_type(b) == "event-notification"]


def _notification_type(bundle: dict) -> str:
    status = bundle["entry"][0]["resource"]
    params = {p["name"]: p for p in status.get("parameter", [])}
    return params.get("type", {}).get("valueCode") or status.get("type", "")


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(scrape: dict, name: str, **labels: str) -> float | None:
    return scrape.get((name, tuple(sorted(labels.items()))))


async def _until(check: Callable[[], Awaitable[object]], within: float, what: str) -> object:
    deadline = time.monotonic() + within
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


async def _skip_to_end(bootstrap: str, s: Settings, group: str, topics: list[str]) -> None:
    """Commit the end offsets for `group`: the stack ignores other tests' earlier records."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        **s.kafka.client_options(),
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in (consumer.partitions_for_topic(t) or await _partitions(consumer, t))
        ]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.commit({tp: off for tp, off in ends.items()})
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


async def test_metrics_trace_and_logs_of_a_stack_run(
    catalog_applied: str,
    settings: Settings,
    tmp_path: Path,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    gp, platform = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    app_id = f"carebus-obs-{unique}"
    s = settings.model_copy(
        update={
            "data_dir": tmp_path,
            "kafka": settings.kafka.model_copy(update={"bootstrap": catalog_applied}),
            "http": HttpSettings(
                port=0,
                clients=[
                    ApiClient(id="cabinet", token=gp, event_types=["referral.*"]),  # type: ignore[arg-type]
                    ApiClient(id="plateforme", token=platform, event_types=[], subscriptions=True),  # type: ignore[arg-type]
                ],
            ),
            "mllp": MllpSettings(port=0),
            "mssante": MssanteSettings(mailbox_port=0),
            "dmp": DmpSettings(store_port=0),
            "dashboard": DashboardSettings(port=0),
            "eparcours": EparcoursSettings(
                allowed_hosts=["127.0.0.1"],
                allow_http=True,
                allowed_networks=["127.0.0.0/8"],
                backoff_base_s=0.1,
                backoff_max_s=0.5,
            ),
            "processors": ProcessorsSettings(app_id=app_id),
            "observability": ObservabilitySettings(metrics_port=0, lag_interval_s=0.5),
        }
    )
    sources = [REFERRAL_EVENTS.name, STAY_EVENTS.name, EXPERTISE_EVENTS.name]
    sources += [DELIVERY_STATUS.name, SLA_TICKS.name]
    from bus.provisioning import apply_topics

    await apply_topics(catalog_applied, s.kafka, internal_topics(app_id))
    await _skip_to_end(catalog_applied, s, app_id, sources)
    for channel in ("mssante", "dmp", "eparcours"):
        await _skip_to_end(
            catalog_applied, s, f"carebus-delivery-{channel}", [f"care.delivery.{channel}"]
        )
    before = {
        "received": _sample(
            "carebus_ingress_received_total",
            {"channel": "http", "event_type": "referral.requested"},
        ),
        "routed": _sample("carebus_routed_work_items_total", {"channel": "mssante"}),
        "sent": _sample(
            "carebus_delivery_outcomes_total", {"channel": "mssante", "status": "sent"}
        ),
        "retries": _sample(
            "carebus_delivery_attempts_total", {"channel": "eparcours", "result": "retry"}
        ),
        "routed_s": _sample("carebus_e2e_routed_seconds_count", {"channel": "mssante"}),
        "delivered_s": _sample("carebus_e2e_delivered_seconds_count", {"channel": "mssante"}),
        "delivered_ep": _sample("carebus_e2e_delivered_seconds_count", {"channel": "eparcours"}),
    }
    hook = Hook()
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    ref_id = f"ADR-OBS-{unique}"
    case = f"referral/https://carebus.fr/fhir/sid/referral|{ref_id}"

    async with serve(hook.app, "127.0.0.1", 0) as hook_port, run_stack(s) as running:
        assert "metrics" in running.endpoints, running.endpoints
        api = f"http://127.0.0.1:{running.ports['http']}"
        async with httpx.AsyncClient(base_url=api, timeout=30) as http:
            sub = await http.post(
                "/fhir/Subscription",
                content=orjson.dumps(
                    {
                        "resourceType": "Subscription",
                        "status": "requested",
                        "reason": "test",
                        "criteria": BY_ID["referral"].url,
                        "channel": {
                            "type": "rest-hook",
                            "endpoint": f"http://127.0.0.1:{hook_port}/hook",
                            "payload": "application/fhir+json",
                        },
                    }
                ),
                headers={
                    "content-type": "application/fhir+json",
                    "authorization": f"Bearer {platform}",
                },
            )
            assert sub.status_code in (200, 201), sub.text
            now = datetime.now(UTC)
            resp = await http.post(
                "/fhir/$process-message",
                content=orjson.dumps(
                    referral(EventType.REFERRAL_REQUESTED, ref_id, now, priority="urgent")
                ),
                headers={
                    "content-type": "application/fhir+json",
                    "authorization": f"Bearer {gp}",
                    "traceparent": f"00-{trace_id}-{caller_span}-01",
                },
            )
            assert resp.status_code == 202, resp.text
            bad = await http.post(
                "/fhir/$process-message",
                content=b'{"resourceType": "Bundle", "type": "message"}',
                headers={"content-type": "application/fhir+json", "authorization": f"Bearer {gp}"},
            )
            assert bad.status_code in (400, 422), bad.text

        # the trace: work items and the delivery status carry the caller's trace id
        seen: dict[str, list[Envelope]] = {}
        reader = AIOKafkaConsumer(
            DELIVERY_MSSANTE.name,
            DELIVERY_EPARCOURS.name,
            DELIVERY_STATUS.name,
            bootstrap_servers=running.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            **s.kafka.client_options(),
        )
        await reader.start()
        try:

            async def traced() -> bool:
                for records in (await reader.getmany(timeout_ms=300)).values():
                    for r in records:
                        env = Envelope.decode(r.key, r.value, r.headers)
                        if env.subject == case:
                            seen.setdefault(f"{r.topic}:{env.type}", []).append(env)
                return all(
                    k in seen
                    for k in (
                        f"{DELIVERY_MSSANTE.name}:referral.requested",
                        f"{DELIVERY_EPARCOURS.name}:referral.requested",
                        f"{DELIVERY_STATUS.name}:delivery.sent",
                    )
                )

            await _until(traced, 60, "work items and delivery.sent of the referral")
        finally:
            await reader.stop()
        spans = {caller_span}
        for key, envs in seen.items():
            for env in envs:
                _, tid, span, _ = env.traceparent.split("-")
                assert tid == trace_id, (key, env.traceparent)
                assert span not in spans, (key, env.traceparent)  # a new span per hop
                spans.add(span)
        # the platform's webhook got the trace too (its own span for the HTTP call)
        await _until(lambda: _async(hook.events()), 30, "the webhook notification")
        assert hook.refused == 1
        header = hook.events()[0].get("traceparent", "")
        assert header.split("-")[1:2] == [trace_id], header
        assert header.split("-")[2] not in spans

        # the metrics of this process, scraped from its own endpoint
        url = f"http://127.0.0.1:{running.ports['metrics']}/metrics"

        async def scrape() -> dict:
            async with httpx.AsyncClient(timeout=10) as client:
                got = await client.get(url)
            assert got.status_code == 200
            values = _scraped(got.text)
            ok = (
                _value(values, "carebus_e2e_delivered_seconds_count", channel="eparcours") or 0
            ) > before["delivered_ep"] and _value(
                values, "carebus_consumer_lag", group=app_id, topic=REFERRAL_EVENTS.name
            ) is not None
            return values if ok else {}

        values = await _until(scrape, 30, "metrics to move")
        assert isinstance(values, dict)
        received = _value(
            values,
            "carebus_ingress_received_total",
            channel="http",
            event_type="referral.requested",
        )
        assert received == before["received"] + 1
        rejected = [
            v
            for (name, labels), v in values.items()
            if name == "carebus_ingress_rejected_total" and ("channel", "http") in labels
        ]
        assert rejected and sum(rejected) >= 1
        assert (
            _value(values, "carebus_routed_work_items_total", channel="mssante") > before["routed"]
        )
        assert (
            _value(values, "carebus_delivery_outcomes_total", channel="mssante", status="sent")
            > before["sent"]
        )
        assert (
            _value(values, "carebus_delivery_attempts_total", channel="eparcours", result="retry")
            > before["retries"]
        )
        assert (
            _value(values, "carebus_e2e_routed_seconds_count", channel="mssante")
            > before["routed_s"]
        )
        assert (
            _value(values, "carebus_e2e_delivered_seconds_count", channel="mssante")
            > before["delivered_s"]
        )
        # the urgent referral's deadline is pending, none is late
        assert _value(values, "carebus_sla_pending_deadlines") >= 1
        assert _value(values, "carebus_sla_late_deadlines") == 0
        lag = _value(values, "carebus_consumer_lag", group=app_id, topic=REFERRAL_EVENTS.name)
        assert lag is not None and lag >= 0
        assert (
            _value(
                values,
                "carebus_consumer_lag",
                group="carebus-delivery-mssante",
                topic=DELIVERY_MSSANTE.name,
            )
            is not None
        )

    # logs: nothing of the patient in any record of the run; delivery lines are traced
    records = caplog.records
    assert len(records) > 50  # DEBUG of every logger: the capture did capture
    for record in records:
        text = record.getMessage() + (record.exc_text or "")
        for secret in PATIENT_DATA:
            assert secret not in text, (record.name, text[:300])
    fmt = JsonFormatter()
    delivery_lines = [
        orjson.loads(fmt.format(r))
        for r in records
        if r.name == "carebus.delivery" and "via mssante" in r.getMessage()
    ]
    assert any(line.get("trace_id") == trace_id for line in delivery_lines), delivery_lines
    for line in delivery_lines:
        assert {"time", "level", "logger", "message"} <= set(line)


async def _async(value: object) -> object:
    return value
