"""The harness every outbound channel runs in: work item in, effect, status event out.

A channel adapter only implements `Channel.deliver(item, bundle) -> Outcome`; this module
owns the policy around it, the same for mail, record and platforms:
- ack policy: `bus.consumer.EventConsumer` (commit after processing, dedup on the work
  item id, dead-letter when the harness itself cannot finish);
- concurrency: the work items of a polled batch are delivered `concurrency` at a time,
  grouped by Kafka key (the case): one case's items in offset order, different cases in
  parallel; the batch is committed once every item is sent, failed-and-reported or
  dead-lettered. A backoff wait gives its slot back, so a slow recipient does not hold
  up other cases;
- transient failures (`Outcome.retry`) are retried with exponential backoff and jitter
  up to `max_attempts`, then become `delivery.failed`;
- every final outcome is published as `delivery.sent` / `delivery.failed` (attempt
  count, channel, address; never patient data) on care.delivery.status, where SLA
  processing and the coordinator see it; a failed delivery is also dead-lettered so
  `carebus replay` can retry it once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import orjson
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter

from bus.consumer import ConsumerConfig, EventConsumer, slot_released
from bus.deadletter import dead_letter_of
from bus.dedup import Deduplicator
from bus.metrics import DELIVERY_LATENCY, REGISTRY
from bus.producer import EventProducer
from bus.settings import KafkaSettings
from schemas.cases import case_ref
from schemas.codes import EventType
from schemas.envelope import Envelope, ingress_time
from schemas.events import build_event
from schemas.model import BusNoticeInfo
from schemas.topics import DELIVERY_STATUS
from schemas.workitem import WorkItem

log = logging.getLogger("carebus.delivery")

ATTEMPTS = Counter(
    "carebus_delivery_attempts_total", "Delivery attempts", ["channel", "result"], registry=REGISTRY
)
OUTCOMES = Counter(
    "carebus_delivery_outcomes_total",
    "Final delivery outcomes",
    ["channel", "status"],
    registry=REGISTRY,
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt achieved. `status`: sent | failed | skipped (nothing to do, e.g.
    the patient opposes sharing); `retry`: transient, try again later."""

    status: str
    detail: str = ""
    retry: bool = False

    @classmethod
    def sent(cls, detail: str = "") -> Outcome:
        return cls("sent", detail)

    @classmethod
    def transient(cls, detail: str) -> Outcome:
        return cls("failed", detail, retry=True)

    @classmethod
    def permanent(cls, detail: str) -> Outcome:
        return cls("failed", detail)

    @classmethod
    def skipped(cls, detail: str) -> Outcome:
        return cls("skipped", detail)


class ChannelAdapter(Protocol):
    name: str

    async def deliver(self, item: WorkItem, bundle: dict) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
    base_s: float = 1.0
    max_s: float = 30.0  # inline retries hold the partition: keep the window short

    def delay(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter" (attempt counts from 1): half the step
        is guaranteed, half random. With full jitter the outage a budget rides out was
        random too (defaults: a 10 s outage became delivery.failed 17 % of the time)."""
        step = min(self.max_s, self.base_s * 2 ** (attempt - 1))
        return step / 2 + random.uniform(0, step / 2)  # noqa: S311

    def guaranteed_s(self) -> float:
        """The outage every item rides out before delivery.failed, whatever the draws."""
        return sum(self.delay_floor(a) for a in range(1, self.max_attempts))

    def delay_floor(self, attempt: int) -> float:
        return min(self.max_s, self.base_s * 2 ** (attempt - 1)) / 2


def status_event(item: WorkItem, outcome: Outcome, attempts: int) -> Envelope:
    """delivery.sent / delivery.failed for a work item (id derived: idempotent re-emit)."""
    etype = EventType.DELIVERY_SENT if outcome.status == "sent" else EventType.DELIVERY_FAILED
    info = BusNoticeInfo(
        about=case_ref(item.event.subject),
        text=f"{item.channel} → {item.recipient.role or item.recipient.kind}: {outcome.detail}"[
            :500
        ],
        attempt=attempts,
        channel=item.channel.value,  # type: ignore[arg-type]
        address=item.recipient.address or item.recipient.id,
        about_event=item.event.id,
        recipient_id=item.recipient.id,
    )
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{item.id}-{etype.value}"))
    bundle = build_event(etype, info, event_id=event_id, timestamp=datetime.now(UTC))
    env = item.event.caused(
        id=event_id, type=etype.value, source="urn:carebus:bus", data=orjson.dumps(bundle)
    )
    return env


class DeliveryWorker:
    """Consume one channel's delivery topic and drive its adapter, policy above."""

    def __init__(
        self, adapter: ChannelAdapter, producer: EventProducer, *, retry: RetryPolicy | None = None
    ) -> None:
        self.adapter = adapter
        self.producer = producer
        self.retry = retry or RetryPolicy()

    async def handle(self, env: Envelope, record: ConsumerRecord | None = None) -> Outcome:
        item = WorkItem.from_envelope(env)
        bundle = orjson.loads(item.event.data)
        attempt = 0
        while True:
            attempt += 1
            try:
                outcome = await self.adapter.deliver(item, bundle)
            except Exception as exc:  # noqa: BLE001 - an adapter bug must not stall delivery
                outcome = Outcome.transient(f"{type(exc).__name__}: {exc}")
            ATTEMPTS.labels(
                self.adapter.name, outcome.status if not outcome.retry else "retry"
            ).inc()
            if not outcome.retry or attempt >= self.retry.max_attempts:
                break
            async with slot_released():  # other cases use the slot meanwhile
                await asyncio.sleep(self.retry.delay(attempt))
        if outcome.status != "skipped":
            await self.producer.publish(DELIVERY_STATUS.name, status_event(item, outcome, attempt))
        OUTCOMES.labels(self.adapter.name, outcome.status).inc()
        accepted = ingress_time(env.extra_headers) if outcome.status == "sent" else None
        if accepted is not None:
            seconds = max(0.0, (datetime.now(UTC) - accepted).total_seconds())
            DELIVERY_LATENCY.labels(self.adapter.name).observe(seconds)
        if outcome.status == "failed" and record is not None:
            out = dead_letter_of(
                record,
                reason=f"delivery failed: {outcome.detail}",
                group=f"carebus-{self.adapter.name}",
                attempts=attempt,
            )
            await self.producer.send_raw(out.topic, out.key, out.value, out.headers)
        log.info(
            "delivery %s via %s: %s after %d attempt(s)",
            item.id,
            self.adapter.name,
            outcome.status,
            attempt,
        )
        return outcome

    def consumer(
        self,
        bootstrap: str,
        kafka: KafkaSettings,
        topic: str,
        *,
        concurrency: int = 8,
        group: str | None = None,
    ) -> EventConsumer:
        """The channel's consumer: `concurrency` work items in flight (per-case order).
        `group`: another consumer group than the channel's (benchmarks, tests)."""

        async def handler(env: Envelope, record: ConsumerRecord) -> None:
            await self.handle(env, record)

        cfg = ConsumerConfig(
            group_id=group or f"carebus-delivery-{self.adapter.name}",
            topics=(topic,),
            max_batch=max(50, 8 * concurrency),
            concurrency=max(1, concurrency),
        )
        window = Deduplicator(kafka.dedup_window)
        return EventConsumer(bootstrap, kafka, cfg, handler, self.producer, dedup=window)
